"""The firewall agent: verdicts in, blocks out, with an operator's caution.

Public API::

    FirewallConfig                        settings (mld.yaml ``firewall``)
    Policy, Decision, ActiveBlock         which verdicts become blocks, for how long
    Allowlist, local_addresses            what is never blocked (config + own addresses)
    DecisionLog, LogEntry                 every decision in SQLite; restore after restart

The policy is pure logic; the backends (XDP blocklist map, nftables) and the service
(``mld firewall``) apply its decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.lazy import lazy_exports

if TYPE_CHECKING:
    from firewall.allowlist import Allowlist, local_addresses
    from firewall.config import FirewallConfig
    from firewall.decision_log import DecisionLog, LogEntry
    from firewall.policy import REJECT_REASONS, ActiveBlock, Decision, Policy

__all__ = [
    "REJECT_REASONS",
    "ActiveBlock",
    "Allowlist",
    "Decision",
    "DecisionLog",
    "FirewallConfig",
    "LogEntry",
    "Policy",
    "local_addresses",
]

# Imported on first use (base.lazy): importing one module of the package stays cheap.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "firewall.allowlist": (
            "Allowlist",
            "local_addresses",
        ),
        "firewall.config": ("FirewallConfig",),
        "firewall.decision_log": (
            "DecisionLog",
            "LogEntry",
        ),
        "firewall.policy": (
            "REJECT_REASONS",
            "ActiveBlock",
            "Decision",
            "Policy",
        ),
    },
)
