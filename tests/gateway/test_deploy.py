"""The files in deploy/: every systemd unit runs an `mld` command our parser accepts (with
the example environment), and the sysctl file sets what `mld gateway run --check` checks."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from mld.cli import build_parser
from tests.support import REPO

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _env() -> dict[str, str]:
    lines = (DEPLOY / "gateway.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_each_unit_runs_a_command_that_parses(unit: Path) -> None:
    service = _unit(unit)["Service"]
    env = _env()
    for key in ("ExecStartPre", "ExecStart"):
        if key not in service:
            continue
        line = service[key]
        for name, value in env.items():
            line = line.replace("${" + name + "}", value)
        argv = shlex.split(line)
        if argv[0].endswith("/mld"):
            assert argv[0] == "/opt/mld/.venv/bin/mld"
            args = build_parser().parse_args(argv[1:])
            assert getattr(args, "func", None) is not None, line
        else:
            assert argv[0] == "/usr/sbin/ethtool", line
    assert _unit(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_the_gateway_unit_lets_mld_gateway_stop_its_services_in_order() -> None:
    service = _unit(DEPLOY / "systemd" / "mld-gateway.service")["Service"]
    # SIGTERM to the supervisor only; it stops the children itself.
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 90


def test_the_sysctl_file_turns_on_forwarding_and_rp_filter() -> None:
    values = {}
    for line in (DEPLOY / "sysctl.d" / "90-mld-gateway.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert values["net.ipv4.ip_forward"] == "1"
    assert values["net.ipv4.conf.all.rp_filter"] in ("1", "2")
