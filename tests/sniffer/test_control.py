"""The sniffer on the control plane, with a real etcd and real ZeroMQ sockets.

The sniffer is wired as ``mld sniffer run`` wires it (sniffer_control, FlowPublisher with
discovery, SnifferService.attach_control), but its source replays the flow events of a
capture file on demand instead of attaching XDP: like the live source it hands the loop a
batch, possibly empty, at least every 20 ms.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import native
from config import MldConfig
from config.settings import NodeConfig
from control import ControlConfig, EtcdClient, EtcdServer, ServiceControl
from control.discovery import DiscoveredSender
from control.layout import Endpoint, config_key, health_key, service_key, status_key
from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
from proto.events_pb2 import FlowBatch
from proto.flowpack import batch_records
from sniffer.cli import sniffer_control
from sniffer.config import PublishConfig
from sniffer.pipeline import FlowPipeline, ProcessedFlows
from sniffer.publisher import FlowPublisher
from sniffer.service import SnifferService
from sniffer.sources import PcapSource
from tests.sniffer.events import events
from tests.support import SHARED_DATA, wait_for

SCAN = SHARED_DATA / "pcaps" / "attacks" / "scan" / "masscan_tcp_0_1000.pcap"
SENSOR = "sensor-1"

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(not SCAN.exists(), reason=f"needs the capture {SCAN}"),
]

Events = npt.NDArray[np.void]


def _scan_events() -> Events:
    source = PcapSource([SCAN], MldConfig().sniffer.capture)
    parts = [ev for ev, _ in source.batches()] + [ev for ev, _ in source.flush()]
    return events(*parts)


class _ReplaySource:
    """Flow events handed in by the test; an empty batch every 20 ms when idle."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Events] = queue.Queue()
        self._stop = threading.Event()
        self._empty = np.zeros(0, dtype=native.EVENT_DTYPE)
        self.fed = 0

    def feed(self, ev: Events) -> None:
        self.fed += len(ev)
        self._queue.put(ev)

    def stop(self) -> None:
        self._stop.set()

    def batches(self) -> Iterator[tuple[Events, str]]:
        while not self._stop.is_set():
            try:
                ev = self._queue.get(timeout=0.02)
            except queue.Empty:
                ev = self._empty
            yield ev, "replay"

    def flush(self) -> list[tuple[Events, str]]:
        return []

    def stats(self) -> dict[str, int]:
        return {"fed": self.fed}

    def close(self) -> None:
        pass


def _config(tmp_path: Path, name: str, etcd: EtcdServer, prefix: str) -> MldConfig:
    key = tmp_path / name / "node.key"
    KeyPair.generate().save(key)
    base = MldConfig()
    return replace(
        base,
        node=NodeConfig(id=name, state_dir=str(tmp_path / name / "state")),
        transport=TransportConfig(key_file=str(key), batch_records=50, batch_max_delay_s=0.05),
        control=ControlConfig(
            endpoints=(etcd.endpoint,),
            prefix=prefix,
            lease_ttl_s=2,
            health_interval_s=0.3,
            credentials_dir=str(etcd.pki_dir),
        ),
    )


