"""Every command of the ``mld`` parser answers ``--help``, and every old spelling still runs.

The commands come from walking build_parser(), the old spellings from mld.grammar.ALIASES:
a command added to the parser or an alias added to the table is covered without a change
here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mld.cli import build_parser, main
from mld.grammar import ALIASES, Alias, walk
from tests.support import SHARED_DATA

COMMANDS = [(words, parser) for words, parser in walk(build_parser())]
LEAVES = {words for words, parser in COMMANDS if parser._subparsers is None}
MLD = shutil.which("mld", path=str(Path(sys.executable).parent))
NMAP = SHARED_DATA / "pcaps" / "attacks" / "scan" / "nmap_80_vanilla.pcap"


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    out, err = capsys.readouterr()
    code = exit_.value.code
    return code if isinstance(code, int) else 0, out, err


def test_the_walk_finds_every_component_and_its_actions() -> None:
    found = {words for words, _parser in COMMANDS}
    for words in (
        ("sniffer", "run"),
        ("sniffer", "flows"),
        ("detector", "run"),
        ("detector", "analyze"),
        ("rag", "ask"),
        ("watch", "run"),
        ("gateway", "run"),
        ("keys", "new"),
        ("lab", "dev"),
        ("config", "set"),
    ):
        assert words in found
    assert len(LEAVES) > 40


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=lambda w: " ".join(w) or "mld")
def test_help_of_every_command(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _help(list(words), capsys)
    assert code == 0, err
    assert out.startswith(f"usage: {' '.join(('mld', *words))} ")
    assert err == ""  # no deprecation note for a current spelling
    if words in LEAVES:
        assert "examples:" in out, f"mld {' '.join(words)} --help has no examples"
        assert f"mld {' '.join(words)}" in out.split("examples:", 1)[1]


def _target(alias: Alias) -> tuple[str, ...]:
    return tuple(w for w in alias.new.split() if w.islower() and not w.startswith("-"))


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: a.old)
def test_every_alias_notes_its_new_spelling_and_reaches_it(
    alias: Alias, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _target(alias) in LEAVES
    code, out, err = _help(list(alias.example), capsys)
    assert code == 0, err
    assert err.splitlines() == [f"mld: 'mld {alias.old}' is deprecated, use 'mld {alias.new}'"]
    assert out.startswith(f"usage: mld {' '.join(_target(alias))} ")


def test_help_names_the_renames_not_the_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _help([], capsys)
    assert code == 0
    listing, epilog = out.split("options:", 1)
    for alias in ALIASES:
        assert f"mld {alias.old} " in epilog and f"mld {alias.new}" in epilog
    commands = {line.split()[0] for line in listing.splitlines() if line.startswith("    ")}
    assert commands.isdisjoint({"sniff", "flows", "detect", "analyze", "train", "keygen"})


def _mld(*args: str) -> subprocess.CompletedProcess[str]:
    assert MLD, "the mld console script is not installed in this venv; run `make install`"
    return subprocess.run([MLD, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(not NMAP.exists(), reason=f"needs {NMAP}")
def test_an_alias_runs_the_new_command() -> None:
    new = _mld("sniffer", "flows", "--json", "-q", str(NMAP))
    old = _mld("flows", "--json", "-q", str(NMAP))
    assert new.returncode == old.returncode == 0, old.stderr
    assert new.stdout and old.stdout == new.stdout
    assert new.stderr == ""
    assert old.stderr == "mld: 'mld flows' is deprecated, use 'mld sniffer flows'\n"


def test_an_alias_keeps_the_exit_code_of_the_new_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.pcap")
    new, old = _mld("sniffer", "flows", missing), _mld("flows", missing)
    assert new.returncode == old.returncode == 1
    assert old.stderr == "mld: 'mld flows' is deprecated, use 'mld sniffer flows'\n" + new.stderr
