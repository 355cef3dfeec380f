"""Flow records per second through the live path: sniffer -> encrypted transport -> detector
-> verdicts to a firewall receiver, the real classes in three processes on this machine.

The capture (--capture, default build/bench/mixed-50k.pcap, made by bench/make_capture.py
when missing) is read once through the native flow engine (sniffer.sources.PcapSource, the
engine the offline path and the XDP program share). Its flow-event arrays are then replayed
by the *sniffer* process, round after round with the timestamps moved on by the capture's
span each round (so the source windows see time go forward), until --records records were
made. The sniffer process runs the real service loop (``SnifferService.run``) over them:
``FlowPipeline.process`` (columns, source context, verified sources, fast rules, the
records as the service sends them) and ``FlowPublisher`` (batches of
``transport.batch_records``, LZ4, AEAD, CURVE, PUSH).

The *detector* process runs ``DetectorService.handle`` on every batch its real encrypted
Receiver accepts (decode, features, forests of the shipped bundle, max(fast, ml), verdicts,
EVE off, events output off unless --events) and sends the MALICIOUS verdicts, sealed, to
the *firewall receiver* (a Receiver of VerdictBatch in the main process that opens and
counts them; with --events a Receiver of EventBatch beside it takes every scored event).

Figures (one run; --quick is a smoke run with few records):

  pipeline_rps   records the detector scored / time from its first to its last batch
  p50_ms p99_ms  per-record latency: from the moment the sniffer closed the record's batch
                 (FlowBatch.sent_ts_ns) to the moment the detector had sent that batch's
                 verdicts (same host, same clock); each record counts once. A record also
                 waits in the sniffer's batcher before that, at most
                 transport.batch_max_delay_s: batch_wait_p50_ms and _p99_ms.
                 Unpaced (the default) the sniffer outruns the detector and the queues
                 between them fill: the latency is then the queues' length. --rate N
                 feeds the sniffer N records/s, for the latency at a rate it keeps up with.
  sniffer_rps    records the sniffer made and sent / its time (pipeline + publisher)
  score_only_rps the baseline, measured in the same run (in the main process, before the
                 services start): the detector's handle() on already decoded batches of
                 the sniffer's output, no transport
  ratio_score_only  pipeline_rps / score_only_rps
  dropped        records lost anywhere (publisher send timeouts, detector outputs, the
                 detector's events queue when the RAG receiver falls behind)
  verdicts       verdicts the firewall receiver opened
  events         scored events a RAG receiver opened (--events: every record, as the
                 default config sends them; off by default, 0)
  sniffer_cpu_us detector_cpu_us
                 CPU time of the sniffer's and the detector's process per record (every
                 thread: the service loop, ZeroMQ's I/O thread with CURVE, the events
                 thread), over the same span as sniffer_rps and pipeline_rps. On a machine
                 shared with other jobs the rates follow the load; these follow the code:
                 1e6 / the larger one is what the two services would do with a core each.
  batch_wait_p50_ms batch_wait_p99_ms
                 how long records waited in the sniffer's publisher for their batch to
                 leave (from their rows being queued to the batch being sent): the cost
                 of a bigger transport.batch_records in time to detection, at most
                 transport.batch_max_delay_s plus one turn of the service loop. Add it
                 to p50_ms/p99_ms for the whole way from the sniffer to the verdicts.

    .venv/bin/python bench/pipeline.py               # ~1M records
    .venv/bin/python bench/pipeline.py --events      # and every scored event to a RAG receiver
    .venv/bin/python bench/pipeline.py --quick       # smoke run
    .venv/bin/python bench/pipeline.py --rate 30000  # latency at a rate below capacity

Last line: ``pipeline_rps=N p50_ms=N p99_ms=N`` then the other keys above.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for bench.common
from bench.common import REPO

DEFAULT_CAPTURE = REPO / "build" / "bench" / "mixed-50k.pcap"
SENSOR, DETECTOR, FIREWALL, RAG = "sensor-bench", "detector-bench", "firewall-bench", "rag-bench"
_TS_FIELDS = ("first_ts_ns", "last_ts_ns")


def _keyrings(grace_s: float) -> dict[str, Any]:
    """One key pair per service; each keyring knows the peers it talks to and their role."""
    from crypto_transport import KeyPair, Keyring

    pairs = {name: KeyPair.generate() for name in (SENSOR, DETECTOR, FIREWALL, RAG)}
    talks = {
        SENSOR: (DETECTOR,),
        DETECTOR: (SENSOR, FIREWALL, RAG),
        FIREWALL: (DETECTOR,),
        RAG: (DETECTOR,),
    }
    roles = {SENSOR: ["sniffer"], DETECTOR: ["detector"], FIREWALL: ["firewall"], RAG: ["rag"]}
    rings = {}
    for name, peers in talks.items():
        ring = Keyring(pairs[name], grace_s=grace_s)
        for peer in peers:
            ring.add_peer(peer, pairs[peer].public, roles=roles[peer])
        rings[name] = ring
    return rings


def read_capture(path: Path) -> tuple[list[Any], str, float, int]:
    """Flow-event arrays of ``path`` through the native engine, its name, the engine's time
    and the capture's span in ns (first to last flow timestamp)."""
    from sniffer.config import CaptureConfig
    from sniffer.sources import PcapSource

    t0 = time.perf_counter()
    source = PcapSource([path], CaptureConfig())
    arrays = [ev.copy() for ev, _ in source.batches()]
    arrays += [ev.copy() for ev, _ in source.flush()]
    took = time.perf_counter() - t0
    arrays = [a for a in arrays if len(a)]
    first = min(int(a["first_ts_ns"].min()) for a in arrays)
    last = max(int(a["last_ts_ns"].max()) for a in arrays)
    return arrays, path.name, took, last - first + 1_000_000_000


