"""``mld watch run DIR``: analyse the capture files dropped into a folder, once each.

mld/cli.py registers it. Exit codes (base/exit_codes.py): 0 done (``--once``: every file
read whole; without it: stopped by Ctrl-C or SIGTERM); 1 an ML Defender error (no such
folder, unreadable state file, event store); 4 some file failed or was cut (``--once``);
2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import socket
from pathlib import Path

from base.errors import WatchError
from base.exit_codes import EXIT_OK, EXIT_SOME_FAILED
from config import MldConfig, load_config
from control import stats_from_other_thread
from mld.runner import ControlParts, Plane, ServiceParts, run_service
from rag.indexed_store import RagStore, db_path
from watch.service import FileResult, RetrainHook, Watcher
from watch.state import WatchState, state_path
from watch.wiring import anomaly_retrain, detection_analyser

__all__ = ["register"]

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  mld watch run /var/captures                 analyse each new capture; Ctrl-C stops
  mld watch run /var/captures --once          what is there now, then exit (4 if one failed)
  mld watch run /srv/drop --poll --settle 30  an NFS/SMB share: poll, wait 30 s of quiet
  mld watch run /var/captures --db /tmp/ev.sqlite --retrain-every 50 --json
  tcpdump -i eth0 -G 300 -w '/var/captures/%Y%m%d-%H%M%S.pcap'   a feed for it

A file is read once it is finished: closed by its writer (inotify) or renamed in, or
unchanged for watch.settle_s with no process holding it open for writing. Only regular
files owned by root, the watcher's user or watch.allowed_owners are read; links, FIFOs
and others' files are refused (logged, left in place). A file that cannot be read goes
to watch.failed_dir (default: beside the state file, never inside DIR) with
NAME.reason.json (a truncated one after its flows up to the cut are stored). Events go
to the RAG store (`mld rag ask` answers about them); every watch.retrain_every_files
files the anomaly model is trained again.
State (files done, counters, last retrain): <node.state_dir>/watch/<hash of DIR>.json.
"""


def _config(args: argparse.Namespace, cfg: MldConfig) -> MldConfig:
    """The file's config with the command line's overrides, and the store it writes."""
    w = cfg.watch
    changes: dict[str, object] = {}
    for name, value in (
        ("settle_s", args.settle),
        ("retrain_every_files", args.retrain_every),
        ("failed_dir", args.failed_dir),
        ("state_file", args.state),
    ):
        if value is not None:
            changes[name] = value
    if args.recursive:
        changes["recursive"] = True
    if changes:
        w = dataclasses.replace(w, **changes)  # type: ignore[arg-type]
    db = Path(args.db) if args.db else db_path(cfg.rag, cfg.node.state_dir)
    # The anomaly retrain reads the same store the watcher writes.
    return dataclasses.replace(cfg, watch=w, rag=dataclasses.replace(cfg.rag, db=str(db)))


def _retrain(cfg: MldConfig) -> RetrainHook:
    """The anomaly model's retrain on the config's event store, into its model folder."""
    return anomaly_retrain(
        cfg.anomaly,
        db_path(cfg.rag, cfg.node.state_dir),
        cfg.anomaly.path(cfg.node.state_dir),
        cfg.detector.model_cache_dir or None,
    )


def _cmd_watch(args: argparse.Namespace) -> int:
    cfg = _config(args, load_config(args.config))
    folder = Path(args.folder).resolve()
    if not folder.is_dir():
        raise WatchError(f"{folder} is not a folder: pass the folder to watch")

    def on_file(result: FileResult) -> None:
        if args.json:
            print(
                json.dumps(
                    {
                        "file": str(result.path),
                        "status": result.status,
                        "flows": result.flows,
                        "alerts": result.alerts,
                        "seconds": round(result.seconds, 3),
                        "reason": result.reason,
                        "moved_to": str(result.moved_to) if result.moved_to else None,
                    }
                ),
                flush=True,
            )

    def build(cfg: MldConfig, _plane: Plane, closing: contextlib.ExitStack) -> Watcher:
        cfg = _config(args, cfg)
        state = WatchState.load(
            state_path(folder, cfg.watch.state_file, cfg.node.state_dir), folder
        )
        store = RagStore(Path(cfg.rag.db), cfg.rag)
        closing.callback(store.close)
        store.open_indexes()
        return Watcher(
            folder,
            cfg.watch,
            store,
            state,
            analyse=detection_analyser(cfg.detector, cfg.sniffer, cfg.watch.sensor),
            retrain=None if args.no_retrain else _retrain(cfg),
            failed_dir=Path(cfg.watch.failed_dir) if cfg.watch.failed_dir else None,
            poll=args.poll,
            on_file=on_file,
        )

    def run(watcher: Watcher, plane: Plane) -> None:
        watcher.run(once=args.once, follow=plane.poll)

    watcher = run_service(
        cfg,
        ServiceParts(
            ControlParts(component="watch", instance=cfg.node.id or socket.gethostname()),
            build=build,
            run=run,
            health=lambda watcher: ("ok", stats_from_other_thread(watcher.stats)),
            attach=None,
            metrics=False,
            stopping="finishing the current file and stopping",
        ),
    )
    counters = watcher.stats()
    summary = " ".join(f"{k}={v}" for k, v in counters.items())
    db = watcher.rag_cfg.db
    log.info("watch stopped: %s (store %s)", summary, db)
    if args.json:
        print(json.dumps({"summary": counters, "db": db, "state": str(watcher.state.path)}))
    return EXIT_SOME_FAILED if args.once and watcher.unreadable else EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``watch`` and its action ``run`` to the ``mld`` subcommands."""
    text = "analyse the capture files dropped into a folder"
    group = sub.add_parser(
        "watch",
        parents=[common],
        help=text,
        description=text,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = group.add_subparsers(dest="watch_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "run",
        parents=[common],
        help=text,
        description="Watch a folder for new .pcap/.pcapng files and run each, once it is "
        "finished, through the whole detection path (flow engine, fast rules, forests); "
        "store its events in the RAG store and train the anomaly model again every few "
        "files. Files that cannot be read are moved aside with the reason. What was done "
        "survives restarts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", metavar="DIR", help="the folder to watch")
    p.add_argument("--once", action="store_true", help="analyse what is there, then exit")
    p.add_argument("--db", metavar="PATH", help="event store (default: rag.db)")
    p.add_argument("--poll", action="store_true", help="scan the folder instead of inotify")
    p.add_argument("--settle", type=float, metavar="S", help="seconds of quiet (watch.settle_s)")
    p.add_argument(
        "--retrain-every",
        type=int,
        metavar="N",
        help="retrain the anomaly model every N files (watch.retrain_every_files; 0 never)",
    )
    p.add_argument("--no-retrain", action="store_true", help="never retrain the anomaly model")
    p.add_argument(
        "--failed-dir",
        metavar="DIR",
        help="where unreadable files go (watch.failed_dir; default: beside the state file)",
    )
    p.add_argument("--state", metavar="FILE", help="state file (watch.state_file)")
    p.add_argument("--recursive", action="store_true", help="subfolders too")
    p.set_defaults(func=_cmd_watch)
