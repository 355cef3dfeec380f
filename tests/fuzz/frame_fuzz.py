"""Mutation fuzzer of the transport's frame decoder: what a receiver does with bytes off the wire.

Each case builds one frame and hands it to a real ``crypto_transport.Receiver.open`` (PULL
sockets bound to ``inproc://``, never read: ``open`` is the whole decode path), for one of
the three batch types that cross the network (FlowBatch to the detector, VerdictBatch to the
firewall, EventBatch to the RAG store). Three kinds of cases, so that mutations reach every
layer and not only the authentication tag:

* ``wire``: an authentic frame, then mutated (bit flips, truncation, insertions, splices):
  header parsing, key lookup, the replay window, the AEAD tag;
* ``lz4``: an authentic frame sealed around a mutated LZ4 block (size prefix included), as a
  peer holding a valid key could send: the decompression-bomb cap and LZ4;
* ``proto``: an authentic frame around a mutated protobuf serialization: protobuf decoding
  of the batch, then re-serializing and walking the decoded message.

Seeds are real: FlowBatch records come from shared captures through the native flow engine
and ``sniffer.records`` (as the sniffer builds them); VerdictBatch and EventBatch are filled
field by field from their descriptors.

A crash is any exception other than ``FrameRejected`` (the decoder's documented refusal), a
case slower than ``SLOW_CASE_S``, or the process dying (a segfault in a C extension: LZ4,
libsodium, upb). The loop runs in a child process that writes each input to a file before
trying it, so a fatal one is still on disk; the parent counts it, keeps it under the
artifacts folder and starts a new child for the time left.

Python has no AddressSanitizer here: the C extensions are the distribution's builds, so a
memory error in them is found only when it faults. The C fuzzer (fuzz_parser.c) is the one
with sanitizers.

    python -m tests.fuzz.frame_fuzz --seconds 60 --workdir /tmp/frame-fuzz
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SLOW_CASE_S = 2.0
LAST_INPUT = "last-input.bin"
# The input being tried, written before each case: cases so far, channel, frame length, frame.
_LAST = struct.Struct("<Q8sI")
# Child -> parent: one JSON line at the end.
_RESULT_PREFIX = "FRAME_FUZZ_RESULT "

__all__ = ["FrameFuzzResult", "mutate", "run"]


@dataclass
class FrameFuzzResult:
    cases: int = 0
    crashes: int = 0
    artifacts: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)


# ---- mutations ---------------------------------------------------------------------------

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x40, 0x20)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to eight stacked mutations of ``data`` (``others`` are splice partners)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(10)
        n = len(buf)
        pos = rng.randrange(n + 1)
        if op == 0 and n:  # flip one bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            buf[rng.randrange(n)] = rng.choice(_INTERESTING)
        elif op == 2 and n:  # random bytes over a short run
            k = min(n - pos, rng.randint(1, 8))
            buf[pos : pos + k] = rng.randbytes(k)
        elif op == 3:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and n:  # delete a run
            del buf[pos : pos + rng.randint(1, max(1, n // 8))]
        elif op == 5:  # truncate
            del buf[pos:]
        elif op == 6 and n:  # duplicate a chunk elsewhere
            a = rng.randrange(n)
            chunk = buf[a : a + rng.randint(1, 64)]
            buf[pos:pos] = chunk
        elif op == 7 and others:  # splice with another seed
            other = rng.choice(others)
            buf = buf[:pos] + other[rng.randrange(len(other) + 1) :]
        elif op == 8:  # a varint, often huge (protobuf lengths, counts)
            value = rng.choice((0, 1, 127, 128, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1))
            buf[pos:pos] = _varint(value)
        elif op == 9 and n >= 4:  # a little-endian u32 (LZ4 size prefix, lengths)
            value = rng.choice((0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)))
            i = rng.randrange(n - 3)
            buf[i : i + 4] = struct.pack("<I", value)
    return bytes(buf)


# ---- seeds -------------------------------------------------------------------------------


def _fill(message: Any, rng: random.Random, depth: int = 0) -> None:
    """Set every field of ``message`` (recursively, repeated fields 1-3 times)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for fd in message.DESCRIPTOR.fields:
        repeats = rng.randint(1, 3) if fd.is_repeated else 1
        for _ in range(repeats):
            if fd.type == F.TYPE_MESSAGE:
                if depth > 4:
                    continue
                target = getattr(message, fd.name)
                sub = target.add() if fd.is_repeated else target
                _fill(sub, rng, depth + 1)
                continue
            if fd.type == F.TYPE_ENUM:
                value: Any = rng.choice(fd.enum_type.values).number
            elif fd.type == F.TYPE_BOOL:
                value = rng.random() < 0.5
            elif fd.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
                value = rng.uniform(-1e6, 1e6)
            elif fd.type == F.TYPE_STRING:
                value = "".join(rng.choice("abcdefgh.-_/ é") for _ in range(rng.randint(0, 24)))
            elif fd.type == F.TYPE_BYTES:
                value = rng.randbytes(rng.choice((4, 16, rng.randint(0, 40))))
            elif fd.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
                value = rng.randint(-(2**31), 2**31 - 1)
            elif fd.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
                value = rng.getrandbits(32)
            elif fd.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
                value = rng.randint(-(2**63), 2**63 - 1)
            else:
                value = rng.getrandbits(64)
            if fd.is_repeated:
                getattr(message, fd.name).append(value)
            else:
                setattr(message, fd.name, value)


