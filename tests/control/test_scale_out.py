"""Scale-out: two sniffers spread their batches over two real `mld detector run` processes found
in etcd; one detector is killed with SIGKILL mid-stream and the sniffers drop it within
its lease, losing no more than the batches it held. The test plays the two sniffers
(ServiceControl + DiscoveredSender, as `mld sniffer run` uses them) and the RAG store that every
scored record reaches (a PULL receiver registered as rag/), so it can count them."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from control import EtcdServer
from crypto_transport import KeyPair
from proto.events_pb2 import EventBatch, FlowBatch
from tests.control.support import receiver_stand_in, sniffer_stand_in, spawn_mld, stop
from tests.detector.service_support import SCAN_PCAP, capture_records, parse
from tests.support import wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

BATCH = 50


def _detector(tmp: Path, server: EtcdServer, prefix: str, name: str) -> Path:
    KeyPair.generate().save(tmp / f"{name}.key")
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "node": {"id": name, "state_dir": str(tmp / name)},
                "transport": {"key_file": str(tmp / f"{name}.key")},
                "control": {
                    "endpoints": [server.endpoint],
                    "credentials_dir": str(server.pki_dir),
                    "prefix": prefix,
                    "lease_ttl_s": 2,
                    "health_interval_s": 0.5,
                },
                "detector": {
                    "listen": {"endpoint": "tcp://127.0.0.1:*"},
                    "reload_interval_s": 0,
                    "verdicts": {"enabled": False},
                },
                "metrics": {"detector_port": -1},
            }
        )
    )
    return path


def test_two_sniffers_two_detectors_and_one_detector_dies(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    records = parse(capture_records(SCAN_PCAP))[:BATCH]
    rag, events = receiver_stand_in(
        etcd_server, etcd_prefix, tmp_path / "rag", "rag", "rag-t", "events", EventBatch
    )
    sniffers = []
    for name in ("s1", "s2"):
        plane, sender = sniffer_stand_in(etcd_server, etcd_prefix, tmp_path / name, name)
        plane.start()
        plane.announce()
        sniffers.append((name, plane, sender))
    detectors = {
        name: spawn_mld(
            [
                "detector",
                "run",
                "--config",
                str(_detector(tmp_path, etcd_server, etcd_prefix, name)),
            ],
            tmp_path / f"{name}.log",
        )
        for name in ("d1", "d2")
    }
    by_detector: Counter[str] = Counter()
    sent = 0

    def step(send: bool = True) -> bool:
        """One turn of both sniffers and the RAG receiver; always False (for wait_for)."""
        nonlocal sent
        rag.poll()  # learns the detectors' keys
        for name, plane, sender in sniffers if send else ():
            state = plane.poll()
            if state is not None:
                sender.update(state.peers.get("detector", {}).values())
            if sender.instances and sender.send(FlowBatch(sensor_id=name, records=records)):
                sent += 1
        while (got := events.recv(timeout_ms=0)) is not None:
            by_detector[got.message.detector_id] += 1
        time.sleep(0.05)
        return False

    try:
        deadline = time.monotonic() + 60
        while not (by_detector["d1"] and by_detector["d2"]) and time.monotonic() < deadline:
            step()
        assert by_detector["d1"] and by_detector["d2"], (
            f"both detectors get batches; got {dict(by_detector)}\n"
            + (tmp_path / "d1.log").read_text()
            + (tmp_path / "d2.log").read_text()
        )
        assert all(len(s.instances) == 2 for _, _, s in sniffers), "each sniffer uses both"
        for _ in range(20):
            step()
        # d2 dies without deregistering: its lease (2 s) must end before the sniffers drop it.
        os.kill(detectors["d2"].pid, signal.SIGKILL)
        detectors["d2"].wait(10)
        killed = time.monotonic()
        wait_for(
            lambda: step() or all(s.instances == ["d1"] for _, _, s in sniffers),
            10,
            "the sniffers to drop d2",
        )
        dropped_after = time.monotonic() - killed
        # The lease ends at most 2 s after the last renewal; etcd checks expiry about
        # every 0.5 s. Measured 2.15-2.26 s idle, 3.37 s with a CPU hog beside.
        assert dropped_after < 2 + 3
        for _ in range(20):
            step()
        # Stop sending; take what is still on its way (d1 scores within milliseconds).
        end = time.monotonic() + 3
        while time.monotonic() < end:
            step(send=False)
        dropped = sum(s.stats().get("dropped_timeout", 0) for _, _, s in sniffers)
        received = sum(by_detector.values())
        lost = sent - received
        # Batches sent to d2 between its death and the end of its lease time out (counted,
        # ZMQ_IMMEDIATE); only the ones d2 had taken in but not scored are gone.
        print(
            f"sent {sent} received {received} dropped (counted) {dropped} lost {lost}; "
            f"d2 dropped from discovery {dropped_after:.2f} s after kill -9"
        )
        assert 0 <= lost <= 4, f"lost {lost} batches, more than a detector holds in flight"
    finally:
        for proc in detectors.values():
            stop(proc)
        for _, plane, sender in sniffers:
            sender.close()
            plane.close()
        events.close()
        rag.close()
