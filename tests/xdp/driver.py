"""Runs a FlowMonitor inside a test's network namespace until SIGTERM.

Started by tests/xdp with ``nsenter --net=/run/netns/NS`` (network namespace only, so the
host's bpffs and its pins stay visible). Writes, as they arrive:
  --out     the raw records poll()/flush() returned (struct mld_flow_event each);
  --json    one JSON object per record, decoded with the event's ctypes type;
  --ready   the attach modes, once attached;
  --stats   the monitor's counters, at exit.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import sys
from pathlib import Path
from typing import Any

from xdp import FlowMonitor, OverloadSettings
from xdp.monitor import raise_on_sigterm


def as_python(obj: Any) -> Any:
    """A ctypes struct/array as dicts, lists and ints (byte arrays as hex)."""
    if isinstance(obj, ct.Structure):
        return {f[0]: as_python(getattr(obj, f[0])) for f in obj._fields_}
    if isinstance(obj, ct.Array):
        if obj._type_ is ct.c_ubyte or obj._type_ is ct.c_uint8:
            return bytes(obj).hex()
        return [as_python(x) for x in obj]
    return obj


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iface", action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--pin-dir", required=True)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--active", type=float, default=300.0)
    p.add_argument("--interim", type=float, default=0.0)
    p.add_argument("--sweep", type=float, default=0.2)
    p.add_argument("--mode", default="auto")
    p.add_argument("--max-flows", type=int, default=1024)
    p.add_argument("--no-flush", action="store_true")
    p.add_argument("--parse-error-action", default="drop")
    p.add_argument("--reverse-path-check", default="none")
    p.add_argument("--ringbuf-pages", type=int, default=64)
    # Overload mode (off unless --overload-rate is given): new flows per second, admit_after.
    p.add_argument("--overload-rate", type=float, default=None)
    p.add_argument("--overload-admit-after", type=int, default=1)
    p.add_argument("--floods", type=Path, default=None, help="flood summaries, JSON lines")
    a = p.parse_args()

    raise_on_sigterm()
    mon = FlowMonitor(
        a.iface,
        idle_timeout_s=a.idle,
        active_timeout_s=a.active,
        interim_s=a.interim,
        max_flows=a.max_flows,
        ringbuf_pages=a.ringbuf_pages,
        mode=a.mode,
        sweep_interval_s=a.sweep,
        pin_dir=a.pin_dir,
        parse_error_action=a.parse_error_action,
        reverse_path_check=a.reverse_path_check,
        overload=None
        if a.overload_rate is None
        else OverloadSettings(
            new_flows_per_s=a.overload_rate, admit_after=a.overload_admit_after, hold_s=5.0
        ),
    )

    def save(path: Path, data: object) -> None:
        # Write then rename: the test reads these files while the driver rewrites them, and
        # a plain write_text let it read an empty file once (CI).
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    with a.out.open("wb") as out, a.json.open("w") as js:

        def write_floods() -> None:
            if a.floods is None or mon.overload is None:
                return
            keys, vals = mon.take_floods()
            with a.floods.open("a") as f:
                for k, v in zip(keys, vals, strict=True):
                    row = {n: (k[n].tobytes().hex() if n == "addr" else int(k[n]))
                           for n in keys.dtype.names or ()}  # fmt: skip
                    row.update({n: int(v[n]) for n in vals.dtype.names or ()})
                    f.write(json.dumps(row) + "\n")

        def write(buf: bytes, phase: str) -> None:
            write_floods()
            out.write(buf)
            out.flush()
            for ev in mon.decode(buf):
                js.write(json.dumps({"phase": phase, **as_python(ev)}) + "\n")
            js.flush()

        try:
            mon.attach()
            save(a.ready, {"modes": mon.modes, "size": mon.record_size})
            while True:
                write(mon.poll(100), "poll")
                save(a.stats, mon.stats())
        except (SystemExit, KeyboardInterrupt):
            pass
        finally:
            try:
                write(mon.poll(0), "poll")
                if not a.no_flush:
                    write(mon.flush(), "flush")
                    write_floods()
                save(a.stats, mon.stats())
            finally:
                mon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
