"""Helpers of the scoring-service tests: records from a real capture, real keys, and a
DetectorService on real ZeroMQ sockets between a sensor, a firewall and a RAG store."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from config import load_config
from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
from detector.config import DetectorConfig, ListenConfig, OutputConfig
from detector.service import DetectorService
from proto.events_pb2 import EventBatch, FlowRecord, VerdictBatch
from sniffer.config import PublishConfig
from sniffer.pipeline import FlowPipeline
from sniffer.publisher import FlowPublisher
from sniffer.records import PackedFlows
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

SCAN_PCAP = SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap"
BENIGN_PCAP = SHARED_DATA / "pcaps/ndpi/reddit.pcap"
ANY_PORT = "tcp://127.0.0.1:*"
SENSOR, DETECTOR, FIREWALL, RAG = "sensor-1", "det-1", "firewall", "rag"
# A second sensor the detector knows (attribution tests).
SENSOR2 = "sensor-2"
# Each node's transport role (what its key may send: crypto_transport channel_senders).
ROLES = {
    SENSOR: "sniffer",
    SENSOR2: "sniffer",
    DETECTOR: "detector",
    FIREWALL: "firewall",
    RAG: "rag",
}

ZmqContext = zmq.Context[zmq.Socket[bytes]]


def capture_packed(*paths: Path) -> list[PackedFlows]:
    """The same records as :func:`capture_records`, packed as the live sniffer sends them."""
    scfg = load_config().sniffer
    out: list[PackedFlows] = []
    for path in paths:
        source = PcapSource([path], scfg.capture)
        pipeline = FlowPipeline(scfg)
        for events, obs in [*source.batches(), *source.flush()]:
            if len(events):
                packed = pipeline.process(events, obs, encode=False, pack=True).packed
                assert packed is not None
                out.append(packed)
    return out


def capture_records(*paths: Path) -> list[bytes]:
    """Serialized FlowRecords of captures, made by the sniffer's pipeline (fast rules too)."""
    scfg = load_config().sniffer
    out: list[bytes] = []
    for path in paths:
        source = PcapSource([path], scfg.capture)
        pipeline = FlowPipeline(scfg)
        for events, obs in source.batches():
            if len(events):
                out += pipeline.process(events, obs).records
        for events, obs in source.flush():
            out += pipeline.process(events, obs).records
    return out


@dataclass
class Keys:
    """One key pair per node; each keyring knows the peers it talks to."""

    pairs: dict[str, KeyPair] = field(
        default_factory=lambda: {n: KeyPair.generate() for n in ROLES}
    )

    def ring(self, node: str, *peers: str) -> Keyring:
        ring = Keyring(self.pairs[node], grace_s=60)
        for peer in peers:
            ring.add_peer(peer, self.pairs[peer].public, roles=[ROLES[peer]])
        return ring


def bound_endpoint(receiver: Receiver[Any]) -> str:
    """The endpoint a receiver bound to (its port was chosen by the kernel)."""
    endpoint = receiver._sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()


