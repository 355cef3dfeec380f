"""``mld sniffer run`` (live capture into the detector) and ``mld sniffer flows`` (flows of
capture files).

mld/cli.py registers both through :func:`register`. Exit codes (base/exit_codes.py): 0
success; 1 an ML Defender error; 4 (``flows``) some capture file was rejected, the flows
of every other file (and of the rejected one up to its error) still printed; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from google.protobuf import json_format

from base.errors import MldError
from base.exit_codes import EXIT_OK, EXIT_SOME_FAILED
from base.signals import sigterm_raises_systemexit
from base.terminal import printable
from config import MldConfig, load_config
from crypto_transport import Keyring
from mld.runner import ControlParts, Health, Plane, ServiceParts, run_service
from proto.events_pb2 import EndReason, FlowRecord
from sniffer import dns_windows
from sniffer.config import SnifferConfig
from sniffer.overload import OverloadReport
from sniffer.pipeline import FlowPipeline, ProcessedFlows
from sniffer.publisher import FlowPublisher
from sniffer.service import SnifferService
from sniffer.sources import PcapSource, XdpSource

__all__ = ["record_to_json", "register", "sniffer_control"]

log = logging.getLogger(__name__)

_PROGRESS_MIN_BYTES = 16 * 1024 * 1024  # show progress for inputs at least this big
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 47: "gre", 50: "esp", 132: "sctp"}

SNIFFER_EPILOG = """\
examples:
  mld sniffer run --iface eth0                     attach XDP, send flows to the detector
  mld sniffer flows capture.pcap                   the flows of a capture, with fast-rule scores
More in `mld sniffer run --help` and `mld sniffer flows --help`.
"""

SNIFF_EPILOG = """\
examples:
  mld sniffer run --iface eth0                     attach XDP, send flows to the detector
  mld sniffer run --iface eth0 --iface eth1 --mode generic --connect tcp://10.0.0.5:5571
  mld sniffer run --iface eth0 --no-publish --json-out /tmp/flows.jsonl
                                                   no detector: write records as JSON lines
With control.endpoints set, the sniffer registers in etcd (sniffer/<sensor id>), sends to
the detectors registered there (push) and applies changes of sniffer.rules from etcd while
running (sniffer/README.md, control/README.md).
Stop with Ctrl-C or SIGTERM: the flow table is flushed and the last batch sent.
"""

FLOWS_EPILOG = """\
examples:
  mld sniffer flows capture.pcap                   one line per flow, with the fast rule
  mld sniffer flows /var/log/pcaps/ --limit 50     a folder: its files in name order, one
                                                   flow table (flows continue across files)
  mld sniffer flows capture.pcap --json | jq -c 'select(.fast_score > 0.5)'
  mld sniffer flows capture.pcap --idle-timeout 10 --active-timeout 60
exit status: 0 ok; 1 bad config; 4 a file was rejected (unsupported link type, corrupt,
truncated): the other files, and the rejected one up to the error, are still printed.
"""


STATUS_EPILOG = """\
examples:
  mld sniffer status                               flows, overload mode, losses by reason
  mld sniffer status --json | jq .counters         every counter of /metrics
  mld sniffer status --config /etc/mld/gw.yaml     another metrics.sniffer_port
