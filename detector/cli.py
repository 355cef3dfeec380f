"""``mld detector run`` (the scoring service, detector/service.py, as a command), and
``mld detector analyze|train|evaluate``.

mld/cli.py registers them through :func:`register`. Exit codes (base/exit_codes.py): 0 done
(``run``: stopped cleanly by SIGTERM, Ctrl-C, or ``--max-batches`` reached); 1 an ML
Defender error (config, key file, model bundle, endpoint, no benign folder); 4
(``analyze``) some capture file was rejected, the others analysed; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING

from base.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED
from config import load_config
from config.settings import MldConfig
from detector.analysis import AnalysisStats, analyze_captures, batch_verdicts
from detector.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from detector.config import DetectorConfig
from detector.dataset import LAB_TEST_DEFAULT, discover
from detector.evaluate import evaluate, render_evaluation
from detector.eve import EveWriter
from detector.jsonlines import LineWriter, alert_counts, analysis_rows
from detector.loto import leave_one_tool_out, render_loto
from detector.raised import RaisedFlows
from detector.scoring import Scorer
from detector.suricata import run_suricata, suricata_version
from detector.train import train_bundle
from proto.events_pb2 import FlowRecord

if TYPE_CHECKING:
    from detector.service import DetectorService
    from mld.runner import Plane

__all__ = ["analysis_rows", "register", "register_detect"]

log = logging.getLogger(__name__)

DETECTOR_EPILOG = """\
examples:
  mld detector run                              score the sniffers' flows, send verdicts
  mld detector analyze capture.pcap             detect attacks in a capture, offline
  mld detector train --shared ../shared/data --out /tmp/bundle
  mld detector evaluate ../shared/data/labels.csv
More in `mld detector ACTION --help`.
"""
ANALYZE_EPILOG = """\
examples:
  mld detector analyze capture.pcap             one JSON object per flow on stdout
  mld detector analyze /data/pcaps/ --out flows.jsonl
                                                a folder, in name order, to a file
  mld detector analyze capture.pcap --alerts-only | jq 'select(.family=="scan")'
  mld detector analyze capture.pcap --bundle ./my-bundle --quiet
  mld detector analyze capture.pcap --alerts-only --eve eve.json
                                                Suricata EVE alerts for a SIEM, EveBox, jq
exit status: 0 ok; 1 bad config or bundle; 4 a file was rejected (the others are analysed).
"""
TRAIN_EPILOG = """\
examples:
  make lab-dataset                              capture the lab dataset first (~35 min)
  mld detector train --lab build/lab-data/default --shared ../shared/data --out detector/bundle
  mld detector train --shared ../shared/data --out /tmp/bundle --trees 8 --depth 8
                                                quick, shared captures only
"""
EVALUATE_EPILOG = """\
examples:
  mld detector evaluate ../shared/data/labels.csv
                                                shared attacks + nDPI benign (held-out only)
  mld detector evaluate ../shared/data/labels.csv --json
  mld detector evaluate ../shared/data/labels.csv --calibrate --show-benign
                                                per-family thresholds for <=0.5% false alerts
  mld detector evaluate ../shared/data/labels.csv --no-suricata
  mld detector evaluate ../shared/data/labels.csv --leave-one-tool-out
                                                train without each tool, test on it
                                                without the Suricata + ET Open column
  mld detector evaluate build/lab-data/default/07-mixed-seed8/labels.csv --no-benign
