"""The scoring service on real sockets, real keys and real compiled forests: FlowBatches
of a real capture in, verdicts to the firewall and scored events to the RAG store out."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

from crypto_transport import KeyPair, Sender, TransportConfig
from crypto_transport.curve import curve_client
from crypto_transport.frame import seal
from detector.bundle import load_bundle
from detector.cli import register_detect
from detector.config import (
    DetectorConfig,
    EventsOutput,
    ListenConfig,
    ThresholdsConfig,
    VerdictsOutput,
)
from detector.features import columns_from_records, feature_matrix
from detector.raised import RaisedFlows
from detector.scoring import Scorer
from detector.service import DetectorService
from detector.verdicts import flow_ref
from proto.events_pb2 import LABEL_MALICIOUS, LABEL_SUSPICIOUS, FlowBatch, FlowRecord
from proto.flowpack import FLAG_BITS, PACKED_DTYPE, pack_batch, to_records
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    ANY_PORT,
    BENIGN_PCAP,
    DETECTOR,
    FIREWALL,
    RAG,
    SCAN_PCAP,
    SENSOR,
    SENSOR2,
    Harness,
    Keys,
    capture_packed,
    capture_records,
    collect,
    events_of,
    parse,
)
from tests.support import REPO, wait_for


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    """A port scan and some benign web traffic: malicious, suspicious and benign flows."""
    return capture_records(SCAN_PCAP, BENIGN_PCAP)


@pytest.fixture
def harness(tiny_bundle: TinyBundle) -> Iterator[Harness]:
    h = Harness(tiny_bundle.path, tiny_bundle.cache)
    try:
        yield h
    finally:
        h.close()


def flow_sender(harness: Harness, sender_id: str, key: str | None = None) -> Sender:
    """A sender of FlowBatches to the harness's detector, beside its publisher, that says it
    is ``sender_id`` and seals with the keys of node ``key`` (``sender_id``'s own by
    default): for frames the publisher would never send."""
    return Sender(
        pattern="push",
        endpoint=harness.listen,
        channel="flows",
        sender_id=sender_id,
        keyring=harness.keys.ring(key or sender_id, DETECTOR),
        recipients=[DETECTOR],
        settings=harness.settings,
        context=harness.ctx,
    )


def test_every_record_is_scored_once_and_malicious_ones_reach_the_firewall(
    harness: Harness, tiny_bundle: TinyBundle, records: list[bytes]
) -> None:
    harness.start()
    publisher = harness.publisher()
    publisher.add(records)
    publisher.flush()
    n = len(records)
    event_batches = collect(harness.rag, lambda got: len(events_of(got)) >= n)
    events = events_of(event_batches)
    # The counters move just after the send: wait for the last one.
    wait_for(lambda: harness.service.stats().get("events_sent") == n, 5, "counters")
    stats = harness.service.stats()

    # One ScoredEvent per record, the record unchanged, in order.
    assert [e.record.SerializeToString() for e in events] == records
    assert [b.batch_seq for b in event_batches] == list(range(len(event_batches)))
    assert all(b.detector_id == DETECTOR for b in event_batches)
    assert all(e.sensor_id == SENSOR for e in events)

    # The verdicts equal the Scorer run directly on the same rows.
    rows = parse(records)
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    expected = Scorer(bundle, ThresholdsConfig(), 5).score(
        feature_matrix(columns_from_records(rows)),
        [r.fast_score for r in rows],
        [r.fast_rule for r in rows],
    )
    verdicts = [e.verdict for e in events]
    got_final = np.array([v.final_score for v in verdicts], dtype=np.float32)
    np.testing.assert_array_equal(got_final, expected.final_score)
    np.testing.assert_array_equal([v.ml_score for v in verdicts], expected.ml_score)
    np.testing.assert_array_equal([v.fast_score for v in verdicts], expected.fast_score)
    np.testing.assert_array_equal(
        [[f.score for f in v.family_scores] for v in verdicts], expected.family_scores
    )
    assert [[f.family for f in v.family_scores] for v in verdicts] == [list(expected.families)] * n
    assert [v.label for v in verdicts] == expected.label.tolist()
    assert [v.family for v in verdicts] == expected.family
    assert [v.ml_family for v in verdicts] == expected.ml_family
    assert [v.fast_rule for v in verdicts] == expected.fast_rule
    assert [[(f.name, f.value, f.weight) for f in v.top_features] for v in verdicts] == [
        [(name, float(np.float32(value)), float(np.float32(w))) for name, value, w in top]
        for top in expected.top_features
    ]
    assert {v.model_version for v in verdicts} == {bundle.version}
    assert [v.flow for v in verdicts] == [flow_ref(r, SENSOR) for r in rows]
    assert len({v.verdict_id for v in verdicts}) == n
    assert all(v.verdict_id.startswith(f"{DETECTOR}-") for v in verdicts)
    assert all(v.scored_ts_ns > 0 for v in verdicts)
    labels = Counter(expected.label.tolist())
    assert len(labels) >= 2, "the capture should give more than one label"

    # The firewall gets exactly the malicious verdicts.
    malicious = labels[LABEL_MALICIOUS]
    assert malicious > 0
    verdict_batches = collect(
        harness.firewall, lambda got: sum(len(b.verdicts) for b in got) >= malicious
    )
    sent = [v for b in verdict_batches for v in b.verdicts]
    assert harness.firewall.recv(timeout_ms=200) is None
    assert sent == [v for v in verdicts if v.label == LABEL_MALICIOUS]
    assert [b.batch_seq for b in verdict_batches] == list(range(len(verdict_batches)))

    assert stats["batches_in"] == publisher.batches_sent == -(-n // 100)
    assert stats["records_in"] == stats["events_out"] == stats["events_sent"] == n
    assert stats["verdicts_out"] == stats["verdicts_sent"] == malicious
    assert stats["labels.malicious"] == malicious
    assert sum(v for k, v in stats.items() if k.startswith("labels.")) == n
    assert stats["reloads"] == 0 and stats["reload_refused"] == 0
    assert not any(k.startswith("rejected.") for k in stats)
    assert stats["handle_ms_max"] > 0
    publisher.sender.close()


def test_frames_sealed_with_a_wrong_key_are_rejected_counted_and_serving_goes_on(
    harness: Harness, records: list[bytes]
) -> None:
    harness.start()
    batch = FlowBatch(sensor_id=SENSOR, batch_seq=0, records=parse(records[:10]))
    payload = batch.SerializeToString()
    good_key = harness.keys.ring(SENSOR, DETECTOR).sending_key(DETECTOR)
    # A socket holding the sensor's connection credentials (CURVE), so its frame meets
    # the frame checks.
    raw = harness.ctx.socket(zmq.PUSH)
    sensor_pair = harness.keys.pairs[SENSOR]
    curve_client(
        raw,
        public=sensor_pair.public,
        secret=sensor_pair.private,
        server_public=harness.keys.pairs[DETECTOR].public,
    )
    harness.keys.pairs["intruder"] = KeyPair.generate()
    intruder = flow_sender(harness, SENSOR, key="intruder")
    publisher = harness.publisher()
    try:
        raw.connect(harness.listen)
        # The sensor's key id with another key: fails authentication. Its sequence number
        # is above any real one, so it is judged by its tag even when the good batch (from
        # another socket) reaches the detector first; otherwise it would count as a replay.
        raw.send(seal(payload, key=os.urandom(32), key_id=good_key.key_id, seq=1 << 62,
                      channel=b"flows", sender_id=SENSOR.encode()))  # fmt: skip
        # A node the detector does not know, claiming to be the sensor: its connection
        # is refused (CURVE), so its frames never reach the frame checks.
        intruder.send(batch)
        publisher.add(records[:10])
        publisher.flush()
        events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= 10))
        # Three sockets reach the PULL in any order: wait for both refusals.
        wait_for(
            lambda: (
                harness.service.stats().get("refused_connections", 0) >= 1
                and harness.service.stats().get("rejected.bad_tag") == 1
            ),
            5,
            "both refusals",
        )
        stats = harness.service.stats()
        assert len(events) == 10 and harness.rag.recv(timeout_ms=200) is None
        assert stats["batches_in"] == 1 and stats["records_in"] == 10
        assert "rejected.unknown_key" not in stats
    finally:
        raw.close(linger=0)
        intruder.close()
        publisher.sender.close()


def test_packed_batches_are_scored_as_the_repeated_records_are(
    harness: Harness, tiny_bundle: TinyBundle, records: list[bytes]
) -> None:
    """The live sniffer sends packed rows (proto/flowpack.py): the detector gives them the
    verdicts and events the same records get as repeated messages."""
    harness.start()
    publisher = harness.publisher()
    for packed in capture_packed(SCAN_PCAP, BENIGN_PCAP):
        publisher.add_packed(packed)
    publisher.flush()
    n = len(records)
    events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= n))
    rows = parse(records)
    assert [e.record for e in events] == rows
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    expected = Scorer(bundle, ThresholdsConfig(), 5).score(
        feature_matrix(columns_from_records(rows)),
        [r.fast_score for r in rows],
        [r.fast_rule for r in rows],
    )
    verdicts = [e.verdict for e in events]
    np.testing.assert_array_equal(
        np.array([v.final_score for v in verdicts], dtype=np.float32), expected.final_score
    )
    assert [v.label for v in verdicts] == expected.label.tolist()
    assert [v.fast_rule for v in verdicts] == expected.fast_rule
    assert [v.flow for v in verdicts] == [flow_ref(r, SENSOR) for r in rows]
    assert [v.src_verified for v in verdicts] == [r.src_verified for r in rows]
    malicious = [v for v in verdicts if v.label == LABEL_MALICIOUS]
    assert malicious
    want = len(malicious)
    sent = collect(harness.firewall, lambda got: sum(len(b.verdicts) for b in got) >= want)
    assert [v for b in sent for v in b.verdicts] == malicious
    publisher.sender.close()


def test_packed_rows_of_an_unknown_layout_are_refused_counted_and_serving_goes_on(
    harness: Harness, records: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: a peer holding a sniffer's key sends packed batches this detector cannot
    read: another layout, and rows of the right layout whose end_reason (an enum, int32
    on the wire) is 2**32 - 1. The second one, before the check in proto.flowpack, raised
    ValueError while the detector built the FlowRecords of its events and ended the
    service. Both must be refused, counted and logged, and the next batch scored."""
    harness.start()
    sender = flow_sender(harness, SENSOR)
    publisher = harness.publisher()
    try:
        future = FlowBatch(sensor_id=SENSOR, packed_layout=9, packed_records=b"\0" * 64)
        assert sender.send(future)
        rows = np.zeros(3, dtype=PACKED_DTYPE)
        rows["end_reason"] = [1, 2**32 - 1, 1]
        rows["ip_version"] = 4
        assert sender.send_payload(pack_batch(FlowBatch(sensor_id=SENSOR), rows, [""]))
        wait_for(lambda: harness.service.stats()["batches_refused_packed"] == 2, 5, "the refusals")
        publisher.add(records[:10])
        publisher.flush()
        events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= 10))
        assert len(events) == 10
        stats = harness.service.stats()
        assert stats["batches_in"] == 1 and stats["records_in"] == 10
        assert any("refused a flow batch from sensor-1" in r.getMessage() for r in caplog.records)
    finally:
        sender.close()
        publisher.sender.close()


