"""Tests of the strict YAML -> frozen dataclass loader and of the shipped mld.yaml."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import pytest

import config.settings as settings
from base.config_loader import build, load_yaml, replace_path, to_dict
from base.errors import ConfigError
from config import (
    DEFAULT_CONFIG_PATH,
    LoggingConfig,
    MldConfig,
    NodeConfig,
    load_config,
    resolve_config_path,
)
from crypto_transport.config import TransportConfig


@dataclass(frozen=True)
class Inner:
    ratio: float = 0.5


@dataclass(frozen=True)
class Sample:
    """Covers the field types MldConfig does not use yet."""

    enabled: bool = False
    ports: tuple[int, ...] = ()
    pair: tuple[str, int] = ("a", 1)
    limits: dict[str, float] = field(default_factory=dict)
    note: str | None = "x"
    mode: Literal["fast", "safe"] = "safe"
    inner: Inner = field(default_factory=Inner)


def _write(tmp_path: Path, text: str, name: str = "mld.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _field_keys(cls: type[Any], prefix: str = "") -> list[str]:
    """Dotted names of every dataclass field, recursing into nested dataclasses."""
    keys = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys.append(name)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_field_keys(hints[f.name], f"{name}."))
    return keys


# --- the shipped mld.yaml ---------------------------------------------------------------


def test_embedded_file_equals_code_defaults() -> None:
    loaded = build(MldConfig, load_yaml(DEFAULT_CONFIG_PATH), source=str(DEFAULT_CONFIG_PATH))
    assert loaded == MldConfig()
    assert load_config(DEFAULT_CONFIG_PATH) == MldConfig()


def test_embedded_file_writes_every_key() -> None:
    raw = load_yaml(DEFAULT_CONFIG_PATH)
    defaults = to_dict(MldConfig())
    missing, wrong = [], []
    for dotted in _field_keys(MldConfig):
        written, default = raw, defaults
        for part in dotted.split("."):
            if not isinstance(written, dict) or part not in written:
                missing.append(dotted)
                break
            written, default = written[part], default[part]
        else:
            # Written as the code has it, type included: 300.0 for a float, not 300.
            if type(written) is not type(default) or written != default:
                wrong.append(f"{dotted}: {written!r} in the file, {default!r} in the code")
    assert missing == [], f"keys missing from {DEFAULT_CONFIG_PATH}: {missing}"
    assert wrong == []
    assert "transport.replay_window" in _field_keys(MldConfig)  # the walk does recurse


def test_embedded_file_comments_every_key() -> None:
    lines = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_]+:", line):
            previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
            if not previous.lstrip().startswith("#"):
                uncommented.append(line.strip())
    assert uncommented == []


# --- unknown keys -------------------------------------------------------------------------


def test_unknown_key_names_section_file_and_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "transport:\n  replay_windw: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"unknown key 'replay_windw' in transport ({path}): did you mean 'replay_window'?"
    )


@pytest.mark.parametrize(
    "raw",
    ["sniffer:\n  capture:\n    xdp_pin_dir: /sys/fs/bpf/x\n", "firewall:\n  xdp_pin_dir: /x\n"],
)
def test_a_moved_key_says_where_it_went(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "mld.yaml"
    path.write_text(raw)
    with pytest.raises(ConfigError, match=r"xdp_pin_dir \(.*mld.yaml\) has moved to node"):
        load_config(path)
    path.write_text("node:\n  xdp_pin_dir: /sys/fs/bpf/x\n")
    assert load_config(path).node.xdp_pin_dir == "/sys/fs/bpf/x"


def test_unknown_section_suggests_close_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "transprt:\n  replay_window: 10\n")
    with pytest.raises(ConfigError, match="did you mean 'transport'") as info:
        load_config(path)
    assert "'transprt'" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "logging:\n  colour: true\n")
    with pytest.raises(ConfigError, match=r"valid keys: level$") as info:
        load_config(path)
    assert "'colour' in logging" in str(info.value)


# --- wrong types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "text", "key", "expected"),
    [
        (
            MldConfig,
            "transport:\n  replay_window: abc\n",
            "transport.replay_window",
            "expected an integer, got 'abc' (str)",
        ),
        (
            MldConfig,
            "transport:\n  replay_window: true\n",
            "transport.replay_window",
            "expected an integer, got True (bool)",
        ),
        (
            MldConfig,
            "transport:\n  rotation_grace_s: false\n",
            "transport.rotation_grace_s",
            "expected a number, got False (bool)",
        ),
        (
            MldConfig,
            "transport:\n  rotation_grace_s: soon\n",
            "transport.rotation_grace_s",
            "expected a number, got 'soon' (str)",
        ),
        (Sample, "enabled: 1\n", "enabled", "expected a boolean (true or false), got 1 (int)"),
        (Sample, "enabled: 'true'\n", "enabled", "expected a boolean"),
        (MldConfig, "node:\n  id: 123\n", "node.id", "expected a string, got 123 (int)"),
        (
            MldConfig,
            "logging:\n  level: verbose\n",
            "logging.level",
            "expected one of 'debug', 'info', 'warning', 'error', got 'verbose' (str)",
        ),
        (
            MldConfig,
            "transport:\n  peers: [a, b]\n",
            "transport.peers",
            "expected a mapping, got ['a', 'b'] (list)",
        ),
        (
            MldConfig,
            "transport:\n  peers:\n    d1: 5\n",
            "transport.peers.d1",
            "expected a string, got 5 (int)",
        ),
        (
            MldConfig,
            "transport:\n  peers:\n    1: key\n",
            "transport.peers",
            "keys must be strings, got 1 (int)",
        ),
        (
            MldConfig,
            "transport: 5\n",
            "transport",
            "expected a section (a mapping of keys), got 5 (int)",
        ),
        (MldConfig, "transport: [1]\n", "transport", "expected a section"),
        (MldConfig, "transport:\n", "transport", "got null"),
        (
            MldConfig,
            "transport:\n  replay_window:\n",
            "transport.replay_window",
            "expected an integer, got null",
        ),
        (MldConfig, "logging:\n  level: null\n", "logging.level", "got null"),
        (Sample, "ports: [1, x]\n", "ports[1]", "expected an integer, got 'x' (str)"),
        (Sample, "ports: 80\n", "ports", "expected a list, got 80 (int)"),
        (Sample, "pair: [a, 1, 2]\n", "pair", "expected a list of 2 items, got 3"),
        (Sample, "pair: [a, b]\n", "pair[1]", "expected an integer"),
        (Sample, "limits:\n  cpu: high\n", "limits.cpu", "expected a number"),
        (Sample, "mode: true\n", "mode", "expected one of 'fast', 'safe'"),
        (Sample, "inner:\n  ratio: x\n", "inner.ratio", "expected a number"),
        (Sample, "inner:\n  ratoi: 1\n", "inner", "did you mean 'ratio'?"),
    ],
)
def test_wrong_value_names_key_and_file(
    tmp_path: Path, cls: type[Any], text: str, key: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build(cls, load_yaml(path), source=str(path))
    message = str(info.value)
    assert key in message
    assert str(path) in message
    assert expected in message


# --- accepted values ------------------------------------------------------------------------


def test_float_field_accepts_int(tmp_path: Path) -> None:
    path = _write(tmp_path, "transport:\n  rotation_grace_s: 5\n")
    grace = load_config(path).transport.rotation_grace_s
    assert grace == 5.0
    assert type(grace) is float


def test_container_optional_and_nested_types_convert(tmp_path: Path) -> None:
    text = (
        "enabled: yes\n"
        "ports: [80, 443]\n"
        "pair: [b, 2]\n"
        "limits: {cpu: 1, mem: 0.5}\n"
        "note: null\n"
        "mode: fast\n"
        "inner: {ratio: 2}\n"
    )
    path = _write(tmp_path, text)
    sample = build(Sample, load_yaml(path), source=str(path))
    assert sample == Sample(
        enabled=True,
        ports=(80, 443),
        pair=("b", 2),
        limits={"cpu": 1.0, "mem": 0.5},
        note=None,
        mode="fast",
        inner=Inner(ratio=2.0),
    )
    assert type(sample.ports) is tuple
    assert type(sample.limits["cpu"]) is float
    assert build(Sample, {"note": "set"}, source="test").note == "set"


def test_partial_file_overrides_only_what_it_sets(tmp_path: Path) -> None:
    text = "transport:\n  replay_window: 8192\n  peers:\n    detector-1: AAAA\n"
    path = _write(tmp_path, text + "logging:\n  level: debug\n")
    expected = MldConfig(
        logging=LoggingConfig(level="debug"),
        transport=TransportConfig(replay_window=8192, peers={"detector-1": "AAAA"}),
    )
    assert load_config(path) == expected


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "# nothing set\n")
    assert load_yaml(path) == {}
    assert load_config(path) == MldConfig()


# --- file problems ------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "node:\n  id: x\n  state_dir: a: b\n")
    with pytest.raises(ConfigError, match=r"line 3, column \d+") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_duplicate_key_is_rejected_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "transport:\n  send_hwm: 1\n  send_hwm: 2\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'send_hwm' \(first at line 2\)"):
        load_yaml(path)


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path, "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert load_yaml(path) == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="does not exist: check the path") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- transport\n- node\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections") as info:
        load_yaml(path)
    assert str(path) in str(info.value)


# --- which file is used -------------------------------------------------------------------


def test_mld_config_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "node:\n  id: from-env\n", name="env.yaml")
    monkeypatch.setenv("MLD_CONFIG", str(path))
    assert resolve_config_path() == path
    assert load_config().node == NodeConfig(id="from-env")


def test_explicit_path_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLD_CONFIG", str(tmp_path / "env.yaml"))
    explicit = _write(tmp_path, "node:\n  id: explicit\n")
    assert resolve_config_path(str(explicit)) == explicit
    assert load_config(explicit).node.id == "explicit"


def test_system_file_then_shipped_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLD_CONFIG", raising=False)
    system = tmp_path / "etc-mld.yaml"
    monkeypatch.setattr(settings, "SYSTEM_CONFIG_PATH", system)
    assert resolve_config_path() == DEFAULT_CONFIG_PATH
    assert load_config() == MldConfig()
    _write(tmp_path, "logging:\n  level: error\n", name=system.name)
    assert resolve_config_path() == system
    assert load_config().logging.level == "error"


# --- live changes -------------------------------------------------------------------------


def test_replace_path_returns_new_instance_and_keeps_original() -> None:
    original = MldConfig()
    changed = replace_path(original, "transport.replay_window", 8192, source="etcd")
    assert changed.transport.replay_window == 8192
    assert changed.node is original.node
    assert original.transport.replay_window == 4096
    assert original == MldConfig()


def test_replace_path_checks_and_converts_like_build() -> None:
    changed = replace_path(MldConfig(), "transport.batch_max_delay_s", 1, source="etcd")
    assert type(changed.transport.batch_max_delay_s) is float
    section = replace_path(MldConfig(), "logging", {"level": "warning"}, source="etcd")
    assert section.logging == LoggingConfig(level="warning")


def test_replace_path_sets_one_dict_entry() -> None:
    base = replace_path(MldConfig(), "transport.peers", {"a": "K1"}, source="etcd")
    changed = replace_path(base, "transport.peers.detector-1", "K2", source="etcd")
    assert changed.transport.peers == {"a": "K1", "detector-1": "K2"}
    assert base.transport.peers == {"a": "K1"}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("transport.replay_window", "abc", "transport.replay_window in etcd:/mld/x: expected an"),
        ("transport.replay_window", True, "expected an integer, got True (bool)"),
        ("logging.level", "loud", "expected one of"),
        ("transport.peers.d1", 5, "transport.peers.d1 in etcd:/mld/x: expected a string"),
        ("transport.replay_windw", 1, "unknown key 'replay_windw' in transport (etcd:/mld/x)"),
        ("transprt.replay_window", 1, "did you mean 'transport'?"),
        ("transport.replay_window.x", 1, "holds a single value, not a section"),
        ("transport..replay_window", 1, "invalid key"),
        ("node", 5, "node in etcd:/mld/x: expected a section"),
    ],
)
def test_replace_path_rejects_bad_changes(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        replace_path(MldConfig(), key, value, source="etcd:/mld/x")


# --- shape of the result ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "attribute"),
    [
        (MldConfig(), "node"),
        (NodeConfig(), "id"),
        (LoggingConfig(), "level"),
        (TransportConfig(), "replay_window"),
    ],
)
def test_configs_are_frozen(instance: object, attribute: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, attribute, None)


def test_loaded_config_is_frozen() -> None:
    loaded = load_config(DEFAULT_CONFIG_PATH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.transport.replay_window = 1  # type: ignore[misc]


def test_to_dict_gives_plain_data_that_builds_back() -> None:
    sample = Sample(ports=(1, 2), limits={"a": 1.0}, inner=Inner(ratio=3.0))
    plain = to_dict(sample)
    assert plain["ports"] == [1, 2]
    assert plain["inner"] == {"ratio": 3.0}
    assert build(Sample, plain, source="round-trip") == sample
    assert build(MldConfig, to_dict(MldConfig()), source="round-trip") == MldConfig()
