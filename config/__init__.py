"""ML Defender configuration: one commented YAML file loaded into frozen dataclasses.

>>> from config import load_config
>>> cfg = load_config()          # --config path, $MLD_CONFIG, /etc/mld/mld.yaml, mld.yaml
>>> cfg.transport.replay_window
4096
"""

from __future__ import annotations

from config.settings import (
    DEFAULT_CONFIG_PATH,
    LoggingConfig,
    MldConfig,
    NodeConfig,
    load_config,
    resolve_config_path,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "LoggingConfig",
    "MldConfig",
    "NodeConfig",
    "load_config",
    "resolve_config_path",
]
