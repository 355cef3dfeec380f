"""What the control plane needs of a deployment's root config, and nothing more.

control/ sits below the command line and must not import the whole-house config
(``config.MldConfig``). A session applies etcd overrides by their mld.yaml names to
whatever root dataclass it is given, so it is generic over that dataclass; it reads
only the three settings :class:`RootConfig` names: ``control`` (where etcd is),
``node.state_dir`` (where the last good overrides are kept) and ``logging.level`` (the
live log level). ``MldConfig`` has them; a test's small dataclass can too.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from control.config import ControlConfig

__all__ = ["C", "RootConfig"]


class _Node(Protocol):
    @property
    def state_dir(self) -> str: ...


class _Logging(Protocol):
    @property
    def level(self) -> str: ...


class RootConfig(Protocol):
    """A root config dataclass as the control plane reads it (frozen fields suffice)."""

    @property
    def control(self) -> ControlConfig: ...

    @property
    def node(self) -> _Node: ...

    @property
    def logging(self) -> _Logging: ...


C = TypeVar("C", bound=RootConfig)
