"""``mld COMPONENT ...`` imports only that component's command line, and the packages' lazy
re-exports (base.lazy) keep every public name working.

Start-up was a third of `mld detector analyze`'s own time on the bench capture: the parser
imported every component's cli.py, and each package's ``__init__`` imported all of the
package, so reading a capture loaded etcd3/grpc, FAISS and the RAG model's bindings.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from mld.cli import COMPONENTS, build_parser
from mld.grammar import command_word, walk
from tests.support import modules_imported_by

ROOT = Path(__file__).resolve().parents[2]
LAZY_PACKAGES = ("control", "crypto_transport", "detector", "firewall", "rag", "sniffer", "watch")
LAZY_PACKAGES += ("xdp",)


def _commands(parser: object) -> dict[tuple[str, ...], object]:
    return {words: p for words, p in walk(parser)}  # type: ignore[arg-type]


def test_every_top_level_command_is_in_the_component_table() -> None:
    top = {words[0] for words in _commands(build_parser()) if len(words) == 1}
    assert top - {"keys", "config", "version"} == set(COMPONENTS)


@pytest.mark.parametrize("command", sorted(COMPONENTS))
def test_one_command_parser_has_the_same_actions_and_options(command: str) -> None:
    """The parser built for one command has that command's whole tree, option for option."""
    full = _commands(build_parser())
    one = _commands(build_parser(command))
    for words, parser in full.items():
        if words and words[0] == command:
            got = one[words]
            opts = [a.option_strings for a in parser._actions]  # type: ignore[attr-defined]
            assert [a.option_strings for a in got._actions] == opts  # type: ignore[attr-defined]


def test_command_word_follows_the_old_spellings() -> None:
    assert command_word(["analyze", "x.pcap"]) == "detector"
    assert command_word(["--config", "a.yaml", "-v", "detector", "analyze"]) == "detector"
    assert command_word(["keygen", "--out", "k"]) == "keys"
    assert command_word(["--help"]) is None
    assert command_word([]) is None


def test_detector_analyze_starts_without_the_live_services_libraries() -> None:
    """What `mld detector analyze` loads before reading a capture: the whole command up to
    its handler (parser, config, the analysis modules) in a fresh interpreter."""
    code = (
        "from mld.cli import build_parser\n"
        "from mld.grammar import command_word\n"
        "argv = ['detector', 'analyze', 'x.pcap', '--alerts-only']\n"
        "args = build_parser(command_word(argv)).parse_args(argv)\n"
        "import config; config.load_config(None)\n"
        "import detector.cli, detector.analysis, detector.jsonlines, detector.scoring\n"
    )
    heavy = (
        "etcd3",
        "grpc",
        "faiss",
        "llama_cpp",
        "scipy",
        "sklearn",
        "zmq",
        "rag.answer",
        "control.client",
        "detector.service",
        "prometheus_client",
    )
    assert modules_imported_by(code, heavy) == []


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    assert set(mod.__all__) <= set(dir(mod))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = mod.no_such_name


def test_a_submodule_is_an_attribute_of_its_package() -> None:
    import detector

    assert detector.scoring is importlib.import_module("detector.scoring")
