"""Open a Sender or a Receiver from the settings that describe one end of a channel.

Every service describes the ends of its channels with the same four settings: the
ZeroMQ ``endpoint``, the ``pattern`` (push/pub to send, pull/sub to receive), whether
to ``bind`` it (null: PUB and PULL bind, PUSH and SUB connect) and the ``channel`` name
bound into every frame; a sending end also names its ``recipients``. The detector's
``listen``/``verdicts``/``events`` and the sniffer's ``publish`` sections have exactly
these fields and are passed as they are; a component whose settings are laid out
otherwise (the firewall's ``listen_*``, the RAG store's ``listen_endpoint``) builds a
:class:`ChannelEnd`. The sockets are then made here and nowhere else::

    receiver = open_receiver(cfg.detector.listen, FlowBatch, keyring=kr, settings=tr)
    sender = open_sender(cfg.sniffer.publish, sender_id="s1", keyring=kr, settings=tr)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import zmq
from google.protobuf.message import Message

from crypto_transport.channel import Receiver, Sender
from crypto_transport.config import TransportConfig
from crypto_transport.keys import Keyring

__all__ = ["ChannelEnd", "ReceivingEnd", "SendingEnd", "open_receiver", "open_sender"]

M = TypeVar("M", bound=Message)
ZmqContext = zmq.Context[zmq.Socket[bytes]]


class ReceivingEnd(Protocol):
    """The settings of a receiving end (read-only attributes of a config dataclass)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def pattern(self) -> Literal["pull", "sub"]: ...

    @property
    def bind(self) -> bool | None: ...

    @property
    def channel(self) -> str: ...


class SendingEnd(Protocol):
    """The settings of a sending end (read-only attributes of a config dataclass)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def pattern(self) -> Literal["push", "pub"]: ...

    @property
    def bind(self) -> bool | None: ...

    @property
    def channel(self) -> str: ...

    @property
    def recipients(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ChannelEnd:
    """A receiving end for settings laid out otherwise than :class:`ReceivingEnd`."""

    endpoint: str
    pattern: Literal["pull", "sub"]
    channel: str
    bind: bool | None = None


def open_receiver(
    end: ReceivingEnd,
    message_type: type[M],
    *,
    keyring: Keyring,
    settings: TransportConfig,
    context: ZmqContext | None = None,
    senders: Collection[str] | None = None,
    replay_state: str | Path | None = None,
) -> Receiver[M]:
    """A bound or connected Receiver of ``message_type`` batches (TransportError); it
    accepts frames only from peers holding one of ``senders`` (None: the roles
    ``settings.channel_senders`` gives for the channel)."""
    return Receiver(
        pattern=end.pattern,
        endpoint=end.endpoint,
        channel=end.channel,
        keyring=keyring,
        message_type=message_type,
        settings=settings,
        bind=end.bind,
        context=context,
        senders=senders,
        replay_state=replay_state,
    )


def open_sender(
    end: SendingEnd,
    *,
    sender_id: str,
    keyring: Keyring,
    settings: TransportConfig,
    context: ZmqContext | None = None,
) -> Sender:
    """A bound or connected Sender sealing for ``end.recipients`` (TransportError)."""
    return Sender(
        pattern=end.pattern,
        endpoint=end.endpoint,
        channel=end.channel,
        sender_id=sender_id,
        keyring=keyring,
        recipients=list(end.recipients),
        settings=settings,
        bind=end.bind,
        context=context,
    )
