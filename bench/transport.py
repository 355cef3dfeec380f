"""Flow records per second between two processes: encrypted transport vs plain protobuf.

Each run starts a receiver process and a sender process. The sender holds pre-built
FlowBatch messages of 100 FlowRecords (from simulated packet trains, so their values look
like real flow statistics) and, for every send, serializes one; the encrypted run then
compresses and seals it (crypto_transport.Sender), the plain run sends the protobuf bytes
as they are on a bare ZeroMQ PUSH socket. The receiver opens (or just parses) every batch
and counts the records. The rate is records / time between the receiver's first and last
batch. Both variants run in the same invocation, alternating, over ipc:// and
tcp://127.0.0.1; the median of the repeats is reported.

    .venv/bin/python bench/transport.py              # full run (~1 minute)
    .venv/bin/python bench/transport.py --quick      # smoke run

Last line: ``encrypted_rps=N plain_rps=N ratio=R`` for tcp, then the same for ipc.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from config import MldConfig
from crypto_transport import KeyPair, Keyring, Receiver, Sender, TransportConfig
from proto import FlowBatch, FlowRecord
from proto.wire import frame_element, join_batch

RECORDS_PER_BATCH = 100
DISTINCT_BATCHES = 64
CHANNEL = "flows"


def _direction(rng: random.Random, stats: Any, sizes: list[int], gaps_us: list[float]) -> None:
    n = len(sizes)
    stats.packets = n
    stats.bytes = sum(sizes)
    stats.payload_bytes = sum(max(0, s - 52) for s in sizes)
    stats.pkt_len_min = min(sizes)
    stats.pkt_len_max = max(sizes)
    mean = stats.bytes / n
    stats.pkt_len_mean = mean
    stats.pkt_len_std = (sum((s - mean) ** 2 for s in sizes) / n) ** 0.5
    if gaps_us:
        g_mean = sum(gaps_us) / len(gaps_us)
        stats.iat_min_us = min(gaps_us)
        stats.iat_max_us = max(gaps_us)
        stats.iat_mean_us = g_mean
        stats.iat_std_us = (sum((g - g_mean) ** 2 for g in gaps_us) / len(gaps_us)) ** 0.5


def simulated_record(rng: random.Random, now_ns: int) -> FlowRecord:
    """One flow record from a simulated packet train (web, DNS, SSH or a scan probe)."""
    kind = rng.choices(["web", "dns", "ssh", "probe"], weights=[6, 3, 1, 2])[0]
    proto = 17 if kind == "dns" else 6
    port = {"web": rng.choice([80, 443, 8080]), "dns": 53, "ssh": 22}.get(
        kind, rng.randrange(1, 1024)
    )
    fwd_n, bwd_n = {
        "web": (rng.randrange(4, 60), rng.randrange(4, 120)),
        "dns": (1, 1),
        "ssh": (rng.randrange(10, 300), rng.randrange(10, 300)),
        "probe": (1, rng.choice([0, 1])),
    }[kind]
    rec = FlowRecord(
        flow_id=rng.getrandbits(64),
        ip_version=4,
        src_addr=bytes([10, 1, rng.randrange(4), rng.randrange(1, 255)]),
        dst_addr=bytes([10, 2, 0, rng.randrange(1, 40)]),
        src_port=rng.randrange(32768, 61000),
        dst_port=port,
        protocol=proto,
        end_reason=rng.choice([1, 1, 2, 3]),
        observation_point="eth1",
        vlan_id=0,
    )
    start = now_ns - rng.randrange(10**9, 60 * 10**9)
    duration_us = 0.0
    for stats, n, big in ((rec.fwd, fwd_n, kind == "ssh"), (rec.bwd, bwd_n, kind == "web")):
        if n == 0:
            continue
        sizes = [rng.choice([52, 52, 64, 576, 1500]) if big else rng.randrange(52, 300)]
        sizes += [rng.choice([52, 1500, rng.randrange(52, 1500)]) for _ in range(n - 1)]
        gaps = [round(rng.expovariate(1 / 2000.0), 3) for _ in range(n - 1)]
        _direction(rng, stats, sizes, gaps)
        duration_us = max(duration_us, sum(gaps))
        if proto == 6:
            stats.syn_count = 1
            stats.ack_count = n - 1 if stats is rec.fwd else n
            stats.psh_count = n // 3
            stats.fin_count = 1 if n > 2 else 0
            stats.init_window = rng.choice([64240, 65535, 29200, 1024])
    rec.first_ts_ns = start
    rec.last_ts_ns = start + int(duration_us * 1000)
    ctx = rec.src_context
    ctx.window_s = 60.0
    ctx.distinct_dst_addrs = 1 if kind != "probe" else rng.randrange(1, 50)
    ctx.distinct_dst_ports = 1 if kind != "probe" else rng.randrange(20, 1000)
    ctx.syn_without_ack_ratio = 0.0 if kind != "probe" else round(rng.random(), 3)
    ctx.flows_per_s = round(rng.expovariate(1.0), 3)
    if kind == "dns":
        ctx.dns_query_rate = round(rng.expovariate(0.5), 3)
        ctx.dns_qname_mean_len = round(rng.uniform(8, 30), 2)
        ctx.dns_qname_entropy = round(rng.uniform(2.5, 4.0), 3)
    rec.fast_score = 0.0 if kind != "probe" else round(rng.uniform(0.3, 0.9), 2)
    rec.fast_rule = "" if kind != "probe" else "port_scan"
    return rec


def make_batches(seed: int = 7) -> list[FlowBatch]:
    rng = random.Random(seed)
    now = time.time_ns()
    batches = []
    for i in range(DISTINCT_BATCHES):
        batch = FlowBatch(sensor_id="sniffer-bench", batch_seq=i, started_ts_ns=now)
        batch.records.extend(simulated_record(rng, now) for _ in range(RECORDS_PER_BATCH))
        batches.append(batch)
    return batches


def _keyrings(settings: TransportConfig) -> tuple[Keyring, Keyring]:
    snd, rcv = KeyPair.generate(), KeyPair.generate()
    ks = Keyring(snd, grace_s=settings.rotation_grace_s)
    ks.add_peer("receiver", rcv.public)
    kr = Keyring(rcv, grace_s=settings.rotation_grace_s)
    kr.add_peer("sender", snd.public, roles=["sniffer"])
    return ks, kr


def _receiver(
    mode: str, endpoint: str, settings: TransportConfig, kr: Keyring, n: int, out: Any
) -> None:
    ctx = zmq.Context()
    records = 0
    first = last = 0.0
    if mode == "encrypted":
        rx = Receiver(
            pattern="pull",
            endpoint=endpoint,
            channel=CHANNEL,
            keyring=kr,
            message_type=FlowBatch,
            settings=settings,
            context=ctx,
        )
        out.send("ready")
        for i in range(n):
            got = rx.recv(timeout_ms=20000)
            if got is None:
                break
            records += len(got.message.records)
            last = time.perf_counter()
            if i == 0:
                first = last
        rejected = sum(rx.counters.rejected.values())
        rx.close()
    else:
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, settings.recv_hwm)
        sock.bind(endpoint)
        out.send("ready")
        for i in range(n):
            if not sock.poll(20000):
                break
            records += len(FlowBatch.FromString(sock.recv()).records)
            last = time.perf_counter()
            if i == 0:
                first = last
        rejected = 0
        sock.close()
    ctx.term()
    # The first batch only starts the clock: count the records after it.
    out.send((records - RECORDS_PER_BATCH, last - first, rejected))


def _payload_source(path: str) -> Any:
    """Per-send work that produces a batch's bytes: serialize a message tree ("message"), or
    join records serialized once when they were made ("serialized", the native engine's way)."""
    batches = make_batches()
    if path == "message":
        return lambda i: batches[i % DISTINCT_BATCHES].SerializeToString()
    framed = [
        [frame_element(FlowBatch, "records", r.SerializeToString()) for r in b.records]
        for b in batches
    ]
    started = batches[0].started_ts_ns

    def join(i: int) -> bytes:
        header = FlowBatch(sensor_id="sniffer-bench", batch_seq=i, started_ts_ns=started)
        return join_batch(header, "records", framed[i % DISTINCT_BATCHES])

    return join


def _sender(
    path: str, mode: str, endpoint: str, settings: TransportConfig, ks: Keyring, n: int
) -> None:
    payload = _payload_source(path)
    ctx = zmq.Context()
    if mode == "encrypted":
        tx = Sender(
            pattern="push",
            endpoint=endpoint,
            channel=CHANNEL,
            sender_id="sender",
            keyring=ks,
            recipients=["receiver"],
            settings=settings,
            context=ctx,
        )
        for i in range(n):
            tx.send_payload(payload(i))
        tx.close()
    else:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, settings.send_hwm)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.connect(endpoint)
        for i in range(n):
            sock.send(payload(i))
        sock.close()
    ctx.term()