def test_a_batch_claiming_another_sensor_is_credited_to_its_real_sender(
    harness: Harness, records: list[bytes]
) -> None:
    """Attack: a sensor the detector knows (sensor-2, a real sniffer key) sends a port
    scan in a batch whose payload says ``sensor_id: sensor-1``, to pin its own scan on
    another sensor (whose segment an operator would then isolate) and hide its own.
    Before the fix the detector credited the verdicts and events to the payload's
    sensor_id; now they name the authenticated sender and the claim is counted."""
    harness.start()
    sender = flow_sender(harness, SENSOR2)
    try:
        rows = parse(records)
        assert sender.send(FlowBatch(sensor_id=SENSOR, batch_seq=0, records=rows))
        events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= len(rows)))
        verdicts = [v for b in collect(harness.firewall, lambda got: bool(got)) for v in b.verdicts]
        assert len(events) == len(rows)
        assert {e.sensor_id for e in events} == {SENSOR2}
        assert verdicts, "the scan gave no verdict to check"
        assert {v.flow.sensor_id for v in verdicts} == {SENSOR2}
        wait_for(
            lambda: harness.service.stats().get("sensor_id_mismatch") == 1, 5, "the mismatch count"
        )
    finally:
        sender.close()


def test_a_sensor_id_under_the_sender_is_kept_as_its_label(
    harness: Harness, records: list[bytes]
) -> None:
    """A sniffer may label its batches ``<its id>/<capture point>``: kept as it is."""
    harness.start()
    sender = flow_sender(harness, SENSOR)
    try:
        label = f"{SENSOR}/eth1"
        assert sender.send(FlowBatch(sensor_id=label, records=parse(records[:5])))
        events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= 5))
        assert {e.sensor_id for e in events} == {label}
        assert "sensor_id_mismatch" not in harness.service.stats()
    finally:
        sender.close()