exit status: 0 ok; 1 no sniffer answers on metrics.sniffer_port (the message says what to
check; `mld status` asks etcd instead).
"""


def _address(raw: bytes) -> str:
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    return raw.hex()


def record_to_json(record: FlowRecord) -> dict[str, Any]:
    """FlowRecord as JSON-ready data: protobuf's JSON mapping with proto field names and
    every field present (64-bit integers as strings, enums by name), except that the two
    addresses are printed as text ("192.0.2.1", "2001:db8::1") instead of base64."""
    out = json_format.MessageToDict(
        record, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out["src_addr"] = _address(record.src_addr)
    out["dst_addr"] = _address(record.dst_addr)
    return out


def _endpoint(addr: bytes, port: int, version: int) -> str:
    text = _address(addr)
    return f"[{text}]:{port}" if version == 6 else f"{text}:{port}"


_HEADER = (
    f"{'time (UTC)':<26} {'proto':<5} {'source':>28}    {'destination':<28} "
    f"{'pkts f/b':>13} {'bytes':>10} {'dur s':>8} {'end':<13} fast"
)


def _human_line(r: FlowRecord) -> str:
    when = dt.datetime.fromtimestamp(r.first_ts_ns / 1e9, tz=dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S.%f"
    )
    proto = _PROTO_NAMES.get(r.protocol, str(r.protocol))
    src = _endpoint(r.src_addr, r.src_port, r.ip_version)
    dst = _endpoint(r.dst_addr, r.dst_port, r.ip_version)
    pkts = f"{r.fwd.packets}/{r.bwd.packets}"
    duration = (r.last_ts_ns - r.first_ts_ns) / 1e9
    end = EndReason.Name(r.end_reason).removeprefix("END_REASON_").lower()
    fast = f"{r.fast_rule} {r.fast_score:.2f}" if r.fast_rule else "-"
    return (
        f"{when:<26} {proto:<5} {src:>28} -> {dst:<28} {pkts:>13} "
        f"{r.fwd.bytes + r.bwd.bytes:>10} {duration:>8.3f} {end:<13} {fast}"
    )


class _FlowPrinter:
    """Prints records as a table or JSON lines, up to a limit."""

    def __init__(self, out: IO[str], as_json: bool, limit: int | None) -> None:
        self.out = out
        self.as_json = as_json
        self.limit = limit
        self.printed = 0
        if not as_json:
            print(_HEADER, file=out)

    @property
    def full(self) -> bool:
        return self.limit is not None and self.printed >= self.limit

    def __call__(self, done: ProcessedFlows) -> None:
        for raw in done.records:
            if self.full:
                return
            record = FlowRecord.FromString(raw)
            if self.as_json:
                self.out.write(json.dumps(record_to_json(record)) + "\n")
            else:
                self.out.write(printable(_human_line(record)) + "\n")
            self.printed += 1


class _Progress:
    """A progress line on stderr (files done, packets read), for big inputs only."""

    def __init__(self, source: PcapSource, enabled: bool) -> None:
        self.source = source
        self.enabled = enabled and source.bytes_total >= _PROGRESS_MIN_BYTES
        self._next = 0.0
        self._start = time.monotonic()

    def __call__(self, done: ProcessedFlows) -> None:
        now = time.monotonic()
        if not self.enabled or now < self._next:
            return
        self._next = now + 0.5
        src = self.source
        done_files = src.files_read + len(src.rejected)
        packets = src.stats()["packets"]
        sys.stderr.write(
            f"\r{done_files}/{len(src.files)} files ({src.bytes_total / 1e6:.1f} MB), "
            f"{packets / 1e6:.2f} M packets, {printable(done.flows.observation_point)}, "
            f"{now - self._start:.0f} s "
        )
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _sniffer_config(args: argparse.Namespace) -> tuple[MldConfig, SnifferConfig]:
    cfg = load_config(args.config)
    cfg.sniffer.rules.check()
    return cfg, cfg.sniffer


def _cmd_flows(args: argparse.Namespace) -> int:
    _cfg, scfg = _sniffer_config(args)
    capture = scfg.capture
    if args.idle_timeout is not None or args.active_timeout is not None:
        capture = dataclasses.replace(
            capture,
            idle_timeout_s=args.idle_timeout or capture.idle_timeout_s,
            active_timeout_s=args.active_timeout or capture.active_timeout_s,
        )
    source = PcapSource(args.paths, capture)
    printer = _FlowPrinter(sys.stdout, args.json, args.limit)
    progress = _Progress(source, enabled=not args.quiet)
    service = SnifferService(
        source,
        FlowPipeline(scfg, dns_windows.for_source(source, scfg.context)),
        None,
        (printer, progress),
        stats_interval_s=3600.0,
    )
    service.stop_when = lambda: printer.full
    sigterm_raises_systemexit()
    try:
        service.run()
    finally:
        progress.end()
    sys.stdout.flush()
    for rejected in source.rejected:
        print(printable(f"mld: rejected {rejected.path}: {rejected.message}"), file=sys.stderr)
    if source.rejected:
        return EXIT_SOME_FAILED
    return EXIT_OK


def _check(cfg: MldConfig) -> None:
    cfg.sniffer.rules.check()


def _control_parts(sensor_id: str, keyring: Keyring | None) -> ControlParts:
    """Registered as sniffer/<sensor_id> with the node's public key, following the
    detectors, applying ``sniffer.rules`` live (other settings need a restart)."""
    return ControlParts(
        component="sniffer",
        instance=sensor_id,
        keyring=keyring,
        watch=("detector",),
        live_keys=("sniffer.rules",),
        validate=_check,
    )


def sniffer_control(
    cfg: MldConfig,
    *,
    sensor_id: str,
    keyring: Keyring | None,
    health: Callable[[], Health] | None = None,
) -> Plane:
    """The sniffer's link to the control plane as ``mld sniffer run`` makes it (does nothing
    without control.endpoints), for code that runs the service its own way (tests)."""
    return _control_parts(sensor_id, keyring).plane(cfg, health)


def _cmd_sniff(args: argparse.Namespace) -> int:
    cfg, scfg = _sniffer_config(args)
    sensor_id = scfg.publish.sensor_id or cfg.node.id or socket.gethostname()
    publishing = (scfg.publish.enabled or args.connect is not None) and not args.no_publish
    # The key file is needed to send, and to publish the public key in etcd.
    keyring = Keyring.from_config(cfg.transport) if publishing or cfg.control.enabled else None

    def build(cfg: MldConfig, plane: Plane, closing: contextlib.ExitStack) -> SnifferService:
        scfg = cfg.sniffer
        capture = scfg.capture
        if args.mode is not None:
            capture = dataclasses.replace(capture, xdp_mode=args.mode)
        publish = scfg.publish
        if args.connect is not None:
            publish = dataclasses.replace(publish, endpoint=args.connect, enabled=True)
        if args.no_publish:
            publish = dataclasses.replace(publish, enabled=False)
        # --connect names the detector: discovery only replaces the configured endpoint.
        discover = plane.enabled and args.connect is None
        publisher = None
        if publish.enabled:
            assert keyring is not None  # loaded above when publishing or with etcd
            publisher = FlowPublisher(
                publish=publish,
                transport=cfg.transport,
                keyring=keyring,
                sensor_id=sensor_id,
                discover=discover,
            )
        sinks: list[_FlowPrinter] = []
        if args.json_out:
            out = open(args.json_out, "a", encoding="utf-8")  # noqa: SIM115 (closing owns it)
            json_out = closing.enter_context(out)
            sinks.append(_FlowPrinter(json_out, True, None))
        if publisher is not None:
            closing.callback(publisher.close)
        source = XdpSource(args.iface, capture, pin_dir=cfg.node.xdp_pin_dir)
        source.open()
        closing.callback(source.close)
        dns = dns_windows.for_source(source, scfg.context)
        if dns is not None:
            closing.callback(dns.close)
        return SnifferService(source, FlowPipeline(scfg, dns), publisher, tuple(sinks))

    def run(service: SnifferService, _plane: Plane) -> None:
        publisher, source = service.publisher, service.source
        log.info(
            "sniffing on %s (%s), %s",
            ", ".join(args.iface),
            source.modes if isinstance(source, XdpSource) else {},
            f"publishing to {publisher.sender.endpoint}" if publisher else "not publishing",
        )
        service.run()

    run_service(
        cfg,
        ServiceParts(
            _control_parts(sensor_id, keyring),
            build=build,
            run=run,
            # XdpSource.open() turns SIGTERM into SystemExit (xdp.monitor), Ctrl-C stays
            # KeyboardInterrupt: SnifferService.run flushes the flow table on both.
            stop="none",
        ),
    )
    return EXIT_OK


class SnifferUnreachable(MldError):
    """No running sniffer answers on its /metrics port."""


def read_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """The sniffer's counters from its /metrics page: ``source.packets`` and the like
    (``mld_sniffer_`` taken off; dots were underscores there, the first one is put back
    between the part and the counter)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise SnifferUnreachable(
            f"no sniffer answers on {url} ({exc}): is `mld sniffer run` running on this host "
            "with the same metrics.sniffer_port (-1 turns /metrics off)? `mld status` asks "
            "etcd instead"
        ) from exc
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("mld_sniffer_") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        name = name.removeprefix("mld_sniffer_")
        part, _, rest = name.partition("_")
        out[f"{part}.{rest}" if rest else part] = float(value)
    return out


