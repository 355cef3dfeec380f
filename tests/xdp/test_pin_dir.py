"""The pin folder reaches the BPF compiler's flags: only safe paths get there.

The attack (issue 19, finding 2): the pin folder is written into the XDP program's
compile flags as ``-DMLD_BLOCKLIST_PIN="<pin_dir>/blocklist"``. A value with a quote
(from etcd, where any local user could write it, or from a config file) closed the
string and added flags of the attacker's choosing to the compile that root runs, e.g.
``-DMLD_BLOCKLIST_MAX=1`` (a one-entry blocklist) or an ``-include`` of any file. It is
now refused, with a ConfigError, when the config is read and again when the monitor is
made and before the flags are built; etcd may not set it at all
(tests/control/test_override_attacks.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from base.errors import ConfigError
from config import load_config
from xdp import FlowMonitor
from xdp.bpffs import check_pin_dir

BAD = [
    '/sys/fs/bpf/x" -DMLD_BLOCKLIST_MAX=1 -D"y',
    "/sys/fs/bpf/x -include /etc/shadow",
    "/sys/fs/bpf/a\\b",
    "/sys/fs/bpf/../../etc",
    "/tmp/pins",
    "sys/fs/bpf/mld",
    "/sys/fs/bpf/mld/",
    "/sys/fs/bpf/ml$(id)d",
]


@pytest.mark.parametrize("pin_dir", BAD)
def test_an_unsafe_pin_dir_never_reaches_the_compiler(pin_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a safe bpffs folder"):
        FlowMonitor(["lo"], pin_dir=pin_dir)
    path = tmp_path / "mld.yaml"
    path.write_text(f"node:\n  xdp_pin_dir: '{pin_dir.replace(chr(39), chr(39) * 2)}'\n")
    with pytest.raises(ConfigError, match=r"node\.xdp_pin_dir"):
        load_config(path)


@pytest.mark.parametrize("pin_dir", ["/sys/fs/bpf", "/sys/fs/bpf/mld", "/sys/fs/bpf/lab-1_a.b"])
def test_a_safe_pin_dir_is_kept(pin_dir: str) -> None:
    assert str(check_pin_dir(pin_dir)) == pin_dir
    assert str(FlowMonitor(["lo"], pin_dir=pin_dir).pin_dir) == pin_dir