def test_disabled_outputs_are_counted_only(tiny_bundle: TinyBundle, records: list[bytes]) -> None:
    h = Harness(tiny_bundle.path, tiny_bundle.cache, verdicts=False, events=False)
    try:
        assert h.service.verdict_sender is None and h.service.event_sender is None
        h.start(max_batches=3)
        publisher = h.publisher()
        publisher.add(records[:300])
        publisher.flush()
        wait_for(lambda: h._thread is not None and not h._thread.is_alive(), 10, "3 batches")
        stats = h.service.stats()
        assert stats["records_in"] == stats["events_out"] == 300
        assert stats["verdicts_out"] == stats["labels.malicious"] > 0
        assert "events_sent" not in stats and "verdicts_sent" not in stats
        assert h.rag.recv(timeout_ms=100) is None and h.firewall.recv(timeout_ms=100) is None
        publisher.sender.close()
    finally:
        h.close()


def test_stop_scores_the_batches_already_received(harness: Harness, records: list[bytes]) -> None:
    publisher = harness.publisher()
    publisher.add(records[:500])  # five batches, queued before the loop runs
    publisher.flush()
    sock = harness.service.receiver._sock
    wait_for(lambda: sock.poll(0, zmq.POLLIN), 5, "the first batch")
    harness.service.request_stop()  # stop asked before the loop even starts
    harness.service.run()
    events = events_of(collect(harness.rag, lambda got: len(events_of(got)) >= 500))
    assert len(events) == 500
    assert harness.service.stats()["batches_in"] == 5
    publisher.sender.close()


