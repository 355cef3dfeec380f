"""The ``mld`` command: one entry point, a subcommand per component.

Exit codes: 0 success, 1 an ML Defender error (bad config, key file, transport), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from anomaly.cli import register as register_anomaly
from base.config_loader import to_dict
from base.errors import KeyFileError, MldError
from config import load_config, resolve_config_path
from control.cli import register_config_actions, register_control
from crypto_transport import KeyPair
from detector.cli import register as register_detector
from firewall.cli import register as register_firewall
from gateway.cli import register as register_gateway
from lab.cli import register as register_lab
from mld import __version__
from rag.cli import register as register_rag
from sniffer.cli import register as register_sniffer
from watch.cli import register as register_watch

__all__ = ["main"]

log = logging.getLogger("mld")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_COMMON_DEFAULTS: dict[str, object] = {"verbose": 0, "quiet": False, "json": False, "config": None}

EPILOG = """\
examples:
  mld keygen --out /etc/mld/keys/node.key      create this node's X25519 key pair
  mld keygen --show /etc/mld/keys/node.key     print the public key of an existing key
  mld config show                              the effective configuration
  mld config show --json --config ./mld.yaml   ... of a given file, as JSON
  mld config check /etc/mld/mld.yaml           validate a file (exit 1 and the reason if bad)
  mld flows capture.pcap                       the flows of a capture, with fast-rule scores
  mld sniff --iface eth0                       capture live with XDP, send to the detector
  mld detect                                   score flow batches from sniffers, send verdicts
  mld analyze capture.pcap                     detect attacks in a capture, offline (JSON lines)
  mld train --lab build/lab-data/default --shared ../shared/data --out detector/bundle
  mld evaluate ../shared/data/labels.csv       detection and false-positive rates
  mld firewall run                             the firewall agent (see mld firewall --help)
  mld gateway --outside eth0 --inside eth1     every service on a dual-NIC gateway
  mld lab up                                   the namespace lab (see mld lab --help)
  mld rag --ask "which address scanned the server?"   questions about the stored events
  mld anomaly serve                            retrain the anomaly model on recent traffic
  mld watch /var/captures                      analyse each capture dropped in a folder
  mld etcd up                                  a local etcd for the control plane
  mld status                                   every service registered in etcd, with health
  mld config set detector.thresholds.alert 0.6 change a setting live, through etcd
  mld version
"""


def _cmd_keygen(args: argparse.Namespace) -> int:
    if args.show:
        pair = KeyPair.load(args.show)
        _emit(args, {"key_file": str(args.show), "public_key": pair.public_b64})
        return EXIT_OK
    out = Path(args.out)
    if out.exists() and not args.force:
        raise KeyFileError(
            f"{out} exists; pass --force to replace it (peers holding its public key "
            "will need the new one)"
        )
    pair = KeyPair.generate()
    pair.save(out)
    log.info("wrote private key %s (mode 0600) and public key %s.pub", out, out)
    _emit(args, {"key_file": str(out), "public_key": pair.public_b64})
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    cfg = load_config(path)
    if args.json:
        print(json.dumps({"source": str(path), "config": to_dict(cfg)}, indent=2))
    else:
        print(f"# effective configuration, from {path}")
        for section, values in to_dict(cfg).items():
            print(f"{section}:")
            for key, value in values.items():
                print(f"  {key}: {json.dumps(value)}")
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    load_config(args.file)
    _emit(args, {"file": str(args.file), "valid": True})
    return EXIT_OK


def _cmd_version(args: argparse.Namespace) -> int:
    _emit(args, {"version": __version__})
    return EXIT_OK


def _emit(args: argparse.Namespace, result: dict[str, object]) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(f"{k}: {v}" for k, v in result.items()))


def build_parser() -> argparse.ArgumentParser:
    # Accepted before or after the subcommand; SUPPRESS keeps a subcommand's parser from
    # resetting what was given before it (defaults are filled in by main()).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $MLD_CONFIG, /etc/mld/mld.yaml, or the built-in defaults)",
    )

    parser = argparse.ArgumentParser(
        prog="mld",
        description="ML Defender: network intrusion detection and prevention.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    keygen = sub.add_parser(
        "keygen",
        parents=[common],
        help="create an X25519 key pair for the encrypted transport",
        description="Create this node's X25519 key pair: the private key (mode 0600) and "
        "PATH.pub. Give the public key to the peers that talk to this node "
        "(transport.peers in their mld.yaml).",
        epilog="examples:\n  mld keygen --out /etc/mld/keys/node.key\n"
        "  mld keygen --show /etc/mld/keys/node.key --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = keygen.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", metavar="PATH", help="where to write the new private key")
    what.add_argument("--show", metavar="PATH", help="print the public key of a private key file")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(func=_cmd_keygen)

    config = sub.add_parser(
        "config",
        parents=[common],
        help="show or check the configuration; change it in etcd",
        description="Show the effective configuration, validate a config file, or set, "
        "unset and list the overrides in etcd that running services apply.",
        epilog="examples:\n  mld config show\n  mld config check /etc/mld/mld.yaml\n"
        "  mld config set detector.thresholds.alert 0.6\n  mld config list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser(
        "show",
        parents=[common],
        help="print the effective config",
        epilog="examples:\n  mld config show\n  mld config show --json --config ./mld.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.set_defaults(func=_cmd_config_show)
    check = config_sub.add_parser(
        "check",
        parents=[common],
        help="validate a config file",
        epilog="examples:\n  mld config check /etc/mld/mld.yaml && echo valid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_cmd_config_check)
    register_config_actions(config_sub, common)

    register_sniffer(sub, common)
    register_detector(sub, common)
    register_firewall(sub, common)
    register_gateway(sub, common)
    register_lab(sub, common)
    register_rag(sub, common)
    register_anomaly(sub, common)
    register_watch(sub, common)
    register_control(sub, common)

    version = sub.add_parser("version", parents=[common], help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in _COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    _setup_logging(args.verbose, args.quiet)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except MldError as exc:
        print(f"mld: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