def run_once(
    path: str, mode: str, endpoint: str, settings: TransportConfig, n_batches: int
) -> float:
    ks, kr = _keyrings(settings)
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    rx = spawn.Process(target=_receiver, args=(mode, endpoint, settings, kr, n_batches, child))
    rx.start()
    if not parent.poll(30) or parent.recv() != "ready":
        rx.kill()
        raise SystemExit("bench: receiver did not start")
    tx = spawn.Process(target=_sender, args=(path, mode, endpoint, settings, ks, n_batches))
    tx.start()
    tx.join(120)
    if not parent.poll(120):
        rx.kill()
        tx.kill()
        raise SystemExit(f"bench: {mode} receiver did not finish on {endpoint}")
    records, elapsed, rejected = parent.recv()
    rx.join(10)
    if rejected:
        raise SystemExit(f"bench: {rejected} frames rejected in a clean run: transport bug")
    if records < (n_batches - 1) * RECORDS_PER_BATCH or elapsed <= 0:
        raise SystemExit(f"bench: {mode} on {endpoint} lost batches ({records} records)")
    return float(records / elapsed)


def _free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: .venv/bin/python bench/transport.py --repeats 5",
    )
    parser.add_argument("--batches", type=int, default=30000, help="batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--lz4-acceleration", type=int, default=None)
    parser.add_argument(
        "--no-curve", action="store_true", help="encrypted runs without CURVE authentication"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = 2000, 1
    settings = MldConfig().transport
    if args.no_curve:
        settings = replace(settings, curve=False)
    if args.lz4_acceleration is not None:
        settings = replace(settings, lz4_acceleration=args.lz4_acceleration)

    sample = make_batches()[0]
    raw = sample.SerializeToString()
    from crypto_transport.frame import OVERHEAD, compress

    wire = len(compress(raw, settings.lz4_acceleration)) + OVERHEAD
    print(
        f"batch: {RECORDS_PER_BATCH} records, {len(raw)} bytes protobuf, {wire} bytes on the "
        f"wire encrypted ({wire / len(raw):.2f}x), lz4 acceleration "
        f"{settings.lz4_acceleration}",
        flush=True,
    )
    results: dict[tuple[str, str, str], list[float]] = {}
    variants = [
        (path, transport, mode)
        for path in ("serialized", "message")
        for transport in ("tcp", "ipc")
        for mode in ("encrypted", "plain")
    ]
    with tempfile.TemporaryDirectory(prefix="mld-bench-") as tmp:
        for rep in range(args.repeats):
            for n, (path, transport, mode) in enumerate(variants):
                endpoint = (
                    _free_tcp_endpoint()
                    if transport == "tcp"
                    else f"ipc://{Path(tmp) / f'{rep}-{n}.sock'}"
                )
                rps = run_once(path, mode, endpoint, settings, args.batches)
                results.setdefault((path, transport, mode), []).append(rps)
                print(
                    f"run {rep + 1}/{args.repeats} {path:10} {transport:3} {mode:9} "
                    f"{rps:12,.0f} rec/s",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in results.items()}
    parts = []
    for path in ("serialized", "message"):
        for transport in ("tcp", "ipc"):
            enc, plain = med[(path, transport, "encrypted")], med[(path, transport, "plain")]
            print(
                f"{path:10} {transport}: encrypted {enc:,.0f} rec/s, plain {plain:,.0f} rec/s, "
                f"ratio {enc / plain:.2f}"
            )
            prefix = {
                ("serialized", "tcp"): "",
                ("serialized", "ipc"): "ipc_",
                ("message", "tcp"): "msg_",
                ("message", "ipc"): "msg_ipc_",
            }[(path, transport)]
            parts.append(
                f"{prefix}encrypted_rps={enc:.0f} {prefix}plain_rps={plain:.0f} "
                f"{prefix}ratio={enc / plain:.3f}"
            )
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
