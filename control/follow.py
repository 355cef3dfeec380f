"""How a running service follows its ServiceControl: attach once, poll between turns.

The detector, the firewall agent and the sniffer all hold the plane they were handed,
poll it between batches (it never blocks) and apply a new state. That is written once
here; a service mixes :class:`FollowsControl` in and says what a new state means for it
in :meth:`~FollowsControl.apply_control`::

    class FirewallAgent(FollowsControl):
        def apply_control(self, state):
            self.reconfigure(state.config.firewall)

    agent.attach_control(plane)     # mld/runner.py does it; polls once at once
    ... each turn: agent.follow_control()

A state's ``config`` is the root config (mld.yaml as a whole, with the accepted etcd
overrides): a service reads its own section of it, the one named like the component it
registers as, which is also where its etcd overrides live (/mld/config/<component>/...).
"""

from __future__ import annotations

from typing import Any

from control.attach import ServiceControl
from control.session import ControlState

__all__ = ["FollowsControl"]


class FollowsControl:
    """Mixin: ``plane`` (None until attached), :meth:`attach_control`,
    :meth:`follow_control`, and the service's :meth:`apply_control`."""

    plane: ServiceControl[Any] | None = None

    def attach_control(self, plane: ServiceControl[Any]) -> None:
        """Follow ``plane`` from now on; the state it already has is applied at once."""
        self.plane = plane
        self.follow_control()

    def follow_control(self) -> None:
        """Apply the plane's state if it changed since the last call (never blocks)."""
        if self.plane is None:
            return
        state = self.plane.poll()
        if state is not None:
            self.apply_control(state)

    def apply_control(self, state: ControlState[Any]) -> None:
        """What a new state means for the service (its live settings, its peers)."""
        raise NotImplementedError