"""


def _bundle(cfg: MldConfig, given: str | None) -> tuple[Path, Path | None]:
    bundle = Path(given) if given else Path(cfg.detector.bundle_dir or DEFAULT_BUNDLE_DIR)
    cache = Path(cfg.detector.model_cache_dir) if cfg.detector.model_cache_dir else None
    return bundle, cache


def _scorer(cfg: MldConfig, given: str | None) -> Scorer:
    bundle_dir, cache = _bundle(cfg, given)
    bundle = load_bundle(bundle_dir, cache, cfg.detector.predict_threads)
    return Scorer(bundle, cfg.detector.thresholds, cfg.detector.top_features)


class _Progress:
    """A status line on stderr every 2 s: files, packets, flows, rate."""

    def __init__(self, stats: AnalysisStats, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled and sys.stderr.isatty()
        self._next = time.monotonic() + 2.0

    def tick(self) -> None:
        if not self.enabled or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 2.0
        s = self.stats
        print(
            f"\ranalyze: file {s.files_read + 1}/{s.files}, {s.packets} packets, {s.flows} "
            f"flows, {s.packets_per_s:,.0f} packets/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def end(self) -> None:
        if self.enabled:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _summary(stats: AnalysisStats, alerts: Counter[tuple[str, str]], out: IO[str]) -> None:
    print(
        f"flows {stats.flows}, packets {stats.packets}, files {stats.files_read}/{stats.files}"
        f" read, {stats.seconds:.2f} s, {stats.packets_per_s:,.0f} packets/s",
        file=out,
    )
    families = sorted({fam for fam, _ in alerts})
    if not families:
        print("no alerts", file=out)
        return
    print(f"{'family':12s} {'suspicious':>10s} {'malicious':>10s}", file=out)
    for fam in families:
        print(
            f"{fam:12s} {alerts[(fam, 'suspicious')]:10d} {alerts[(fam, 'malicious')]:10d}",
            file=out,
        )


def _cmd_analyze(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    sniffer = cfg.sniffer
    if args.idle_timeout is not None:
        capture = dataclasses.replace(sniffer.capture, idle_timeout_s=args.idle_timeout)
        sniffer = dataclasses.replace(sniffer, capture=capture)
    scorer = _scorer(cfg, args.bundle)
    eve = EveWriter(args.eve, flows=args.eve_flows) if args.eve else None
    raised = RaisedFlows(cfg.detector.raised_flows_max)
    sensor = cfg.node.id or socket.gethostname()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    stats = AnalysisStats()
    progress = _Progress(stats, enabled=not args.quiet)
    alerts: Counter[tuple[str, str]] = Counter()
    jobs = args.jobs if args.jobs is not None else 1
    lines = LineWriter(out, alerts_only=args.alerts_only, jobs=jobs)
    try:
        for batch in analyze_captures(args.paths, sniffer, scorer, stats, records=eve is not None):
            assert batch.scores is not None
            if eve is not None:
                flows = [FlowRecord.FromString(b) for b in batch.records]
                verdicts = batch_verdicts(batch, flows, sensor, first_id=stats.flows - len(flows))
                # Once per flow, as the live detector: interim records alert no more.
                labels = [v.label for v in verdicts]
                eve.write(verdicts, flows, sensor, alert=raised.select(flows, labels, sensor))
            alerts.update(alert_counts(batch))
            lines.write(batch)
            progress.tick()
        lines.close()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as other Unix tools do.
        lines.abort()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        lines.abort()
        progress.end()
        if eve is not None:
            eve.close()
        if out is not sys.stdout:
            out.close()
        else:
            sys.stdout.flush()
    if not args.quiet:
        _summary(stats, alerts, sys.stderr)
    for rejected in stats.rejected:
        print(f"mld: rejected {rejected.path}: {rejected.message}", file=sys.stderr)
    return EXIT_SOME_FAILED if stats.rejected else EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    train = cfg.detector.train
    if args.trees is not None:
        train = dataclasses.replace(train, n_trees=args.trees, n_trees_per_family={})
    if args.depth is not None:
        train = dataclasses.replace(train, max_depth=args.depth, max_depth_per_family={})
    if args.seed is not None:
        train = dataclasses.replace(train, seed=args.seed)
    lab = Path(args.lab) if args.lab else None
    shared = Path(args.shared) if args.shared else None
    captures = discover(lab, shared, tuple(args.test_capture or LAB_TEST_DEFAULT))
    _bundle_dir, cache = _bundle(cfg, None)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.quiet else None
    result = train_bundle(
        captures, Path(args.out), cfg.sniffer, train, cfg.detector.thresholds.alert, cache, say
    )
    if args.json:
        print(
            json.dumps(
                {"version": result.manifest.version, "out": args.out, "metrics": result.metrics}
            )
        )
    else:
        print(result.report)
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    labels = Path(args.labels)
    benign: Path | None = None
    if not args.no_benign:
        benign = Path(args.benign) if args.benign else labels.parent / "pcaps" / "ndpi"
        if not benign.is_dir():
            print(
                f"mld: no benign folder {benign}; pass --benign DIR or --no-benign", file=sys.stderr
            )
            return EXIT_ERROR
    scorer = _scorer(cfg, args.bundle)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else None
    run_sur = None
    rules = (
        Path(args.suricata_rules) if args.suricata_rules else labels.parent / "rules" / "et-open"
    )
    if not args.no_suricata:
        version = suricata_version()
        if version is None:
            print(
                "mld: Suricata 7 is not installed, the suricata column is left empty "
                "(bash bench/setup-peers.sh installs it; --no-suricata to skip)",
                file=sys.stderr,
            )
        elif not rules.is_dir():
            print(
                f"mld: no rule folder {rules}, the suricata column is left empty "
                "(--suricata-rules DIR)",
                file=sys.stderr,
            )
        else:
            run_sur = functools.partial(run_suricata, rules_dir=rules)
    result = evaluate(
        labels,
        benign,
        cfg.sniffer,
        scorer,
        say,
        suricata=run_sur,
        calibrate_budget=args.calibrate,
    )
    loto = None
    if args.leave_one_tool_out:
        train = cfg.detector.train
        if args.trees is not None:
            train = dataclasses.replace(train, n_trees=args.trees, n_trees_per_family={})
        captures = discover(Path(args.lab) if args.lab else None, labels.parent)
        loto = leave_one_tool_out(captures, cfg.sniffer, train, cfg.detector.thresholds, say)
    if args.json:
        doc = result.to_json(args.include_trained)
        if loto is not None:
            doc["leave_one_tool_out"] = [r.to_json() for r in loto]
        print(json.dumps(doc))
    else:
        shown = ("attack", "benign-alerts") if args.show_benign else ("attack",)
        print(render_evaluation(result, args.include_trained, shown), end="")
        if loto is not None:
            print()
            print(render_loto(loto), end="")
    return EXIT_OK


DETECT_EPILOG = """\
examples:
  mld detector run                           score the sniffer's flows (detector.listen),
                                             verdicts to the firewall, events to the RAG store
  mld detector run --bundle /var/lib/mld/bundle
                                             serve that bundle; copying a new bundle into the
                                             folder swaps it in without a restart
  mld detector run --listen tcp://0.0.0.0:5571 --verdicts tcp://10.0.0.7:5572 --no-events
  mld detector run --no-verdicts --no-events -v
                                             score and count only (nothing is sent)
  mld detector run --max-batches 100 --json  stop after 100 batches, counters as JSON
  mld detector run --eve /var/log/mld/eve.json
                                             alerts as EVE-like JSON lines for log shippers
  mld detector run --listen 'tcp://127.0.0.1:*'
                                             any free port; with control.endpoints set the
                                             real one is registered in etcd for the sniffers