class _Sniffer:
    """SnifferService + its ServiceControl, as `mld sniffer run` builds them, run in a thread."""

    def __init__(self, cfg: MldConfig, *, publish: bool) -> None:
        self.keyring = Keyring.from_config(cfg.transport)
        self.service: SnifferService | None = None
        self.plane = sniffer_control(
            cfg,
            sensor_id=SENSOR,
            keyring=self.keyring,
            health=lambda: self.service.health() if self.service else ("starting", {}),
        )
        self.publisher: FlowPublisher | None = None
        self.source = _ReplaySource()
        self.port_scan: list[npt.NDArray[np.float64]] = []
        self.sunk = 0  # records the sink has seen (written by the service thread only)
        self._thread: threading.Thread | None = None
        try:
            cfg = self.plane.start()
            if publish:
                self.publisher = FlowPublisher(
                    publish=replace(cfg.sniffer.publish, enabled=True),
                    transport=cfg.transport,
                    keyring=self.keyring,
                    sensor_id=SENSOR,
                    discover=self.plane.enabled,
                )
            self.service = SnifferService(
                self.source,
                FlowPipeline(cfg.sniffer),
                self.publisher,
                (self._sink,),
                stats_interval_s=3600.0,
            )
            self.plane.announce()
            self.service.attach_control(self.plane)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self.service.run, name="sniffer")
        self._thread.start()

    def _sink(self, done: ProcessedFlows) -> None:
        self.port_scan.append(done.scores.per_rule["port_scan"])
        self.sunk += len(done.flows)  # after the append: what feed() waits for

    def feed(self, ev: Events) -> None:
        """Replay ``ev`` and wait until the sink has their records' scores.

        Not ``pipeline.records``: the pipeline counts a batch's records before it returns
        them and the service hands them to the sinks after, so a wait on that count could
        end before ``port_scan`` had the batch (``max()`` of an empty list, seen once on a
        loaded machine)."""
        assert self.service is not None
        target = self.sunk + len(ev)
        self.source.feed(ev)
        wait_for(lambda: self.sunk >= target, 10, "the records at the sink")

    @property
    def sender(self) -> DiscoveredSender:
        assert self.publisher is not None and isinstance(self.publisher.sender, DiscoveredSender)
        return self.publisher.sender

    def close(self) -> None:
        self.source.stop()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "the sniffer did not stop"
        self.plane.close()
        if self.publisher is not None:
            self.publisher.close()


