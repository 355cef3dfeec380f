"""``mld detector run``: the scoring service (detector/service.py) as a command.

detector/cli.py registers it through :func:`register_detect`. Exit codes
(base/exit_codes.py): 0 stopped cleanly (SIGTERM, Ctrl-C, or ``--max-batches`` reached);
1 an ML Defender error (config, key file, model bundle, endpoint); 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket

from base.exit_codes import EXIT_OK
from base.metrics import MetricsServer, serve_metrics
from config import MldConfig, load_config
from control import Endpoint, ServiceControl
from crypto_transport import Keyring
from detector.config import DetectorConfig
from detector.service import DetectorService, stop_on_signals

__all__ = ["register_detect"]

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
    cfg = load_config(args.config)
    cfg.detector.thresholds.check()
    detector_id = cfg.detector.detector_id or cfg.node.id or socket.gethostname()
    keyring = Keyring.from_config(cfg.transport)
    service: DetectorService | None = None
    metrics: MetricsServer | None = None
    plane = ServiceControl(
        cfg,
        component="detector",
        instance=detector_id,
        keyring=keyring,
        watch=("firewall", "rag"),
        live_keys=("detector.thresholds", "detector.top_features"),
        validate=_check,
        health=lambda: service.health() if service is not None else ("starting", {}),
    )
    try:
        cfg = plane.start()
        dcfg = _detector_config(args, cfg.detector)
        service = DetectorService.from_config(
            dcfg,
            cfg.transport,
            keyring,
            detector_id,
            discover=plane.enabled,
            anomaly=cfg.anomaly,
            state_dir=cfg.node.state_dir,
        )
        listen = dcfg.listen
        if listen.pattern == "pull" and listen.bind is not False:
            plane.announce(
                {"flows": Endpoint(service.receiver.bound_endpoint, "push", listen.channel)}
            )
        else:
            plane.announce()
        service.attach_control(plane)
        metrics = serve_metrics("detector", cfg.metrics, service.health, service.registry)
        stop_on_signals(service)
        service.run(max_batches=args.max_batches)
    finally:
        plane.close()
        if metrics is not None:
            metrics.close()
        if service is not None:
            service.close()
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
