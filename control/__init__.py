"""The control plane on etcd: registration with leases, discovery, live config, public keys.

See control/README.md for the key layout, the TLS and auth setup, and examples.
"""

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from control.attach import ServiceControl, apply_log_level, stats_from_other_thread
    from control.client import EtcdClient
    from control.config import ControlConfig
    from control.discovery import DiscoveredSender, advertised, output_sender, sync_keyring
    from control.etcd_server import EtcdServer, free_port
    from control.follow import FollowsControl
    from control.layout import Endpoint, Registration
    from control.root import RootConfig
    from control.session import ControlSession, ControlState

__all__ = [
    "ControlConfig",
    "ControlSession",
    "ControlState",
    "DiscoveredSender",
    "Endpoint",
    "EtcdClient",
    "EtcdServer",
    "FollowsControl",
    "Registration",
    "RootConfig",
    "ServiceControl",
    "advertised",
    "apply_log_level",
    "free_port",
    "output_sender",
    "stats_from_other_thread",
    "sync_keyring",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "control.attach": (
            "ServiceControl",
            "apply_log_level",
            "stats_from_other_thread",
        ),
        "control.client": ("EtcdClient",),
        "control.config": ("ControlConfig",),
        "control.discovery": (
            "DiscoveredSender",
            "advertised",
            "output_sender",
            "sync_keyring",
        ),
        "control.etcd_server": (
            "EtcdServer",
            "free_port",
        ),
        "control.follow": ("FollowsControl",),
        "control.layout": (
            "Endpoint",
            "Registration",
        ),
        "control.root": ("RootConfig",),
        "control.session": (
            "ControlSession",
            "ControlState",
        ),
    },
)