class _Detector:
    """A detector-like receiver: binds a free port and registers it as endpoint 'flows'."""

    def __init__(self, cfg: MldConfig, instance: str) -> None:
        self.keyring = Keyring.from_config(cfg.transport)
        self.receiver = Receiver(
            pattern="pull",
            endpoint="tcp://127.0.0.1:*",
            channel="flows",
            keyring=self.keyring,
            message_type=FlowBatch,
            settings=cfg.transport,
        )
        self.endpoint = self.receiver.bound_endpoint
        self.plane = ServiceControl(
            cfg,
            component="detector",
            instance=instance,
            keyring=self.keyring,
            follow_log_level=False,
        )
        self.records = 0
        self.senders: set[str] = set()
        self._stop = threading.Event()
        self.plane.start()
        self.plane.announce({"flows": Endpoint(self.endpoint, "push", "flows")})
        self._thread = threading.Thread(target=self._run, name=f"detector-{instance}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.plane.poll()  # keeps the keyring in step with the key directory
            got = self.receiver.recv(timeout_ms=20)
            if got is not None:
                self.records += len(batch_records(got.message))
                self.senders.add(got.peer_id)

    def deregister(self) -> None:
        self.plane.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.plane.close()
        self.receiver.close()


def _status(client: EtcdClient, prefix: str, what: str) -> dict[str, object]:
    raw = client.get(status_key(prefix, "sniffer", SENSOR, what))
    return {} if raw is None else dict(json.loads(raw))


def test_rules_change_from_etcd_reaches_the_running_sniffer(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, SENSOR, etcd_server, etcd_prefix)
    client = EtcdClient.connect(cfg.control)
    scan = _scan_events()
    sniffer = _Sniffer(cfg, publish=False)
    try:
        service = sniffer.service
        assert service is not None
        rules = service.pipeline.rules
        # Registered with its public key, no endpoints (nothing connects to a sniffer).
        wait_for(
            lambda: client.get(service_key(etcd_prefix, "sniffer", SENSOR)) is not None,
            5,
            "the sniffer's registration",
        )
        reg = json.loads(client.get(service_key(etcd_prefix, "sniffer", SENSOR)) or b"{}")
        assert reg["endpoints"] == {} and reg["public_key"] == sniffer.keyring.own.public_b64

        sniffer.feed(scan)
        assert max(s.max() for s in sniffer.port_scan) == 1.0  # the defaults fire
        fired = rules.fired["port_scan"]
        assert fired > 900

        def put(name: str, value: str) -> None:
            client.put(config_key(etcd_prefix, "sniffer", f"sniffer.rules.{name}"), value)

        put("port_scan_high", "6000")  # first: low 16 < 6000 stays valid
        wait_for(lambda: rules.config.port_scan_high == 6000, 1, "port_scan_high applied")
        start = time.monotonic()
        put("port_scan_low", "5000")
        wait_for(lambda: rules.config.port_scan_low == 5000, 1, "port_scan_low applied")
        took = time.monotonic() - start
        assert took < 1.0
        status = _status(client, etcd_prefix, "config")
        assert status["key"] == "sniffer.rules.port_scan_low"
        assert status["state"] == "applied", status
        assert service.config_changes == 2
        assert service.pipeline.rules is rules  # reconfigured in place: windows kept

        # Behaviour: the same scan again, now below the new low threshold.
        sniffer.port_scan.clear()
        sniffer.feed(scan)
        assert max(s.max() for s in sniffer.port_scan if len(s)) == 0.0
        assert rules.fired["port_scan"] == fired

        # Refused: low above high, and a string; the rules in force stay.
        put("port_scan_high", "100")
        wait_for(
            lambda: _status(client, etcd_prefix, "config").get("state") == "refused",
            2,
            "the refusal",
        )
        status = _status(client, etcd_prefix, "config")
        assert status["key"] == "sniffer.rules.port_scan_high"
        assert "port_scan_low (5000.0) must be below port_scan_high (100.0)" in str(
            status["reason"]
        )
        put("port_scan_low", "lots")
        wait_for(
            lambda: _status(client, etcd_prefix, "config").get("value") == "lots",
            2,
            "the second refusal",
        )
        status = _status(client, etcd_prefix, "config")
        assert status["state"] == "refused" and "port_scan_low" in str(status["reason"])
        time.sleep(0.1)  # a few turns of the loop
        assert (rules.config.port_scan_low, rules.config.port_scan_high) == (5000, 6000)
        assert service.config_changes == 2

        # Health comes from the service thread's copy of its counters.
        def health() -> dict[str, int]:
            raw = client.get(health_key(etcd_prefix, "sniffer", SENSOR))
            return {} if raw is None else dict(json.loads(raw)["counters"])

        wait_for(lambda: health().get("control.config_changes") == 2, 3, "the health counters")
        assert health()["pipeline.records"] == 2 * len(scan)
    finally:
        sniffer.close()
        client.close()


def test_publisher_follows_detectors_as_they_come_and_go(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    scan = _scan_events()
    parts = [scan[i : i + 300] for i in range(0, 900, 300)]
    # No transport.peers anywhere: every public key comes from etcd.
    det_a = _Detector(_config(tmp_path, "det-a", etcd_server, etcd_prefix), "det-a")
    det_b: _Detector | None = None
    sniffer: _Sniffer | None = None
    try:
        cfg = _config(tmp_path, SENSOR, etcd_server, etcd_prefix)
        assert cfg.transport.peers == {} and cfg.sniffer.publish == PublishConfig()
        sniffer = _Sniffer(cfg, publish=True)
        publisher = sniffer.publisher
        assert publisher is not None
        wait_for(lambda: sniffer.sender.instances == ["det-a"], 3, "the sniffer to find det-a")
        wait_for(lambda: SENSOR in det_a.keyring.peers, 3, "det-a to learn the sensor's key")

        sniffer.feed(parts[0])
        wait_for(lambda: det_a.records == len(parts[0]), 5, "det-a to receive the records")
        assert det_a.senders == {SENSOR}

        det_a.deregister()  # as mld detector run stops: deregister, then close the socket
        wait_for(lambda: sniffer.sender.instances == [], 3, "the sniffer to drop det-a")
        det_a.close()

        sniffer.feed(parts[1])  # nobody registered: dropped and counted
        wait_for(lambda: publisher.records_dropped == len(parts[1]), 5, "the drops")
        stats = publisher.stats()
        assert stats["receivers"] == 0
        assert stats["dropped_no_receiver"] == stats["batches_dropped"] > 0

        det_b = _Detector(_config(tmp_path, "det-b", etcd_server, etcd_prefix), "det-b")
        assert det_b.endpoint != det_a.endpoint
        wait_for(lambda: sniffer.sender.instances == ["det-b"], 3, "the sniffer to find det-b")
        assert SENSOR in det_b.keyring.peers
        sniffer.feed(parts[2])
        wait_for(lambda: det_b.records == len(parts[2]), 5, "det-b to receive the records")

        assert det_a.records + det_b.records + publisher.records_dropped == sum(map(len, parts))
        assert publisher.records_sent == det_a.records + det_b.records
        assert publisher.stats()["receivers"] == 1
    finally:
        if sniffer is not None:
            sniffer.close()
        det_a.close()
        if det_b is not None:
            det_b.close()
