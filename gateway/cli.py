"""``mld gateway run``: every ML Defender service on one dual-NIC box (deploy/README.md).

mld/cli.py registers it through :func:`register`. Exit codes (base/exit_codes.py): 0
stopped cleanly; 1 a failed check, a service that cannot start or keeps crashing; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path

from base.errors import GatewayError
from base.exit_codes import EXIT_ERROR, EXIT_OK
from base.signals import StopRequested, raise_on_stop_signals
from gateway.preflight import preflight
from gateway.stack import GatewayStack, StackOptions

__all__ = ["register"]

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  mld gateway run --outside eth0 --inside eth1 --check
                                                     check forwarding, rp_filter, offloads
  sudo mld gateway run --outside eth0 --inside eth1  run the stack (Ctrl-C stops it)
  sudo mld gateway run --outside eth0 --inside eth1 --no-rag --config /etc/mld/mld.yaml
  mld status --config /var/lib/mld/gateway/mld.yaml  the services, through etcd

The sniffer attaches XDP to both NICs: a blocked source is dropped on whichever NIC its
packets come in, before the kernel forwards them. Without control.endpoints a local etcd
is started (data in <run dir>/etcd). With anomaly.enabled, `mld anomaly run` runs too
(it retrains the anomaly model on the RAG store's window). Logs:
<run dir>/logs/<service>.log; alerts: detector.eve_log or <run dir>/alerts.json. systemd
units are in deploy/systemd.
"""


def _cmd_gateway(args: argparse.Namespace) -> int:
    checks = preflight(args.outside, args.inside, args.mode or "auto")
    errors = [c for c in checks if c.level == "error"]
    if args.check:
        if args.json:
            print(json.dumps([c.__dict__ for c in checks], indent=1))
        else:
            for c in checks:
                print(f"{c.level:8s} {c.what:24s} {c.detail}")
        return EXIT_ERROR if errors else EXIT_OK
    for c in checks:
        if c.level == "warning":
            log.warning("%s: %s", c.what, c.detail)
    if errors and not args.skip_checks:
        raise GatewayError(
            "the gateway cannot start: "
            + "; ".join(f"{c.what}: {c.detail}" for c in errors)
            + " (--skip-checks to start anyway)"
        )
    stack = GatewayStack(
        StackOptions(
            outside=args.outside,
            inside=args.inside,
            config=args.config,
            run_dir=Path(args.run_dir) if args.run_dir else None,
            rag=not args.no_rag,
            xdp_mode=args.mode,
            eve_log=args.eve,
            etcd_port=args.etcd_port,
        )
    )
    raise_on_stop_signals()
    try:
        log.info("starting the gateway stack in %s (config %s)", stack.run_dir, stack.config_path)
        stack.start()
        log.info(
            "gateway up: %s; alerts in %s; `mld status --config %s`",
            ", ".join(f"{n} pid {p}" for n, p in stack.pids().items()),
            stack.eve_path,
            stack.config_path,
        )
        while True:
            stack.poll()
            time.sleep(0.5)
    except (StopRequested, KeyboardInterrupt) as exc:
        log.info("stopping the gateway stack (%s)", exc or "interrupt")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``gateway`` and its action ``run`` to the ``mld`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    text = "run every service on a dual-NIC gateway (sniffer on both NICs, blocks in transit)"
    group = sub.add_parser(
        "gateway", parents=[common], help=text, description=text, epilog=EPILOG,
        formatter_class=fmt,
    )  # fmt: skip
    actions = group.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    gw = actions.add_parser(
        "run",
        parents=[common],
        help=text,
        description="Run the sniffer (XDP on both NICs), the detector, the firewall agent "
        "(blocking at XDP) and the RAG store as supervised child processes that find each "
        "other through etcd; a service that dies is restarted. Checks forwarding, rp_filter "
        "and offloads first.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gw.add_argument("--outside", required=True, metavar="DEV", help="the NIC facing outside")
    gw.add_argument("--inside", required=True, metavar="DEV", help="the NIC facing inside")
    gw.add_argument("--check", action="store_true", help="only run the checks and print them")
    gw.add_argument("--skip-checks", action="store_true", help="start despite failed checks")
    gw.add_argument("--no-rag", action="store_true", help="do not run the RAG store")
    gw.add_argument(
        "--mode",
        choices=("auto", "native", "generic"),
        help="XDP attach mode (default: sniffer.capture.xdp_mode)",
    )
    gw.add_argument("--eve", metavar="PATH", help="alert log (default: detector.eve_log)")
    gw.add_argument(
        "--run-dir", metavar="DIR", help="derived config, logs, etcd data (<state_dir>/gateway)"
    )
    gw.add_argument(
        "--etcd-port",
        type=int,
        default=2379,
        metavar="N",
        help="client port of the local etcd, when control.endpoints is empty (default 2379)",
    )
    gw.set_defaults(func=_cmd_gateway)