def _flow_batches(captures: list[Path], rng: random.Random) -> list[bytes]:
    """Serialized FlowBatches of real flows, built the way the sniffer builds them."""
    import native
    from proto import FlowBatch
    from proto.wire import frame_element, join_batch
    from sniffer.records import encode_records, flow_columns

    out: list[bytes] = []
    for path in captures:
        engine = native.FlowEngine(batch_size=4096)
        try:
            events = [ev for ev in engine.feed_file(path)]
            events.append(engine.finish())
        except (native.CaptureError, native.UnsupportedLinkType):
            continue
        for ev in events:
            if len(ev) == 0:
                continue
            records = encode_records(flow_columns(ev[:20], "fuzz"))
            framed = [frame_element(FlowBatch, "records", r) for r in records]
            header = FlowBatch(sensor_id="sensor-1", batch_seq=rng.getrandbits(32))
            out.append(join_batch(header, "records", framed))
    return out


def seed_payloads(captures: list[Path], rng: random.Random) -> dict[str, list[bytes]]:
    """Serialized seed batches per channel."""
    from proto import FlowBatch, VerdictBatch
    from proto.events_pb2 import EventBatch

    seeds: dict[str, list[bytes]] = {"flows": _flow_batches(captures, rng)}
    for channel, kind in (("flows", FlowBatch), ("verdicts", VerdictBatch), ("events", EventBatch)):
        for _ in range(8):
            msg = kind()
            _fill(msg, rng)
            seeds.setdefault(channel, []).append(msg.SerializeToString())
    return seeds


# ---- the child: the loop -----------------------------------------------------------------