def _replay(arrays: list[Any], span_ns: int, records: int) -> Any:
    """Event arrays, round after round with timestamps moved on, until ``records``."""
    made = 0
    rnd = 0
    while made < records:
        for events in arrays:
            if made >= records:
                return
            ev = events[: records - made].copy()
            for name in _TS_FIELDS:
                ev[name] += np.uint64(rnd * span_ns)
            made += len(ev)
            yield ev
        rnd += 1


def sniffer_proc(
    arrays: list[Any],
    obs: str,
    span_ns: int,
    records: int,
    endpoint: str,
    rings: dict[str, Any],
    settings: Any,
    out: Connection,
    rate: float = 0.0,
) -> None:
    from crypto_transport import Sender
    from sniffer.config import PublishConfig, SnifferConfig
    from sniffer.pipeline import FlowPipeline
    from sniffer.publisher import FlowPublisher
    from sniffer.service import SnifferService

    replays = list(_replay(arrays, span_ns, records))  # prepared before the clock starts
    if rate:  # arrays of ~10 ms of records each, so the pace is smooth
        step = max(100, int(rate / 100))
        replays = [ev[i : i + step] for ev in replays for i in range(0, len(ev), step)]
    sender = Sender(
        pattern="push",
        endpoint=endpoint,
        channel="flows",
        sender_id=SENSOR,
        keyring=rings[SENSOR],
        recipients=[DETECTOR],
        settings=settings,
        bind=False,
    )

    class WaitTimed(FlowPublisher):
        """The publisher, noting how long each record waited in it for its batch: the
        time from its rows being queued (add_packed) to their batch being sent."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.queued: collections.deque[list[Any]] = collections.deque()
            self.waits: list[tuple[float, int]] = []  # (ms, records)

        def add_packed(self, packed: Any) -> None:
            if len(packed):
                self.queued.append([time.perf_counter(), len(packed)])
            super().add_packed(packed)

        def _deliver(self, payload: bytes, n: int) -> None:
            now, left = time.perf_counter(), n
            while left and self.queued:  # batches take the oldest rows first
                part = self.queued[0]
                take = min(left, part[1])
                self.waits.append((1e3 * (now - part[0]), take))
                part[1] -= take
                left -= take
                if not part[1]:
                    self.queued.popleft()
            super()._deliver(payload, n)

    publisher = WaitTimed(
        publish=PublishConfig(),
        transport=settings,
        keyring=rings[SENSOR],
        sensor_id=SENSOR,
        sender=sender,
    )
    service = SnifferService(_Replay(replays, obs, rate), FlowPipeline(SnifferConfig()), publisher)
    out.send("ready")
    out.recv()  # go
    t0, cpu0 = time.perf_counter(), time.process_time()
    service.run()
    took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.send((service.pipeline.records, took, publisher.stats(), cpu, publisher.waits))
    out.recv()  # the detector has everything: closing now loses no queued frame
    publisher.close()


class _Replay:
    """A FlowSource (sniffer.sources) over prepared event arrays; with ``rate``, each array
    is handed over when the records before it have taken their time at that rate."""

    def __init__(self, arrays: list[Any], obs: str, rate: float = 0.0) -> None:
        self.arrays = arrays
        self.obs = obs
        self.rate = rate

    def batches(self) -> Any:
        start = time.perf_counter()
        made = 0
        for events in self.arrays:
            if self.rate:
                wait = start + made / self.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # pacing a load generator, not waiting for an event
            made += len(events)
            yield events, self.obs

    def flush(self) -> list[Any]:
        return []

    def stats(self) -> dict[str, int]:
        return {"arrays": len(self.arrays)}

    def close(self) -> None:
        pass


def _scorer() -> Any:
    from detector.bundle import load_bundle
    from detector.config import DetectorConfig
    from detector.scoring import Scorer

    cfg = DetectorConfig()
    return cfg, Scorer(load_bundle(), cfg.thresholds, cfg.top_features)


def detector_proc(
    listen: str,
    verdicts: str,
    events: str | None,
    rings: dict[str, Any],
    settings: Any,
    out: Connection,
) -> None:
    import zmq

    from crypto_transport import Receiver, Sender
    from detector.service import DetectorService
    from proto.events_pb2 import FlowBatch

    cfg, scorer = _scorer()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    receiver = Receiver(
        pattern="pull",
        endpoint=listen,
        channel="flows",
        keyring=rings[DETECTOR],
        message_type=FlowBatch,
        settings=settings,
        bind=True,
        context=context,
    )
    sender = Sender(
        pattern="push",
        endpoint=verdicts,
        channel="verdicts",
        sender_id=DETECTOR,
        keyring=rings[DETECTOR],
        recipients=[FIREWALL],
        settings=settings,
        bind=False,
        context=context,
    )
    event_sender = None
    if events is not None:
        event_sender = Sender(
            pattern="push",
            endpoint=events,
            channel="events",
            sender_id=DETECTOR,
            keyring=rings[DETECTOR],
            recipients=[RAG],
            settings=settings,
            bind=False,
            context=context,
        )
    service = DetectorService(
        cfg,
        scorer,
        receiver,
        detector_id=DETECTOR,
        verdict_sender=sender,
        event_sender=event_sender,
        context=context,
        stats_interval_s=3600.0,
    )
    out.send("ready")
    lat_ms: list[float] = []
    counts: list[int] = []
    first = last = 0.0
    cpu_first = cpu_last = 0.0
    expected: int | None = None
    while expected is None or service.counters["records_in"] < expected:
        if out.poll():
            expected = out.recv()
            continue
        got = receiver.recv(timeout_ms=100)
        if got is None:
            if expected is not None:  # the sniffer is done and nothing more arrives
                break
            continue
        before = service.counters["records_in"]
        if not first:
            cpu_first = time.process_time()
        service.handle(got.message, got.peer_id)
        now = time.perf_counter()
        cpu_last = time.process_time()
        lat_ms.append((time.time_ns() - got.message.sent_ts_ns) / 1e6)
        counts.append(service.counters["records_in"] - before)
        if not first:
            first = now - 1e-9
        last = now
    stats = service.stats()
    out.send((service.counters["records_in"] - (counts[0] if counts else 0),
              last - first, lat_ms, counts, stats, cpu_last - cpu_first))  # fmt: skip
    service.close()


class _Serializing:
    """The baseline's outputs: what a Sender does first (serialize), then nothing."""

    endpoint = "none"

    def send(self, message: Any) -> bool:
        message.SerializeToString()
        return True

    def send_payload(self, payload: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


def score_only(
    arrays: list[Any], obs: str, span_ns: int, batch: int, records: int, events: bool
) -> float:
    """Records/s of DetectorService.handle alone on decoded batches (no transport); its
    verdicts (and events with ``events``) are serialized and thrown away."""
    from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
    from detector.service import DetectorService
    from proto.events_pb2 import FlowBatch
    from proto.flowpack import pack_batch
    from sniffer.config import SnifferConfig
    from sniffer.pipeline import FlowPipeline

    pipeline = FlowPipeline(SnifferConfig())
    parts = [pipeline.process(ev, obs, encode=False, pack=True).packed
             for ev in _replay(arrays, span_ns, records)]  # fmt: skip
    batches = []
    for part in parts:  # each with its own string table, as pack_records made it
        assert part is not None
        for i in range(0, len(part), batch):
            header = FlowBatch(sensor_id=SENSOR, batch_seq=len(batches))
            payload = pack_batch(header, part.rows[i : i + batch], part.strings)
            batches.append(FlowBatch.FromString(payload))
    n = sum(len(p) for p in parts if p is not None)
    cfg, scorer = _scorer()
    with tempfile.TemporaryDirectory(prefix="mld-bench-pipe-") as tmp:
        ring = Keyring(KeyPair.generate(), grace_s=1.0)
        rx: Receiver[FlowBatch] = Receiver(
            pattern="pull",
            endpoint=f"ipc://{tmp}/unused",
            channel="flows",
            keyring=ring,
            message_type=FlowBatch,
            settings=TransportConfig(curve=False),
            bind=True,
        )
        service = DetectorService(
            cfg,
            scorer,
            rx,
            detector_id=DETECTOR,
            verdict_sender=_Serializing(),  # type: ignore[arg-type]
            event_sender=_Serializing() if events else None,  # type: ignore[arg-type]
        )
        service.handle(batches[0], SENSOR)  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            service.handle(b, SENSOR)
        took = time.perf_counter() - t0
        service.close()
    return n / took


_cpu = time.thread_time


class _TimedScorer:
    """A Scorer whose score() adds up its thread's CPU time (``--stages``)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scorer, name)

    def score(self, *args: Any) -> Any:
        t0 = _cpu()
        try:
            return self.scorer.score(*args)
        finally:
            self.seconds += _cpu() - t0


class _Sealing:
    """An output that does what a Sender does before the socket (serialize, LZ4, AEAD)
    and adds up the time it took (``--stages``)."""

    endpoint = "none"

    def __init__(self, ring: Any, peer: str, channel: str) -> None:
        self.key = ring.sending_key(peer)
        self.channel = channel.encode()
        self.seconds = 0.0
        self.seq = 0

    def send(self, message: Any) -> bool:
        t0 = _cpu()
        payload = message.SerializeToString()
        self.seconds += _cpu() - t0
        return self.send_payload(payload)

    def send_payload(self, payload: bytes) -> bool:
        from crypto_transport.frame import seal

        t0 = _cpu()
        self.seq += 1
        seal(
            payload,
            key=self.key.key,
            key_id=self.key.key_id,
            seq=self.seq,
            channel=self.channel,
            sender_id=DETECTOR.encode(),
        )
        self.seconds += _cpu() - t0
        return True

    def close(self) -> None:
        pass


def stages(arrays: list[Any], obs: str, span_ns: int, batch: int, records: int) -> None:
    """µs per record of each stage of the live path, each timed alone in this process (no
    transport sockets, no other process): the profile behind the figures. Times are the
    CPU time of the thread doing the stage (time.thread_time), so other jobs on a shared
    machine inflate them less than they do wall time."""
    from crypto_transport import Receiver, TransportConfig
    from crypto_transport.frame import seal
    from detector.features import packed_feature_matrix
    from detector.service import DetectorService
    from proto.events_pb2 import FlowBatch
    from proto.flowpack import pack_batch, unpack_batch
    from sniffer.config import SnifferConfig
    from sniffer.pipeline import FlowPipeline

    replays = list(_replay(arrays, span_ns, records))
    n = sum(len(r) for r in replays)
    us: dict[str, float] = {}
    pipeline = FlowPipeline(SnifferConfig())
    t0 = _cpu()
    parts = [pipeline.process(ev, obs, encode=False, pack=True).packed for ev in replays]
    us["sniffer: FlowPipeline.process (columns, context, fast rules, pack)"] = _cpu() - t0
    rings = _keyrings(60.0)
    key = rings[SENSOR].sending_key(DETECTOR)
    payloads: list[bytes] = []
    t0 = _cpu()
    for part in parts:
        assert part is not None
        for i in range(0, len(part), batch):
            header = FlowBatch(sensor_id=SENSOR, batch_seq=len(payloads), sent_ts_ns=1)
            payloads.append(pack_batch(header, part.rows[i : i + batch], part.strings))
    us["transport: FlowBatch of packed rows serialized"] = _cpu() - t0
    t0 = _cpu()
    frames = [
        seal(p, key=key.key, key_id=key.key_id, seq=q + 1, channel=b"flows",
             sender_id=SENSOR.encode())
        for q, p in enumerate(payloads)
    ]  # fmt: skip
    us["transport: LZ4 + AEAD seal"] = _cpu() - t0
    with tempfile.TemporaryDirectory(prefix="mld-bench-pipe-") as tmp:
        rx: Receiver[FlowBatch] = Receiver(
            pattern="pull",
            endpoint=f"ipc://{tmp}/unused",
            channel="flows",
            keyring=rings[DETECTOR],
            message_type=FlowBatch,
            settings=TransportConfig(curve=False),
            bind=True,
        )
        t0 = _cpu()
        batches = [rx.open(f).message for f in frames]
        us["transport: open (AEAD, LZ4, replay window, FlowBatch parse)"] = _cpu() - t0
        t0 = _cpu()
        for b in batches:
            rows, _ = unpack_batch(b)
            packed_feature_matrix(rows)
        us["detector: unpack + columns + feature matrix"] = _cpu() - t0
        cfg, scorer = _scorer()
        timed = _TimedScorer(scorer)
        for events in (False, True):
            verdicts = _Sealing(rings[DETECTOR], FIREWALL, "verdicts")
            sink = _Sealing(rings[DETECTOR], RAG, "events")
            service = DetectorService(
                cfg,
                timed,  # type: ignore[arg-type]
                rx,
                detector_id=DETECTOR,
                verdict_sender=verdicts,  # type: ignore[arg-type]
                event_sender=sink if events else None,  # type: ignore[arg-type]
            )
            timed.seconds = 0.0
            t0 = _cpu()
            for b in batches:
                service.handle(b, SENSOR)
            took = _cpu() - t0
            if events:
                service.event_sender.close(timeout_s=60.0)  # type: ignore[union-attr]
                us["detector, events on: handle (+ every record a FlowRecord, Verdict, "
                   "ScoredEvent)"] = took - verdicts.seconds  # fmt: skip
                us["events: LZ4 + AEAD (events thread; serialized in handle)"] = sink.seconds
                continue
            us["detector: handle (unpack to verdicts built)"] = (
                took - verdicts.seconds - timed.seconds
            ) - us["detector: unpack + columns + feature matrix"]
            # Explanations are made when a verdict reads them (scoring.TopFeatures): in
            # the line above for the verdicts sent, not here.
            us["detector: Scorer.score (forests, labels; explanations deferred)"] = timed.seconds
            us["verdicts: VerdictBatch serialize + LZ4 + AEAD"] = verdicts.seconds
            service.event_sender = None
        rx.close()
    print(f"stages, µs per record over {n} records ({len(batches)} batches of {batch}):")
    for name, seconds in us.items():
        print(f"  {1e6 * seconds / n:7.2f}  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    ap.add_argument("--records", type=int, default=1_000_000, help="records to send")
    ap.add_argument("--batch-records", type=int, default=None,
                    help="transport.batch_records (default: the shipped default)")  # fmt: skip
    ap.add_argument("--events", action="store_true",
                    help="scored events to a RAG receiver too (the default)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke run (20k records)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="records/s fed to the sniffer (default: as fast as it goes)")  # fmt: skip
    ap.add_argument(
        "--stages", action="store_true", help="µs per record of each stage alone, then stop"
    )
    args = ap.parse_args()
    if args.quick:
        args.records = 20_000
    if not args.capture.exists():
        if args.capture != DEFAULT_CAPTURE:
            print(f"no capture at {args.capture}", file=sys.stderr)
            return 2
        subprocess.run(
            [sys.executable, str(REPO / "bench" / "make_capture.py"), "--packets", "50000",
             "--out", str(DEFAULT_CAPTURE)],
            check=True,
        )  # fmt: skip

    from crypto_transport import Receiver, TransportConfig
    from proto.events_pb2 import EventBatch, VerdictBatch

    settings = TransportConfig()
    if args.batch_records:
        settings = replace(settings, batch_records=args.batch_records)
    arrays, obs, engine_s, span_ns = read_capture(args.capture)
    flows = sum(len(a) for a in arrays)
    print(f"capture {args.capture.name}: {flows} flow records from the native engine in "
          f"{engine_s:.2f} s ({flows / engine_s:,.0f}/s)")  # fmt: skip
    if args.stages:
        stages(arrays, obs, span_ns, settings.batch_records, min(args.records, 100_000))
        return 0
    base = score_only(
        arrays, obs, span_ns, settings.batch_records, min(args.records, 50_000), args.events
    )
    print(f"baseline: detector handle() alone on decoded batches: {base:,.0f} records/s")

    rings = _keyrings(settings.rotation_grace_s)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mld-bench-pipe-") as tmp:
        flows_ep, verdicts_ep = f"ipc://{tmp}/flows", f"ipc://{tmp}/verdicts"
        events_ep = f"ipc://{tmp}/events" if args.events else None
        firewall: Receiver[VerdictBatch] = Receiver(
            pattern="pull",
            endpoint=verdicts_ep,
            channel="verdicts",
            keyring=rings[FIREWALL],
            message_type=VerdictBatch,
            settings=settings,
            bind=True,
        )
        rag: Receiver[EventBatch] | None = None
        if events_ep is not None:
            rag = Receiver(
                pattern="pull",
                endpoint=events_ep,
                channel="events",
                keyring=rings[RAG],
                message_type=EventBatch,
                settings=settings,
                bind=True,
            )
        det_end, det_child = ctx.Pipe()
        snf_end, snf_child = ctx.Pipe()
        det = ctx.Process(
            target=detector_proc,
            args=(flows_ep, verdicts_ep, events_ep, rings, settings, det_child),
        )
        snf = ctx.Process(
            target=sniffer_proc,
            args=(
                arrays,
                obs,
                span_ns,
                args.records,
                flows_ep,
                rings,
                settings,
                snf_child,
                args.rate,
            ),
        )
        det.start()
        snf.start()
        try:
            if not det_end.poll(300) or not snf_end.poll(300):
                print("a service did not start", file=sys.stderr)
                return 1
            det_end.recv()
            snf_end.recv()
            snf_end.send("go")
            counted = {"verdicts": 0, "events": 0}
            last_seen = {"t": time.monotonic()}
            stop = threading.Event()

            def drain(rx: Any, what: str, size: Any) -> None:
                """A receiving service's loop: open and count until told to stop."""
                while not stop.is_set():
                    got = rx.recv(timeout_ms=100)
                    if got is not None:
                        counted[what] += size(got.message)
                        last_seen["t"] = time.monotonic()

            threads = [
                threading.Thread(
                    target=drain, args=(firewall, "verdicts", lambda m: len(m.verdicts))
                )
            ]
            if rag is not None:
                threads.append(
                    threading.Thread(target=drain, args=(rag, "events", lambda m: len(m.events)))
                )
            for t in threads:
                t.start()
            try:
                made, snf_s, pub, snf_cpu, waits = snf_end.recv()
                det_end.send(pub["records_sent"])
                scored, det_s, lat_ms, counts, dstats, det_cpu = det_end.recv()
                snf_end.send("close")
                while time.monotonic() - last_seen["t"] < 1.0:  # the last outputs arrive
                    time.sleep(0.1)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            verdicts, events = counted["verdicts"], counted["events"]
        finally:
            for proc in (snf, det):
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            firewall.close()
            if rag is not None:
                rag.close()
    lat = np.repeat(np.asarray(lat_ms), np.asarray(counts)) if counts else np.zeros(1)
    wait = np.repeat(*map(np.asarray, zip(*waits, strict=True))) if waits else np.zeros(1)
    rps = scored / det_s if det_s > 0 else 0.0
    dropped = (
        pub["records_dropped"]
        + int(dstats.get("verdicts_dropped", 0))
        + int(dstats.get("events_dropped", 0))
    )
    print(f"sniffer: {made} records made, {pub['records_sent']} sent, "
          f"{pub['records_dropped']} dropped, in {snf_s:.2f} s")  # fmt: skip
    print("detector: " + " ".join(f"{k}={v}" for k, v in dstats.items()))
    print(
        f"pipeline_rps={rps:.0f} p50_ms={np.percentile(lat, 50):.2f} "
        f"p99_ms={np.percentile(lat, 99):.2f} sniffer_rps={made / snf_s:.0f} "
        f"score_only_rps={base:.0f} ratio_score_only={rps / base:.3f} dropped={dropped} "
        f"verdicts={verdicts} records={dstats['records_in']} events={events} "
        f"sniffer_cpu_us={1e6 * snf_cpu / max(made, 1):.2f} "
        f"detector_cpu_us={1e6 * det_cpu / max(scored, 1):.2f} "
        f"batch_wait_p50_ms={np.percentile(wait, 50):.2f} "
        f"batch_wait_p99_ms={np.percentile(wait, 99):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
