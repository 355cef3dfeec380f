"""``mld firewall``: run the agent, or list, unblock and flush through a running one.

Exit codes (base/exit_codes.py): 0 done; 1 an ML Defender error (config, backend, no
agent running) or the agent refused the request; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from base.errors import FirewallError, TransportError
from base.exit_codes import EXIT_ERROR, EXIT_OK
from base.terminal import printable
from config import MldConfig, load_config
from control import Endpoint, output_sender
from crypto_transport import ChannelEnd, Keyring, open_receiver, replay_state_path
from detector.eve import EveWriter
from firewall.allowlist import automatic_allowlist
from firewall.backends import choose_backend
from firewall.config import FirewallConfig
from firewall.decision_log import DecisionLog
from firewall.policy import LIVE_SETTINGS, Policy
from firewall.publish import DecisionPublisher
from firewall.service import FirewallAgent
from mld.runner import ControlParts, Plane, ServiceParts, run_service
from proto.events_pb2 import VerdictBatch

__all__ = ["control_request", "register"]

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  mld firewall run                          the agent: verdicts from the detector -> blocks
  mld firewall run --dry-run                log every decision, apply none
  mld firewall run --backend nftables       force the nftables fallback
  mld firewall list                         active blocks: address, reason, scores, expiry
  mld firewall list --json
  mld firewall unblock 203.0.113.66         lift one block now
  mld firewall flush                        lift every block the agent holds
  mld firewall status --json                backend and counters
  mld firewall run --listen 'tcp://127.0.0.1:*'
                                            any free port; with control.endpoints set the
                                            real one is registered in etcd for the detectors
With control.endpoints set, the agent registers in etcd (firewall/<node id>) and applies
changes of the thresholds, TTLs, allowlist and new-block rate from etcd while running:
  etcdctl put /mld/config/firewall/ttl_base_s 600
  etcdctl get /mld/status/firewall/<node id>/config
"""


def _control_path(cfg: MldConfig) -> Path:
    return cfg.firewall.control_socket_path(cfg.node.state_dir)


