"""``mld anomaly train | run | status``: the adaptive anomaly model.

Exit codes (base/exit_codes.py): 0 done (trained and swapped, or skipped for want of
flows; run stopped cleanly); 1 an ML Defender error (config, no event store); 2 usage; 3
``train`` built a model and refused it (the reason is printed; the serving model is
unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import time
from pathlib import Path

from base.exit_codes import EXIT_OK, EXIT_REFUSED
from config import MldConfig, load_config

__all__ = ["register"]

EPILOG = """\
examples:
  mld anomaly train                     train once on the RAG store's window, swap or refuse
  mld anomaly train --db /var/lib/mld/rag/events.sqlite --model-dir /tmp/anomaly --json
  mld anomaly run                       retrain every anomaly.retrain_interval_s (own process)
  mld anomaly run --interval 600        ... every 10 minutes
  mld anomaly status                    the serving model and the last decisions
  mld anomaly status --json
The detector scores the model with anomaly.enabled: true (mld detector run), family "anomaly",
alert-only unless anomaly.block. A new model is refused, and the old one keeps serving,
when it flags more than anomaly.max_worse more of the held-back window flows than the
running one, or does not compile or load.
exit status: 0 done; 1 bad config or no event store; 2 usage; 3 train refused the model.
"""


def _paths(args: argparse.Namespace, cfg: MldConfig) -> tuple[Path, Path]:
    from rag.indexed_store import db_path

    db = Path(args.db) if getattr(args, "db", None) else db_path(cfg.rag, cfg.node.state_dir)
    model_dir = Path(args.model_dir) if args.model_dir else cfg.anomaly.path(cfg.node.state_dir)
    return db, model_dir


def _cmd_train(args: argparse.Namespace) -> int:
    from anomaly.train import retrain

    cfg = load_config(args.config)
    cfg.anomaly.check()
    db, model_dir = _paths(args, cfg)
    decision = retrain(cfg.anomaly, db, model_dir, cfg.detector.model_cache_dir or None)
    if args.json:
        print(json.dumps(decision.to_json()))
    else:
        w = decision.window
        print(decision.summary())
        print(
            f"window: {w.get('rows', 0)} flows ({w.get('fit_rows', 0)} fitted, "
            f"{w.get('holdout_rows', 0)} held back); read {decision.read_s} s, fit "
            f"{decision.fit_s} s, compile+load {decision.compile_s} s, total {decision.total_s} s"
        )
    return EXIT_REFUSED if decision.action == "refuse" else EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from anomaly.service import AnomalyService
    from mld.runner import ControlParts, Plane, ServiceParts, run_service

    cfg = load_config(args.config)
    cfg.anomaly.check()

    def build(cfg: MldConfig, _plane: Plane, _closing: contextlib.ExitStack) -> AnomalyService:
        db, model_dir = _paths(args, cfg)
        return AnomalyService(
            cfg.anomaly,
            db,
            model_dir,
            cfg.detector.model_cache_dir or None,
            interval_s=args.interval,
        )

    service = run_service(
        cfg,
        ServiceParts(
            ControlParts(component="anomaly", instance=cfg.node.id or socket.gethostname()),
            build=build,
            run=lambda service, _plane: service.run(max_rounds=args.max_rounds),
            metrics=False,
            stopping="stopping after the training in progress",
            second_sigint_interrupts=True,
        ),
    )
    if args.json:
        print(json.dumps(service.stats()))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from anomaly.versions import ModelDir

    cfg = load_config(args.config)
    _db, path = _paths(args, cfg)
    md = ModelDir(path)
    history = md.history()[-args.last :]
    serving = md.current_version()
    if args.json:
        print(json.dumps({"model_dir": str(path), "serving": serving, "history": history}))
        return EXIT_OK
    print(f"model folder {path}: serving {serving or 'none'}")
    for d in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(d.get("ts", 0))))
        print(f"  {when}Z {d.get('action')} {d.get('version') or '-'}: {d.get('reason')}")
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``anomaly`` to the ``mld`` subcommands."""
    anomaly = sub.add_parser(
        "anomaly",
        parents=[common],
        help="the adaptive anomaly model: train, run (retrain on a schedule), status",
        description="An isolation forest over the flow features of recent traffic (a "
        "sliding window of the RAG event store), compiled to native code and swapped into "
        "running detectors after a check on held-back flows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = anomaly.add_subparsers(dest="anomaly_command", metavar="ACTION", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--model-dir", metavar="DIR", help="model folder (default: anomaly.model_dir)"
        )
        return p

    train = action("train", "train once on the store's window; swap the model in or refuse it")
    train.add_argument("--db", metavar="PATH", help="event store (default: the RAG store's)")
    train.set_defaults(func=_cmd_train)

    serve = action("run", "retrain every anomaly.retrain_interval_s, in its own process")
    serve.add_argument("--db", metavar="PATH", help="event store (default: the RAG store's)")
    serve.add_argument("--interval", type=float, metavar="S", help="seconds between trainings")
    serve.add_argument(
        "--max-rounds", type=int, metavar="N", help="stop after N trainings (smoke tests)"
    )
    serve.set_defaults(func=_cmd_serve)

    status = action("status", "the serving model and the last decisions (history.json)")
    status.add_argument("--last", type=int, default=10, metavar="N", help="decisions shown")
    status.set_defaults(func=_cmd_status)