class _Target:
    """Real receivers, one per channel, and the session key of an authentic peer."""

    def __init__(self) -> None:
        import zmq

        from crypto_transport import KeyPair, Keyring, Receiver, TransportConfig
        from proto import FlowBatch, VerdictBatch
        from proto.events_pb2 import EventBatch

        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sender_pair, receiver_pair = KeyPair.generate(), KeyPair.generate()
        send_ring = Keyring(sender_pair, grace_s=60)
        send_ring.add_peer("receiver", receiver_pair.public)
        recv_ring = Keyring(receiver_pair, grace_s=60)
        # The peer may send on every channel fuzzed (issue 19's per-channel roles would
        # otherwise refuse its verdict and event frames before they reach LZ4 and protobuf).
        recv_ring.add_peer("sensor-1", sender_pair.public, roles=("sniffer", "detector"))
        self.key = send_ring.sending_key("receiver")
        settings = TransportConfig()
        self.settings = settings
        tag = f"{os.getpid()}-{random.getrandbits(32):08x}"
        self.receivers: dict[str, Any] = {
            channel: Receiver(
                pattern="pull",
                endpoint=f"inproc://frame-fuzz-{channel}-{tag}",
                channel=channel,
                keyring=recv_ring,
                message_type=kind,
                settings=settings,
                context=self.ctx,
            )
            for channel, kind in (
                ("flows", FlowBatch),
                ("verdicts", VerdictBatch),
                ("events", EventBatch),
            )
        }
        self.seq = time.time_ns()

    def seal(self, channel: str, payload: bytes, compressed: bytes | None = None) -> bytes:
        from crypto_transport.frame import seal

        self.seq += 1
        return seal(
            payload,
            key=self.key.key,
            key_id=self.key.key_id,
            seq=self.seq,
            channel=channel.encode(),
            sender_id=b"sensor-1",
            compressed=compressed,
        )

    def close(self) -> None:
        for r in self.receivers.values():
            r.close()
        self.ctx.term()


def _planted(kind: str) -> None:
    if kind == "abort":
        os.abort()  # as a segfault in a C extension would end the process
    raise ValueError("planted finding (MLD_FRAME_FUZZ_PLANTED)")