def control_request(path: Path, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request to a running agent's control socket and return its reply."""
    if not path.exists():
        raise FirewallError(
            f"no firewall agent is running (no control socket {path}): start one with "
            "`mld firewall run`, or pass the same --config it uses"
        )
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{path}")
        sock.send(json.dumps(request).encode())
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise FirewallError(
                f"the firewall agent did not answer on {path} within {timeout_s:.0f} s: is it "
                "stuck or gone? (a stale socket is removed when the agent starts again)"
            )
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close(linger=0)
        ctx.term()


def _live_keys() -> tuple[str, ...]:
    return tuple(f"firewall.{name}" for name in LIVE_SETTINGS)


def _check(cfg: MldConfig) -> None:
    cfg.firewall.check()


def _firewall_config(args: argparse.Namespace, cfg: MldConfig) -> FirewallConfig:
    changes: dict[str, Any] = {}
    if args.dry_run:
        changes["dry_run"] = True
    if args.backend:
        changes["backend"] = args.backend
    if args.listen:
        changes["listen_endpoint"] = args.listen
    fw = dataclasses.replace(cfg.firewall, **changes)
    fw.check()
    return fw


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _firewall_config(args, cfg)  # a bad file or option fails before etcd is asked
    agent_id = cfg.node.id or socket.gethostname()
    keyring = Keyring.from_config(cfg.transport)

    def build(cfg: MldConfig, plane: Plane, closing: contextlib.ExitStack) -> FirewallAgent:
        fw = _firewall_config(args, cfg)
        auto = automatic_allowlist(fw.auto_allowlist)
        policy = Policy(fw, allowlist_extra=auto.networks())
        backend, why = choose_backend(fw, cfg.node.xdp_pin_dir)
        log.info("firewall agent %s: backend %s", agent_id, why)
        log.info("allowlist: %s; automatic: %s", ", ".join(fw.allowlist), auto.describe())
        if auto.unresolved_ntp:
            log.warning(
                "NTP servers given by name are not allowlisted (names are not resolved): %s;"
                " add their addresses to firewall.allowlist",
                ", ".join(auto.unresolved_ntp),
            )
        decisions = DecisionLog(fw.decision_log_path(cfg.node.state_dir))
        receiver = open_receiver(
            ChannelEnd(fw.listen_endpoint, fw.listen_pattern, fw.channel, fw.listen_bind),
            VerdictBatch,
            keyring=keyring,
            settings=cfg.transport,
            replay_state=replay_state_path(cfg.node.state_dir, f"firewall-{agent_id}", fw.channel),
        )
        eve = EveWriter(fw.eve_log) if fw.eve_log else None
        publisher = _publisher(cfg, fw, agent_id, keyring, discover=plane.enabled)
        agent = FirewallAgent(
            fw, policy, backend, decisions, receiver, _control_path(cfg),
            eve=eve, agent_id=agent_id, publisher=publisher,
        )  # fmt: skip
        closing.callback(_stopped, agent, args.json)
        agent.restore()
        return agent

    def endpoints(agent: FirewallAgent) -> dict[str, Endpoint]:
        fw, receiver = agent.config, agent.receiver
        if receiver is not None and fw.listen_pattern == "pull" and fw.listen_bind is not False:
            return {"verdicts": Endpoint(receiver.bound_endpoint, "push", fw.channel)}
        return {}

    def run(agent: FirewallAgent, _plane: Plane) -> None:
        if agent.receiver is not None:
            log.info("listening for verdicts on %s", agent.receiver.bound_endpoint)
        agent.run()

    run_service(
        cfg,
        ServiceParts(
            ControlParts(
                component="firewall",
                instance=agent_id,
                keyring=keyring,
                live_keys=_live_keys(),
                validate=_check,
                # The RAG stores the decisions go to (firewall.blocks follows them).
                watch=("rag",),
            ),
            build=build,
            endpoints=endpoints,
            stop="exit",
            run=run,
        ),
    )
    return EXIT_OK


def _publisher(
    cfg: MldConfig, fw: FirewallConfig, agent_id: str, keyring: Keyring, *, discover: bool
) -> DecisionPublisher | None:
    """The sender of decisions to the RAG store, or None (disabled, or no key for its
    recipient: blocking goes on, the console just cannot tell about blocks)."""
    if not fw.blocks.enabled:
        return None
    try:
        sender = output_sender(
            fw.blocks,
            sender_id=agent_id,
            keyring=keyring,
            settings=cfg.transport,
            discover=discover,
            component="rag",
            endpoint_name="blocks",
        )
    except TransportError as exc:
        log.warning(
            "decisions are not sent to the RAG store (%s); fix transport.peers, or set "
            "firewall.blocks.enabled: false to silence this",
            exc,
        )
        return None
    log.info("decisions to the RAG store on %s (channel %s)", fw.blocks.endpoint, fw.blocks.channel)
    return DecisionPublisher(sender, agent_id)


def _stopped(agent: FirewallAgent, as_json: bool) -> None:
    stats = agent.stats()
    agent.close()
    log.info("firewall agent stopped: %s", " ".join(f"{k}={v}" for k, v in stats.items()))
    if as_json:
        print(json.dumps(stats))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _cmd_list(args: argparse.Namespace) -> int:
    reply = control_request(_control_path(load_config(args.config)), {"cmd": "list"})
    if args.json:
        print(json.dumps(reply))
        return EXIT_OK if reply.get("ok") else EXIT_ERROR
    blocks = reply.get("blocks", [])
    print(f"{len(blocks)} active block(s), backend {reply.get('backend')}")
    if blocks:
        print(
            f"{'address':24s} {'family':10s} {'score':>5s}  {'since':19s}  {'expires':19s}  reason"
        )
    for b in blocks:
        print(printable(
            f"{b['address']!s:24s} {b['family']!s:10s} {b['final_score']:5.2f}  "
            f"{_when(b['since'])}  {_when(b['expires'])}  {b['reason']}"
        ))  # fmt: skip
    return EXIT_OK


def _reply(args: argparse.Namespace, reply: dict[str, Any], text: str) -> int:
    if args.json:
        print(json.dumps(reply))
    elif reply.get("ok"):
        print(text)
    else:
        print(printable(f"mld: {reply.get('error', 'failed')}"), file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_ERROR


def _cmd_unblock(args: argparse.Namespace) -> int:
    path = _control_path(load_config(args.config))
    reply = control_request(path, {"cmd": "unblock", "addr": args.address})
    return _reply(args, reply, f"unblocked {reply.get('unblocked')}")


def _cmd_flush(args: argparse.Namespace) -> int:
    reply = control_request(_control_path(load_config(args.config)), {"cmd": "flush"})
    return _reply(args, reply, f"unblocked {len(reply.get('unblocked', []))} block(s)")


def _cmd_status(args: argparse.Namespace) -> int:
    reply = control_request(_control_path(load_config(args.config)), {"cmd": "status"})
    lines = [f"{k}: {v}" for k, v in reply.items() if k not in ("ok", "unverified_victims")]
    victims = reply.get("unverified_victims") or []
    if victims:
        hit = ", ".join(f"{v['address']} ({v['verdicts']})" for v in victims)
        lines.append(f"not blocked, source never completed a handshake; most hit: {hit}")
    return _reply(args, reply, "\n".join(lines))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``firewall`` and its actions to the ``mld`` subcommands."""
    fw = sub.add_parser(
        "firewall",
        parents=[common],
        help="the firewall agent: verdicts -> blocks (XDP, nftables fallback)",
        description="Run the firewall agent, which turns the detector's verdicts into "
        "blocks with TTLs (XDP blocklist map, or its own nftables table when no XDP "
        "program is attached), never blocking allowlisted addresses, and logs every "
        "decision in SQLite; or list, unblock and flush through a running agent.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = fw.add_subparsers(dest="firewall_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        parents=[common],
        help="run the agent (root)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--dry-run", action="store_true", help="log decisions, apply none")
    run.add_argument(
        "--backend", choices=("auto", "xdp", "nftables"), help="default: firewall.backend"
    )
    run.add_argument("--listen", metavar="ENDPOINT", help="default: firewall.listen_endpoint")
    run.set_defaults(func=_cmd_run)
    fmt = argparse.RawDescriptionHelpFormatter

    def action(name: str, text: str, examples: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, parents=[common], help=text, epilog=f"examples:\n{examples}", formatter_class=fmt
        )

    lst = action("list", "active blocks of the running agent",
                 "  mld firewall list\n  mld firewall list --json")  # fmt: skip
    lst.set_defaults(func=_cmd_list)
    unb = action(
        "unblock",
        "lift one block now",
        "  mld firewall unblock 203.0.113.66\n  mld firewall unblock 2001:db8::66 --json",
    )
    unb.add_argument("address", metavar="ADDR", help="address or prefix")
    unb.set_defaults(func=_cmd_unblock)
    fl = action("flush", "lift every block the agent holds", "  mld firewall flush --json")
    fl.set_defaults(func=_cmd_flush)
    st = action("status", "backend and counters",
                "  mld firewall status\n  mld firewall status --json")  # fmt: skip
    st.set_defaults(func=_cmd_status)
