"""The whole ML Defender configuration (``MldConfig``) and where it is loaded from.

``load_config()`` looks for the file in this order: the path it is given (``--config``),
``$MLD_CONFIG``, ``/etc/mld/mld.yaml``, and last the commented ``mld.yaml`` shipped beside
this module, which holds every default. A user file may be partial: keys it leaves out
keep their defaults.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from base.config_loader import build, load_yaml
from base.errors import ConfigError
from base.metrics import MetricsConfig
from control.config import ControlConfig
from crypto_transport.config import TransportConfig
from detector.config import AnomalyConfig, DetectorConfig
from firewall.config import FirewallConfig
from rag.config import RagConfig
from sniffer.config import SnifferConfig
from watch.config import WatchConfig
from xdp.blocklist import DEFAULT_PIN_DIR
from xdp.bpffs import check_pin_dir

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "SYSTEM_CONFIG_PATH",
    "LoggingConfig",
    "MldConfig",
    "NodeConfig",
    "load_config",
    "resolve_config_path",
]

log = logging.getLogger(__name__)

# The shipped file with every default written in place.
DEFAULT_CONFIG_PATH = Path(__file__).with_name("mld.yaml")
# The file an installed node uses when it exists.
SYSTEM_CONFIG_PATH = Path("/etc/mld/mld.yaml")
# Environment variable naming a config file; beats SYSTEM_CONFIG_PATH.
CONFIG_ENV_VAR = "MLD_CONFIG"


@dataclass(frozen=True)
class NodeConfig:
    # Node id, unique in the deployment; empty means: use the host name.
    id: str = ""
    # Directory where the node keeps state across restarts.
    state_dir: str = "/var/lib/mld"
    # bpffs folder where the sniffer's XDP program pins its blocklist map and where the
    # firewall agent writes its blocks: one folder for both, so the program enforces them.
    xdp_pin_dir: str = DEFAULT_PIN_DIR

    def __post_init__(self) -> None:
        check_pin_dir(self.xdp_pin_dir)  # it reaches the BPF compile flags (issue 19)


@dataclass(frozen=True)
class LoggingConfig:
    # Lowest level of the messages logged.
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class MldConfig:
    node: NodeConfig = field(default_factory=NodeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    sniffer: SnifferConfig = field(default_factory=SnifferConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)


def resolve_config_path(path: str | Path | None = None) -> Path:
    """Return the config file to use: ``path``, else $MLD_CONFIG, else /etc/mld/mld.yaml
    if it exists, else the shipped DEFAULT_CONFIG_PATH."""
    if path is not None:
        return Path(path)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env)
    if SYSTEM_CONFIG_PATH.exists():
        return SYSTEM_CONFIG_PATH
    return DEFAULT_CONFIG_PATH


# Settings that moved: old dotted name -> new one (a file still using the old name gets
# an error saying where to write it instead of "unknown key").
MOVED_KEYS = {
    "sniffer.capture.xdp_pin_dir": "node.xdp_pin_dir",
    "firewall.xdp_pin_dir": "node.xdp_pin_dir",
}


def _check_moved(raw: object, source: str) -> None:
    for old, new in MOVED_KEYS.items():
        value = raw
        for part in old.split("."):
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is not _ABSENT:
            raise ConfigError(
                f"{old} ({source}) has moved to {new}: the sniffer's XDP program and the "
                f"firewall share one pin folder now; write it once as {new}"
            )


_ABSENT = object()


def load_config(path: str | Path | None = None) -> MldConfig:
    """Load and check the config file chosen by :func:`resolve_config_path`."""
    resolved = resolve_config_path(path)
    log.debug("loading config from %s", resolved)
    raw = load_yaml(resolved)
    _check_moved(raw, str(resolved))
    return build(MldConfig, raw, source=str(resolved))