def _child(args: argparse.Namespace) -> int:
    import lz4.block

    from base.errors import FrameRejected

    rng = random.Random(args.seed)
    captures = [Path(p) for p in args.capture]
    seeds = seed_payloads(captures, rng)
    target = _Target()
    compressed = {
        ch: [lz4.block.compress(p, store_size=True) for p in ps] for ch, ps in seeds.items()
    }
    frames = {ch: [target.seal(ch, p) for p in ps] for ch, ps in seeds.items()}
    all_seeds = [p for ps in seeds.values() for p in ps]
    workdir = Path(args.workdir)
    last = os.open(workdir / LAST_INPUT, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    channels = sorted(seeds)
    kinds: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    crashes: list[str] = []
    cases = 0
    # Self-test of the harness only (test_fuzz_smoke.py): a planted finding at case 50.
    planted = os.environ.get("MLD_FRAME_FUZZ_PLANTED")
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and (args.max_cases is None or cases < args.max_cases):
        channel = rng.choice(channels)
        kind = rng.choice(("wire", "lz4", "proto", "proto"))
        if kind == "wire":
            frame = mutate(rng.choice(frames[channel]), rng, frames[channel])
            # A fresh sequence number half of the time, so the replay window does not
            # refuse every mutant before its tag is checked.
            if rng.random() < 0.5 and len(frame) >= 17:
                target.seq += 1
                frame = frame[:9] + struct.pack(">Q", target.seq) + frame[17:]
        elif kind == "lz4":
            block = mutate(rng.choice(compressed[channel]), rng, compressed[channel])
            frame = target.seal(channel, b"", compressed=block)
        else:
            payload = mutate(rng.choice(seeds[channel]), rng, all_seeds)
            frame = target.seal(channel, payload)
        kinds[kind] = kinds.get(kind, 0) + 1
        cases += 1
        os.pwrite(last, _LAST.pack(cases, channel.encode(), len(frame)) + frame, 0)
        started = time.monotonic()
        try:
            if planted is not None and cases == 50:
                _planted(planted)
            received = target.receivers[channel].open(frame)
            # Walk what was decoded, as a consumer would.
            received.message.SerializeToString()
            received.message.ByteSize()
            str(received.message)[:64]
            outcome = "accepted"
        except FrameRejected as rej:
            outcome = rej.reason
        except Exception:  # every other exception is a finding
            outcome = "crash"
            name = f"frame-crash-{len(crashes)}-{channel}.bin"
            (workdir / name).write_bytes(frame)
            (workdir / (name + ".txt")).write_text(traceback.format_exc())
            crashes.append(name)
        elapsed = time.monotonic() - started
        if elapsed > SLOW_CASE_S:
            name = f"frame-slow-{len(crashes)}-{channel}.bin"
            (workdir / name).write_bytes(frame)
            crashes.append(name)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    os.close(last)
    target.close()
    result = {"cases": cases, "crashes": crashes, "kinds": kinds, "outcomes": outcomes}
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---- the parent ----------------------------------------------------------------------------


def default_captures() -> list[Path]:
    """A few shared captures whose flows seed the FlowBatch inputs."""
    from tests.support import SHARED_DATA

    root = SHARED_DATA / "pcaps"
    picks = [
        root / "attacks" / "scan" / "nmap_80_vanilla.pcap",
        root / "attacks" / "dns_tunnel" / "iodine_elastic.pcap",
        root / "ndpi" / "443-chrome.pcap",
    ]
    return [p for p in picks if p.is_file()]


def run(
    seconds: float,
    workdir: Path,
    *,
    seed: int | None = None,
    max_cases: int | None = None,
    captures: list[Path] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> FrameFuzzResult:
    """Fuzz for ``seconds`` (or ``max_cases``) in child processes; crashes land in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    captures = default_captures() if captures is None else captures
    rng = random.Random(seed)
    result = FrameFuzzResult()
    deadline = time.monotonic() + seconds
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    while True:
        left = deadline - time.monotonic()
        if left <= 1 or (max_cases is not None and result.cases >= max_cases):
            break
        child_seed = rng.getrandbits(63)
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.frame_fuzz",
            "--child",
            "--seconds",
            f"{left:.1f}",
            "--seed",
            str(child_seed),
            "--workdir",
            str(workdir),
        ]
        if max_cases is not None:
            cmd += ["--max-cases", str(max_cases - result.cases)]
        for c in captures:
            cmd += ["--capture", str(c)]
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=left + 120, check=False
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)), None)
        if line is not None and proc.returncode == 0:
            child = json.loads(line[len(_RESULT_PREFIX) :])
            result.cases += child["cases"]
            result.crashes += len(child["crashes"])
            result.artifacts += [str(workdir / n) for n in child["crashes"]]
            for k, v in child["kinds"].items():
                result.kinds[k] = result.kinds.get(k, 0) + v
            for k, v in child["outcomes"].items():
                result.outcomes[k] = result.outcomes.get(k, 0) + v
            continue
        if line is None and proc.returncode == 1 and "Traceback" in proc.stderr:
            # The harness itself failed (seeding, imports): not a finding.
            raise RuntimeError(f"frame fuzzer could not start:\n{proc.stderr[-4000:]}")
        # The child died: the input it was trying is the last one it wrote.
        name = workdir / f"frame-fatal-{result.crashes}.bin"
        channel = "?"
        last = workdir / LAST_INPUT
        record = last.read_bytes() if last.exists() else b""
        if len(record) >= _LAST.size:
            done, channel_b, size = _LAST.unpack_from(record)
            result.cases += done
            channel = channel_b.rstrip(b"\0").decode()
            name.write_bytes(record[_LAST.size : _LAST.size + size])
        (workdir / (name.name + ".txt")).write_text(
            f"channel {channel}; exit {proc.returncode} ({_signal_name(proc.returncode)}), "
            f"seed {child_seed}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}\n"
        )
        log(f"frame fuzzer child died: exit {proc.returncode}; input kept in {name}")
        result.crashes += 1
        result.artifacts.append(str(name))
    return result


def _signal_name(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return "exit status"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--workdir", default="/tmp/mld-frame-fuzz")
    parser.add_argument("--capture", action="append", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    captures = [Path(c) for c in args.capture] if args.capture else None
    res = run(
        args.seconds,
        Path(args.workdir),
        seed=args.seed,
        max_cases=args.max_cases,
        captures=captures,
        log=print,
    )
    print(json.dumps(res.__dict__))
    print(f"frame_cases={res.cases} frame_crashes={res.crashes}")
    return 1 if res.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
