"""`mld rag run` as a real process: encrypted EventBatches in over ZeroMQ, SQLite as the
source of truth across a kill -9, and the detector finding it through etcd."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from control import EtcdServer
from crypto_transport import KeyPair, Keyring, Sender, TransportConfig
from proto.events_pb2 import EventBatch, FlowBatch, ScoredEvent
from rag.config import RagConfig
from rag.indexed_store import RagStore
from tests.control.support import sniffer_stand_in, spawn_mld, stop
from tests.control.test_detector_discovery import _detector_config
from tests.detector.service_support import SCAN_PCAP, capture_records, parse
from tests.support import wait_for

BATCH = 100


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _config(tmp: Path, extra: dict[str, object]) -> Path:
    key = tmp / "rag.key"
    if not key.exists():
        KeyPair.generate().save(key)
    data = {
        "node": {"id": "rag-1", "state_dir": str(tmp / "state")},
        "transport": {"key_file": str(key)},
        # Any free port for the firewall's decisions too: a fixed one collides between runs.
        "rag": {
            "listen_endpoint": "tcp://127.0.0.1:*",
            "blocks_endpoint": "tcp://127.0.0.1:*",
            "save_every_s": 0.5,
        },
    } | extra
    path = tmp / "rag.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_kill_between_batches_loses_nothing_committed(
    small_store: RagStore, tmp_path: Path
) -> None:
    det = KeyPair.generate()
    _config(tmp_path, {})
    rag_key = KeyPair.load(tmp_path / "rag.key")
    config = _config(
        tmp_path,
        {
            "transport": {
                "key_file": str(tmp_path / "rag.key"),
                "peers": {"det-a": det.public_b64},
                "peer_roles": {"det-a": ["detector"]},
            }
        },
    )
    db = tmp_path / "state" / "rag" / "events.sqlite"
    log = tmp_path / "rag.log"
    # Stored events (one per flow; ids have gaps where a flow's interim records were).
    events = [
        ScoredEvent.FromString(blob) for chunk in small_store.store.scan(0) for _, blob, _ in chunk
    ][: 10 * BATCH]
    proc = spawn_mld(["rag", "run", "--config", str(config), "--listen", "tcp://127.0.0.1:0"], log)
    ring = Keyring(det, grace_s=60)
    ring.add_peer("rag", rag_key.public)
    sender = None
    try:
        wait_for(lambda: "storing scored events from" in log.read_text(), 30, "the service")
        endpoint = log.read_text().split("storing scored events from ")[1].split()[0]
        sender = Sender(
            pattern="push",
            endpoint=endpoint,
            channel="events",
            sender_id="det-a",
            keyring=ring,
            recipients=["rag"],
            settings=TransportConfig(),
        )
        for n in range(5):
            batch = EventBatch(detector_id="det-a", batch_seq=n)
            batch.events.extend(events[n * BATCH : (n + 1) * BATCH])
            sender.send(batch)
        wait_for(lambda: _stored(db) == 5 * BATCH, 20, "the first 500 events")
        # More batches, and kill -9 while they arrive.
        for n in range(5, 10):
            batch = EventBatch(detector_id="det-a", batch_seq=n)
            batch.events.extend(events[n * BATCH : (n + 1) * BATCH])
            sender.send(batch)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kept = _stored(db)
        assert kept >= 5 * BATCH and kept % BATCH == 0, "whole batches only: one transaction each"
        # Restart: the indexes catch up with SQLite.
        proc = spawn_mld(["rag", "run", "--config", str(config)], log)
        wait_for(lambda: log.read_text().count("storing scored events from") == 2, 30, "restart")
        stop(proc)
        rag = RagStore(db, RagConfig(), readonly=True)
        try:
            rag.open_indexes()
            assert len(rag.text) == len(rag.features) == kept == rag.store.count()
            first = rag.store.event(1)
            assert first is not None and first.SerializeToString() == events[0].SerializeToString()
        finally:
            rag.close()
    finally:
        stop(proc)
        if sender is not None:
            sender.close()


@pytest.mark.etcd
@pytest.mark.slow
def test_the_detector_finds_the_rag_store_through_etcd(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """sniffer (this test) -> mld detector run -> mld rag run, every hop found in etcd."""
    control = {
        "endpoints": [etcd_server.endpoint],
        "credentials_dir": str(etcd_server.pki_dir),
        "prefix": etcd_prefix,
        "lease_ttl_s": 2,
        "health_interval_s": 0.5,
    }
    config = _config(tmp_path, {"control": control})
    db = tmp_path / "state" / "rag" / "events.sqlite"
    det_config = _detector_config(tmp_path, etcd_server, etcd_prefix)
    data = yaml.safe_load(det_config.read_text())
    data["detector"]["events"] = {"enabled": True}
    det_config.write_text(yaml.safe_dump(data))
    records = parse(capture_records(SCAN_PCAP))[:300]
    sensor, flows = sniffer_stand_in(etcd_server, etcd_prefix, tmp_path / "s", "sensor-r")
    rag = spawn_mld(["rag", "run", "--config", str(config)], tmp_path / "rag.log")
    det = spawn_mld(["detector", "run", "--config", str(det_config)], tmp_path / "det.log")
    try:
        sensor.start()
        sensor.announce()
        deadline = time.monotonic() + 40
        seq = 0
        while _stored(db) < len(records) and time.monotonic() < deadline:
            state = sensor.poll()
            if state is not None:
                flows.update(state.peers.get("detector", {}).values())
            if flows.instances and seq < 3:
                flows.send(FlowBatch(sensor_id="sensor-r", batch_seq=seq, records=records))
                seq += 1
            time.sleep(0.2)
        stored = _stored(db)
        assert stored >= len(records), (
            f"{stored} events stored; detector log:\n{(tmp_path / 'det.log').read_text()}"
            f"\nrag log:\n{(tmp_path / 'rag.log').read_text()}"
        )
        out = tmp_path / "status.json"
        assert spawn_mld(["status", "--json", "--config", str(config)], out).wait(30) == 0
        status = json.loads(out.read_text())
        names = {(s["component"], s["instance"]) for s in status["services"]}
        assert {("rag", "rag-1"), ("detector", "det-a")} <= names
    finally:
        stop(det)
        stop(rag)
        flows.close()
        sensor.close()


def _blocks(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.etcd
@pytest.mark.slow
def test_the_firewall_finds_the_rag_store_through_etcd(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """sniffer (this test) -> mld detector run -> mld firewall run (dry run) -> mld rag
    run: the agent's decisions reach the store it found in etcd (its ``blocks``
    endpoint), sealed for the key the store registered there."""
    control = {
        "endpoints": [etcd_server.endpoint],
        "credentials_dir": str(etcd_server.pki_dir),
        "prefix": etcd_prefix,
        "lease_ttl_s": 2,
        "health_interval_s": 0.5,
    }
    config = _config(tmp_path, {"control": control})
    db = tmp_path / "state" / "rag" / "events.sqlite"
    det_config = _detector_config(tmp_path, etcd_server, etcd_prefix)
    KeyPair.generate().save(tmp_path / "fw.key")
    fw_config = tmp_path / "firewall.yaml"
    fw_config.write_text(
        yaml.safe_dump(
            {
                "node": {"id": "fw-1", "state_dir": str(tmp_path / "fw-state")},
                "transport": {"key_file": str(tmp_path / "fw.key")},
                "control": control,
                "firewall": {
                    "dry_run": True,
                    # The capture's scanner never completes a handshake (a SYN scan): let
                    # the agent block it anyway, this test is about where decisions go.
                    "block_unverified": True,
                    "auto_allowlist": [],
                    "listen_endpoint": "tcp://127.0.0.1:*",
                },
            }
        )
    )
    records = parse(capture_records(SCAN_PCAP))[:300]
    sensor, flows = sniffer_stand_in(etcd_server, etcd_prefix, tmp_path / "s", "sensor-b")
    rag = spawn_mld(["rag", "run", "--config", str(config)], tmp_path / "rag.log")
    fw = spawn_mld(["firewall", "run", "--config", str(fw_config)], tmp_path / "fw.log")
    det = spawn_mld(["detector", "run", "--config", str(det_config)], tmp_path / "det.log")
    try:
        sensor.start()
        sensor.announce()
        deadline = time.monotonic() + 60
        seq = 0
        next_send = 0.0
        while _blocks(db) < 1 and time.monotonic() < deadline:
            state = sensor.poll()
            if state is not None:
                flows.update(state.peers.get("detector", {}).values())
            # Each service finds the next through etcd in its own time: verdicts the
            # detector makes before it knows the firewall (or decisions before the agent
            # knows the store) are dropped, as they should be. So the scan is sent again
            # every second until a decision is stored (at most 60 batches of 300).
            if flows.instances and time.monotonic() >= next_send:
                flows.send(FlowBatch(sensor_id="sensor-b", batch_seq=seq, records=records))
                seq += 1
                next_send = time.monotonic() + 1.0
            time.sleep(0.2)
        logs = "".join(
            f"\n{name} log:\n{(tmp_path / f'{name}.log').read_text()}"
            for name in ("det", "fw", "rag")
        )
        assert _blocks(db) >= 1, logs
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            agent, addr, outcome = con.execute("SELECT agent, addr, outcome FROM blocks").fetchone()
        finally:
            con.close()
        assert (agent, addr, outcome) == ("fw-1", "172.31.15.102", "dry_run"), logs
    finally:
        stop(det)
        stop(fw)
        stop(rag)
        flows.close()
        sensor.close()
