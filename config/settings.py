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
from base.metrics import MetricsConfig
from control.config import ControlConfig
from crypto_transport.config import TransportConfig
from detector.config import AnomalyConfig, DetectorConfig
from firewall.config import FirewallConfig
from rag.config import RagConfig
from sniffer.config import SnifferConfig
from watch.config import WatchConfig

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


def load_config(path: str | Path | None = None) -> MldConfig:
    """Load and check the config file chosen by :func:`resolve_config_path`."""
    resolved = resolve_config_path(path)
    log.debug("loading config from %s", resolved)
    return build(MldConfig, load_yaml(resolved), source=str(resolved))