def status_lines(c: dict[str, float]) -> list[str]:
    """What `mld sniffer status` prints: flows, overload, losses (counted or not)."""

    def g(k: str) -> int:
        return int(c.get(f"source.{k}", 0))

    flows = (
        f"flows: created {g('flows_created')}, exported {g('flows_exported')} (+ "
        f"{g('interim_exported')} interim), swept {g('swept')}, in the table "
        f"{g('live_flows')}; packets {g('packets')}, blocked {g('blocked_packets')}"
    )
    src = {k.removeprefix("source."): int(v) for k, v in c.items() if k.startswith("source.")}
    now = "on" if g("overloaded") else "off"
    published = int(c.get("publish.records_dropped", 0))
    return [
        f"up: {int(c.get('up', 0))}",
        flows,
        f"overload: {now} now; {OverloadReport.summary(src)}",
        f"publisher: {int(c.get('publish.records_sent', 0))} records sent, {published} "
        "dropped (the detector did not take them in time)",
    ]


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    m = cfg.metrics
    if m.sniffer_port <= 0:
        raise SnifferUnreachable(
            f"metrics.sniffer_port is {m.sniffer_port}: the sniffer serves no /metrics to ask "
            "(set a port, or use `mld status`, which asks etcd)"
        )
    host = "127.0.0.1" if m.host in ("0.0.0.0", "::", "") else m.host
    url = f"http://{host}:{m.sniffer_port}/metrics"
    counters = read_metrics(url)
    if args.json:
        print(json.dumps({"url": url, "counters": counters}, indent=1))
    else:
        print(f"sniffer at {url}")
        print("\n".join(status_lines(counters)))
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``sniffer`` and its actions ``run``, ``flows`` and ``status`` to the ``mld``
    subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    group = sub.add_parser(
        "sniffer",
        parents=[common],
        help="the sniffer: live XDP capture (run), flows of capture files (flows)",
        description="Turn packets into flow records with source context and a fast heuristic "
        "score: live with XDP, sent to the detector (run), or from capture files, printed "
        "(flows).",
        epilog=SNIFFER_EPILOG,
        formatter_class=fmt,
    )
    actions = group.add_subparsers(dest="sniffer_command", metavar="ACTION", required=True)
    sniff = actions.add_parser(
        "run",
        parents=[common],
        help="capture flows live with XDP and send them to the detector",
        description="Attach the XDP flow program to the interfaces, turn finished flows into "
        "records with source context and a fast heuristic score, and send them encrypted to "
        "the detector (sniffer.publish in mld.yaml). Needs root and BCC.",
        epilog=SNIFF_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sniff.add_argument(
        "--iface", action="append", required=True, metavar="DEV", help="interface (repeatable)"
    )
    sniff.add_argument(
        "--mode",
        choices=("auto", "native", "generic"),
        help="XDP attach mode (default: sniffer.capture.xdp_mode)",
    )
    where = sniff.add_mutually_exclusive_group()
    where.add_argument(
        "--connect", metavar="ENDPOINT", help="detector endpoint (default: sniffer.publish)"
    )
    where.add_argument("--no-publish", action="store_true", help="do not send records anywhere")
    sniff.add_argument(
        "--json-out", metavar="FILE", help="also append every record to FILE as JSON lines"
    )
    sniff.set_defaults(func=_cmd_sniff)

    flows = actions.add_parser(
        "flows",
        parents=[common],
        help="print the flows of capture files (offline, no other service needed)",
        description="Read pcap/pcapng files (or folders of them) through the same flow engine "
        "and fast rules as the live sniffer and print one line per flow, or with --json one "
        "JSON object per line holding every FlowRecord field.",
        epilog=FLOWS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flows.add_argument("paths", nargs="+", metavar="FILE|DIR", help="capture files or folders")
    flows.add_argument("--limit", type=int, metavar="N", help="print at most N flows")
    flows.add_argument(
        "--idle-timeout", type=float, metavar="S", help="default: sniffer.capture.idle_timeout_s"
    )
    flows.add_argument(
        "--active-timeout",
        type=float,
        metavar="S",
        help="default: sniffer.capture.active_timeout_s",
    )
    flows.set_defaults(func=_cmd_flows)

    status = actions.add_parser(
        "status",
        parents=[common],
        help="the running sniffer's counters: flows, overload mode, what was lost",
        description="Ask the sniffer running on this host (its /metrics, metrics.sniffer_port) "
        "for its counters: flows created and exported, overload mode (new flows summarised "
        "into flood records, sources admitted), and every loss with its reason (evicted by "
        "the full flow table, ring buffer full, summary map full, publisher) and the new "
        "flows lost without a count (0 is the target). --json prints every counter.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.set_defaults(func=_cmd_status)