With anomaly.enabled, the anomaly model that `mld anomaly run` publishes is scored too
(family "anomaly", alert-only unless anomaly.block) and swapped in when a new one appears.
With control.endpoints set, the detector registers in etcd (detector/<id>), sends verdicts
and events to the firewall agents and RAG stores registered there, and applies changes of
detector.thresholds and detector.top_features from etcd while running (control/README.md).
Stop with Ctrl-C or SIGTERM: the batch in flight and those already received are scored
and sent (a second Ctrl-C stops at once).
exit status: 0 stopped cleanly; 1 bad config, key file, model bundle or endpoint; 2 usage.
"""


def _detector_config(args: argparse.Namespace, dcfg: DetectorConfig) -> DetectorConfig:
    replace = dataclasses.replace
    if args.bundle is not None:
        dcfg = replace(dcfg, bundle_dir=args.bundle)
    if args.reload_interval is not None:
        dcfg = replace(dcfg, reload_interval_s=args.reload_interval)
    if args.listen is not None:
        dcfg = replace(dcfg, listen=replace(dcfg.listen, endpoint=args.listen))
    if args.verdicts is not None:
        dcfg = replace(dcfg, verdicts=replace(dcfg.verdicts, endpoint=args.verdicts, enabled=True))
    if args.no_verdicts:
        dcfg = replace(dcfg, verdicts=replace(dcfg.verdicts, enabled=False))
    if args.events is not None:
        dcfg = replace(dcfg, events=replace(dcfg.events, endpoint=args.events, enabled=True))
    if args.no_events:
        dcfg = replace(dcfg, events=replace(dcfg.events, enabled=False))
    if args.eve is not None:
        dcfg = replace(dcfg, eve_log=args.eve)
    return dcfg


def _check(cfg: MldConfig) -> None:
    cfg.detector.thresholds.check()


def _cmd_detect(args: argparse.Namespace) -> int:
    # Imported here: the live service's transport, etcd client and metrics are not needed
    # by the offline commands, which start faster without them.
    from control import Endpoint
    from crypto_transport import Keyring
    from detector.service import DetectorService
    from mld.runner import ControlParts, ServiceParts, run_service

    cfg = load_config(args.config)
    cfg.detector.thresholds.check()
    detector_id = cfg.detector.detector_id or cfg.node.id or socket.gethostname()
    keyring = Keyring.from_config(cfg.transport)

    def build(cfg: MldConfig, plane: Plane, closing: contextlib.ExitStack) -> DetectorService:
        service = DetectorService.from_config(
            _detector_config(args, cfg.detector),
            cfg.transport,
            keyring,
            detector_id,
            discover=plane.enabled,
            anomaly=cfg.anomaly,
            state_dir=cfg.node.state_dir,
        )
        closing.callback(service.close)
        return service

    def endpoints(service: DetectorService) -> dict[str, Endpoint]:
        listen = service.config.listen
        if listen.pattern == "pull" and listen.bind is not False:
            return {"flows": Endpoint(service.receiver.bound_endpoint, "push", listen.channel)}
        return {}

    service = run_service(
        cfg,
        ServiceParts(
            ControlParts(
                component="detector",
                instance=detector_id,
                keyring=keyring,
                watch=("firewall", "rag"),
                live_keys=("detector.thresholds", "detector.top_features"),
                validate=_check,
            ),
            build=build,
            endpoints=endpoints,
            registry=lambda service: service.registry,
            stopping="finishing the batch in flight and stopping",
            second_sigint_interrupts=True,
            run=lambda service, _plane: service.run(max_batches=args.max_batches),
        ),
    )
    if args.json:
        print(json.dumps({"model_version": service.model_version, **service.stats()}))
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value


def register_detect(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``run`` to the actions of ``mld detector``."""
    detect = sub.add_parser(
        "run",
        parents=[common],
        help="score the sniffer's flows and send verdicts and events",
        description="Receive encrypted FlowBatches from the sniffers (detector.listen), score "
        "every flow with the model bundle's compiled forests (final_score = max(fast_score, "
        "ml_score)), send the verdicts at or above the block threshold to the firewall "
        "(detector.verdicts) and every scored flow to the RAG store (detector.events). The "
        "bundle folder is watched: a new bundle is swapped in between two batches, a bad one "
        "is refused and the running one keeps serving.",
        epilog=DETECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    detect.add_argument(
        "--listen", metavar="ENDPOINT", help="where flow batches arrive (default: detector.listen)"
    )
    detect.add_argument(
        "--bundle", metavar="DIR", help="model bundle folder (default: detector.bundle_dir)"
    )
    detect.add_argument(
        "--reload-interval",
        type=float,
        metavar="S",
        help="seconds between looks at the bundle folder, 0 to not watch "
        "(default: detector.reload_interval_s)",
    )
    verdicts = detect.add_mutually_exclusive_group()
    verdicts.add_argument(
        "--verdicts", metavar="ENDPOINT", help="firewall endpoint (default: detector.verdicts)"
    )
    verdicts.add_argument(
        "--no-verdicts", action="store_true", help="do not send verdicts (count them only)"
    )
    events = detect.add_mutually_exclusive_group()
    events.add_argument(
        "--events", metavar="ENDPOINT", help="RAG store endpoint (default: detector.events)"
    )
    events.add_argument(
        "--no-events", action="store_true", help="do not send scored events (count them only)"
    )
    detect.add_argument(
        "--eve",
        metavar="PATH",
        help="append alerts as EVE-like JSON lines to PATH (default: detector.eve_log)",
    )
    detect.add_argument(
        "--max-batches",
        type=_positive_int,
        metavar="N",
        help="stop after N flow batches (smoke tests, benchmarks)",
    )
    detect.set_defaults(func=_cmd_detect)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``detector`` and its actions ``run``, ``analyze``, ``train`` and ``evaluate`` to
    the ``mld`` subcommands."""
    group = sub.add_parser(
        "detector",
        parents=[common],
        help="the detector: score flows live (run), offline (analyze); train, evaluate",
        description="Score flows with the model bundle's compiled forests and the fast rules: "
        "live, from the sniffers, sending verdicts and events (run), or offline on capture "
        "files (analyze); train a bundle (train) and measure it on labelled captures "
        "(evaluate).",
        epilog=DETECTOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = group.add_subparsers(dest="detector_command", metavar="ACTION", required=True)
    register_detect(actions, common)
    analyze = actions.add_parser(
        "analyze",
        parents=[common],
        help="detect attacks in capture files, offline, with no other service",
        description="Run the whole detection path on pcap/pcapng files or folders in one "
        "process: flow engine, fast rules, the model bundle's forests, scoring. Writes one "
        "JSON object per flow (src_ip, src_port, dst_ip, dst_port, proto, first_ts, last_ts, "
        "packets, bytes, fast_score, fast_rule, ml_score, family, final_score, label, "
        "top_features, ...) and a summary on stderr. No root, etcd or lab needed. Exit 4 if "
        "a file could not be read (the others are still analysed).",
        epilog=ANALYZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analyze.add_argument("paths", nargs="+", metavar="FILE|DIR", help="capture files or folders")
    analyze.add_argument("--out", metavar="FILE", help="write the JSON lines here (default stdout)")
    analyze.add_argument("--alerts-only", action="store_true", help="write only non-benign flows")
    analyze.add_argument(
        "--bundle", metavar="DIR", help="model bundle (default: detector.bundle_dir)"
    )
    analyze.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="processes that make the JSON lines beside the one reading and scoring "
        "(default 1: all in one process; the lines are made in native code, so more "
        "workers mostly copy text between processes). The output is the same",
    )
    analyze.add_argument(
        "--idle-timeout", type=float, metavar="S", help="default: sniffer.capture.idle_timeout_s"
    )
    analyze.add_argument(
        "--eve",
        metavar="FILE",
        help="also append the alerts to FILE as Suricata EVE JSON (validates against "
        "Suricata's schema; signature ids in detector/eve.py)",
    )
    analyze.add_argument(
        "--eve-flows", action="store_true", help="with --eve: a flow event for every flow too"
    )
    analyze.set_defaults(func=_cmd_analyze)

    train = actions.add_parser(
        "train",
        parents=[common],
        help="train the family forests and write a model bundle",
        description="Train one RandomForest per family on labelled lab captures (mld lab "
        "dataset output) and the shared captures, split by capture into training and "
        "held-out sets; write the bundle (treelite checkpoints, manifest, REPORT.md), compile "
        "it and check the compiled forests against sklearn. Prints the held-out report.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--lab", metavar="DIR", help="lab dataset folder (mld lab dataset --out)")
    train.add_argument("--shared", metavar="DIR", help="shared captures (../shared/data)")
    train.add_argument("--out", metavar="DIR", required=True, help="bundle folder to write")
    train.add_argument(
        "--test-capture",
        action="append",
        metavar="NAME",
        help=f"lab capture folder to hold out (repeatable; default {', '.join(LAB_TEST_DEFAULT)})",
    )
    train.add_argument(
        "--trees", type=int, metavar="N", help="trees of every family (default: detector.train)"
    )
    train.add_argument(
        "--depth", type=int, metavar="N", help="depth of every family (default: detector.train)"
    )
    train.add_argument("--seed", type=int, metavar="N", help="default: detector.train.seed")
    train.set_defaults(func=_cmd_train)

    ev = actions.add_parser(
        "evaluate",
        parents=[common],
        help="detection and false-positive rates on labelled captures",
        description="Analyse every capture a labels file names (columns pcap, family, "
        "attack_hosts, scope as in ../shared/data/labels.csv) and a folder of benign "
        "captures (default: pcaps/ndpi beside the labels file, risk-flagged flows left out). "
        "Prints the detection rate per family and the false-positive rate on benign flows. "
        "Captures the bundle was trained on are listed but not counted.",
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("labels", metavar="LABELS.csv", help="labels file")
    ev.add_argument("--benign", metavar="DIR", help="benign captures (default: pcaps/ndpi)")
    ev.add_argument("--no-benign", action="store_true", help="attack captures only")
    ev.add_argument(
        "--include-trained",
        action="store_true",
        help="count captures the bundle was trained on too (marked)",
    )
    ev.add_argument("--bundle", metavar="DIR", help="model bundle (default: detector.bundle_dir)")
    ev.add_argument(
        "--suricata-rules",
        metavar="DIR",
        help="rule folder for the Suricata column (default: rules/et-open beside the labels)",
    )
    ev.add_argument("--no-suricata", action="store_true", help="leave the Suricata column out")
    ev.add_argument(
        "--calibrate",
        type=float,
        nargs="?",
        const=0.005,
        metavar="BUDGET",
        help="choose per-family alert/block thresholds on half of the held-out benign "
        "captures (at most BUDGET of their flows alerting, default 0.005; no benign source "
        "blocked) and report the other half with them",
    )
    ev.add_argument(
        "--leave-one-tool-out",
        action="store_true",
        help="also train without each tool of every family with two tools or more and "
        "test on it (the labels folder must hold pcaps/ndpi, as ../shared/data does; "
        "a few minutes)",
    )
    ev.add_argument(
        "--lab", metavar="DIR", help="lab dataset to train on too (--leave-one-tool-out)"
    )
    ev.add_argument(
        "--trees",
        type=int,
        metavar="N",
        help="trees of every family for --leave-one-tool-out (default: detector.train)",
    )
    ev.add_argument(
        "--show-benign",
        action="store_true",
        help="list the benign captures with alerts too",
    )
    ev.set_defaults(func=_cmd_evaluate)