# ---------------------------------------------------------------------------------- CLI


def _fresh_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for flag in ("--json",):
        common.add_argument(flag, action="store_true")
    common.add_argument("--config")
    parser = argparse.ArgumentParser(prog="mld")
    register_detect(parser.add_subparsers(dest="command"), common)
    return parser


def _mld_command() -> list[str]:
    """The installed ``mld`` entry point."""
    return [str(REPO / ".venv" / "bin" / "mld")]


def test_register_detect_adds_the_subcommand_with_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _fresh_parser().parse_args(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "mld detector run --bundle" in out and "--no-events" in out
    args = _fresh_parser().parse_args(
        ["run", "--listen", "tcp://127.0.0.1:1", "--no-verdicts", "--max-batches", "2"]
    )
    assert args.listen == "tcp://127.0.0.1:1" and args.no_verdicts and args.max_batches == 2
    with pytest.raises(SystemExit):
        _fresh_parser().parse_args(["run", "--verdicts", "tcp://x:1", "--no-verdicts"])


def test_mld_detect_help_runs() -> None:
    done = subprocess.run(
        [*_mld_command(), "detector", "run", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout


def test_mld_detect_runs_and_stops_cleanly_on_sigterm(
    tmp_path: Path, tiny_bundle: TinyBundle, records: list[bytes]
) -> None:
    h = Harness(tiny_bundle.path, tiny_bundle.cache)  # keys, firewall and RAG receivers
    h.service.close()  # the real one is the subprocess below
    try:
        key_file = tmp_path / "det.key"
        h.keys.pairs[DETECTOR].save(key_file)
        peers = {n: h.keys.pairs[n].public_b64 for n in (SENSOR, FIREWALL, RAG)}
        with socket_port() as port:
            listen = f"tcp://127.0.0.1:{port}"
        config = {
            "node": {"id": DETECTOR, "state_dir": str(tmp_path / "state")},
            "transport": {"key_file": str(key_file), "peers": peers},
            "detector": {
                "bundle_dir": str(tiny_bundle.path),
                "model_cache_dir": str(tiny_bundle.cache),
                "listen": {"endpoint": listen},
                # channel and recipients too: a partial section does not keep the
                # defaults of _verdicts_out/_events_out (reported to the lead)
                "verdicts": {
                    "endpoint": h.config.verdicts.endpoint,
                    "channel": "verdicts",
                    "recipients": [FIREWALL],
                },
                "events": {
                    "endpoint": h.config.events.endpoint,
                    "channel": "events",
                    "recipients": [RAG],
                },
            },
        }
        cfg_file = tmp_path / "mld.yaml"
        cfg_file.write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [*_mld_command(), "detector", "run", "--config", str(cfg_file), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        try:
            h.listen = listen
            publisher = h.publisher()
            publisher.add(records[:200])
            publisher.flush()
            events = events_of(collect(h.rag, lambda got: len(events_of(got)) >= 200, 30000))
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            assert len(events) == 200, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "SIGTERM" in err and "detector finished" in err
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["records_in"] == stats["events_sent"] == 200
        publisher.sender.close()
    finally:
        h.firewall.close()
        h.rag.close()
        h.ctx.destroy(linger=0)  # closes sockets a failed assertion left open


class socket_port:
    """A free TCP port on 127.0.0.1 (closed again on exit, for a subprocess to bind)."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        port: int = self._s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._s.close()


def test_alerts_are_written_as_eve_json_lines_and_survive_a_rotation(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    """The detector's EVE alert log: one line per suspicious or malicious verdict, with
    the fields log shippers expect, reopened after logrotate moves it (the schema itself:
    tests/detector/test_eve.py)."""
    eve = tmp_path / "log" / "eve.json"
    records = parse(capture_records(SCAN_PCAP))
    cfg = DetectorConfig(
        bundle_dir=str(tiny_bundle.path),
        model_cache_dir=str(tmp_path / "cache"),
        reload_interval_s=0,
        eve_log=str(eve),
        listen=ListenConfig(endpoint=ANY_PORT),
        verdicts=VerdictsOutput(enabled=False),
        events=EventsOutput(enabled=False),
    )
    service = DetectorService.from_config(
        cfg, TransportConfig(), Keys().ring(DETECTOR, SENSOR), DETECTOR, state_dir=str(tmp_path)
    )
    try:
        service.handle(FlowBatch(sensor_id=SENSOR, records=records[:200]), SENSOR)
        lines = [json.loads(line) for line in eve.read_text().splitlines()]
        alerts = service.counters["eve_alerts"]
        labelled = service.counters["labels.suspicious"] + service.counters["labels.malicious"]
        assert len(lines) == alerts == labelled > 0
        first = lines[0]
        assert first["event_type"] == "alert" and first["proto"] == "TCP"
        assert first["src_ip"] == "172.31.15.102" and isinstance(first["dest_port"], int)
        assert first["alert"]["severity"] in (1, 2) and first["alert"]["category"]
        assert set(first["alert"]["metadata"]) >= {
            "ml_family",
            "ml_family_scores",
            "ml_top_features",
            "ml_final_score",
        }
        assert first["timestamp"].endswith("+0000") and first["flow"]["pkts_toserver"] >= 1
        # logrotate (no copytruncate): the file is moved away; the next batch opens a new one.
        eve.rename(eve.with_suffix(".1"))
        assert service.eve is not None
        service.eve._next_check = 0.0  # the once-a-second check, due now
        service.handle(FlowBatch(sensor_id=SENSOR, records=records[200:400]), SENSOR)
        assert eve.exists() and len(eve.read_text().splitlines()) > 0
    finally:
        service.close()


def test_a_flow_scored_again_by_interim_records_alerts_and_blocks_once(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    """Issue 18: a long flow is scored at each interim record and at its end. A malicious
    flow sent as two interim records and its final record (one flow_id) reaches the firewall
    once and is alerted once; all three records reach the RAG store. A flow that was
    suspicious and turns malicious alerts again (now it blocks)."""
    records = parse(capture_records(SCAN_PCAP))
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    labels = (
        Scorer(bundle, ThresholdsConfig(), 5)
        .score(
            feature_matrix(columns_from_records(records)),
            [r.fast_score for r in records],
            [r.fast_rule for r in records],
        )
        .label.tolist()
    )
    bad = records[labels.index(LABEL_MALICIOUS)]
    copies = []
    for interim in (True, True, False):
        r = FlowRecord()
        r.CopyFrom(bad)
        r.interim = interim
        copies.append(r)
    eve = tmp_path / "eve.json"
    cfg = DetectorConfig(
        bundle_dir=str(tiny_bundle.path),
        model_cache_dir=str(tmp_path / "cache"),
        reload_interval_s=0,
        eve_log=str(eve),
        listen=ListenConfig(endpoint=ANY_PORT),
        verdicts=VerdictsOutput(enabled=False),
        events=EventsOutput(enabled=False),
    )
    service = DetectorService.from_config(
        cfg, TransportConfig(), Keys().ring(DETECTOR, SENSOR), DETECTOR
    )
    try:
        service.handle(FlowBatch(sensor_id=SENSOR, records=copies[:2]), SENSOR)
        service.handle(FlowBatch(sensor_id=SENSOR, records=copies[2:]), SENSOR)
        stats = service.stats()
        assert stats["labels.malicious"] == 3 and stats["events_out"] == 3
        assert stats["verdicts_out"] == 1 and stats["eve_alerts"] == 1
        assert stats["interim_in"] == 2 and stats["raised_repeats"] == 2
        assert stats["raised_flows"] == 0, "the final record forgets the flow"
        alerts = [json.loads(line) for line in eve.read_text().splitlines()]
        assert len(alerts) == 1 and alerts[0]["flow_id"] == bad.flow_id
        # The same flow from another sensor is another flow.
        service.handle(FlowBatch(sensor_id="sensor-2", records=copies[:1]), "sensor-2")
        assert service.stats()["verdicts_out"] == 2
    finally:
        service.close()

    raised = RaisedFlows(max_flows=2)
    r = FlowRecord(flow_id=7, interim=True)
    assert raised.select([r, r, r], [LABEL_SUSPICIOUS, LABEL_SUSPICIOUS, LABEL_MALICIOUS], "s") == [
        True,
        False,
        True,
    ]
    for fid in (8, 9, 10):  # past max_flows the least recently raised is forgotten
        raised.select([FlowRecord(flow_id=fid, interim=True)], [LABEL_MALICIOUS], "s")
    assert len(raised) == 2 and raised.evicted == 2


@pytest.mark.parametrize("eve_on", [True, False], ids=["eve", "verdicts-only"])
def test_packed_interim_rows_alert_and_block_once_per_flow(
    tiny_bundle: TinyBundle, tmp_path: Path, eve_on: bool
) -> None:
    """Issue 18 over issue 20's packed rows (what the live sniffer sends): a malicious flow
    as two interim rows and its final row reaches the firewall once (and EVE once). With
    EVE on every row gets its verdict; with nothing reading events only the rows for the
    firewall do (from flow keys), and the flow still blocks once. Before the interim flag
    bit (packed layout 1) every row read as its flow's final record: each one blocked."""
    bundle = load_bundle(tiny_bundle.path, tiny_bundle.cache)
    scorer = Scorer(bundle, ThresholdsConfig(), 5)
    for part in capture_packed(SCAN_PCAP):
        recs = to_records(part.rows, part.strings)
        labels = scorer.score(
            feature_matrix(columns_from_records(recs)),
            [r.fast_score for r in recs],
            [r.fast_rule for r in recs],
        ).label
        hit = np.flatnonzero(labels == LABEL_MALICIOUS)
        if len(hit):
            break
    else:
        pytest.fail("no malicious row in the scan capture")
    rows = np.concatenate([part.rows[hit[:1]]] * 3)
    rows["flags"][:2] |= FLAG_BITS["interim"]
    rows["end_reason"][:2] = 0
    eve = tmp_path / "eve.json"
    cfg = DetectorConfig(
        bundle_dir=str(tiny_bundle.path),
        model_cache_dir=str(tmp_path / "cache"),
        reload_interval_s=0,
        eve_log=str(eve) if eve_on else "",
        listen=ListenConfig(endpoint=ANY_PORT),
        verdicts=VerdictsOutput(enabled=False),
        events=EventsOutput(enabled=False),
    )
    service = DetectorService.from_config(
        cfg, TransportConfig(), Keys().ring(DETECTOR, SENSOR), DETECTOR
    )

    def packed(part_rows: np.ndarray) -> FlowBatch:
        return FlowBatch.FromString(
            pack_batch(FlowBatch(sensor_id=SENSOR), part_rows, part.strings)
        )

    try:
        service.handle(packed(rows[:2]), SENSOR)
        service.handle(packed(rows[2:]), SENSOR)
        stats = service.stats()
        assert stats["records_in"] == 3 and stats["labels.malicious"] == 3
        assert stats["verdicts_out"] == 1, "one block per flow"
        assert stats["interim_in"] == 2 and stats["raised_repeats"] == 2
        assert stats["raised_flows"] == 0, "the final row forgets the flow"
        if eve_on:
            alerts = [json.loads(line) for line in eve.read_text().splitlines()]
            assert len(alerts) == 1 and stats["eve_alerts"] == 1
            assert alerts[0]["flow_id"] == int(rows["flow_id"][0])
    finally:
        service.close()