class Harness:
    """A detector from ``DetectorService.from_config`` listening on a random port, with a
    firewall (verdicts) and a RAG store (events) receiving on theirs, and a sensor."""

    def __init__(
        self,
        bundle_dir: Path,
        cache_dir: Path,
        *,
        reload_interval_s: float = 0.0,
        verdicts: bool = True,
        events: bool = True,
        batch_records: int = 100,
        transport: dict[str, Any] | None = None,
        detector: dict[str, Any] | None = None,
        **service_options: Any,
    ) -> None:
        """``service_options`` go to DetectorService.from_config (anomaly, state_dir);
        ``transport`` and ``detector`` override TransportConfig and DetectorConfig keys."""
        # The receiver's replay state goes to node.state_dir: never the real /var/lib/mld.
        self._state = tempfile.mkdtemp(prefix="mld-det-state-")
        service_options.setdefault("state_dir", self._state)
        self.keys = Keys()
        self.settings = TransportConfig(
            batch_records=batch_records, batch_max_delay_s=0.05, **(transport or {})
        )
        self.ctx: ZmqContext = zmq.Context()
        self.firewall = self._receiver("verdicts", VerdictBatch, FIREWALL)
        self.rag = self._receiver("events", EventBatch, RAG)
        options: dict[str, Any] = dict(
            bundle_dir=str(bundle_dir),
            model_cache_dir=str(cache_dir),
            reload_interval_s=reload_interval_s,
            detector_id=DETECTOR,
            listen=ListenConfig(endpoint=ANY_PORT),
            verdicts=OutputConfig(
                enabled=verdicts,
                endpoint=bound_endpoint(self.firewall),
                channel="verdicts",
                recipients=(FIREWALL,),
            ),
            events=OutputConfig(
                enabled=events,
                endpoint=bound_endpoint(self.rag),
                channel="events",
                recipients=(RAG,),
            ),
        )
        self.config = DetectorConfig(**(options | (detector or {})))
        self.service = DetectorService.from_config(
            self.config,
            self.settings,
            self.keys.ring(DETECTOR, SENSOR, SENSOR2, FIREWALL, RAG),
            DETECTOR,
            stats_interval_s=3600.0,
            **service_options,
        )
        self.listen = bound_endpoint(self.service.receiver)
        self._thread: threading.Thread | None = None

    def _receiver(self, channel: str, kind: type[Any], node: str) -> Receiver[Any]:
        return Receiver(
            pattern="pull",
            endpoint=ANY_PORT,
            channel=channel,
            keyring=self.keys.ring(node, DETECTOR),
            message_type=kind,
            settings=self.settings,
            context=self.ctx,
        )

    def publisher(self, sensor_id: str = SENSOR) -> FlowPublisher:
        return FlowPublisher(
            publish=PublishConfig(endpoint=self.listen, recipients=(DETECTOR,)),
            transport=self.settings,
            keyring=self.keys.ring(SENSOR, DETECTOR),
            sensor_id=sensor_id,
        )

    def start(self, max_batches: int | None = None) -> None:
        self._thread = threading.Thread(target=self.service.run, args=(max_batches,))
        self._thread.start()

    def stop(self) -> None:
        self.service.request_stop()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "the service did not stop"
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.service.close()
        self.firewall.close()
        self.rag.close()
        self.ctx.destroy(linger=0)  # closes sockets a failed test left open
        shutil.rmtree(self._state, ignore_errors=True)


def collect(
    receiver: Receiver[Any],
    done: Callable[[Sequence[Any]], bool],
    timeout_ms: int = 10000,
    into: list[Any] | None = None,
) -> list[Any]:
    """Batches from ``receiver`` until ``done(batches)`` or nothing came for ``timeout_ms``."""
    got: list[Any] = into if into is not None else []
    while not done(got):
        item = receiver.recv(timeout_ms=timeout_ms)
        if item is None:
            break
        got.append(item.message)
    return got


def events_of(batches: Sequence[EventBatch]) -> list[Any]:
    return [e for b in batches for e in b.events]


def parse(records: Sequence[bytes]) -> list[FlowRecord]:
    return [FlowRecord.FromString(r) for r in records]


class Streamer(threading.Thread):
    """Publishes chunks of ``records`` to the harness's detector until stopped, keeping
    every record it sent (hot-swap tests: nothing may be lost)."""

    """A sensor sending batches of ``size`` records, round and round, until stopped."""

    def __init__(self, harness: Harness, records: list[bytes], size: int) -> None:
        super().__init__()
        self.publisher = harness.publisher()
        self.records = records
        self.size = size
        self.sent: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            chunk = self.records[i : i + self.size]
            i = (i + self.size) % (len(self.records) - self.size)
            self.publisher.add(chunk)
            self.publisher.flush()
            self.sent += chunk
            time.sleep(0.01)
        self.publisher.close()
