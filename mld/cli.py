"""The ``mld`` command: one entry point, ``mld COMPONENT ACTION [ARGS]`` (mld/grammar.py).

Exit codes (base/exit_codes.py): 0 success, 1 an ML Defender error (bad config, key
file, transport), 2 usage; some commands add 3 (refused) and 4 (some inputs failed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from base.config_loader import to_dict
from base.errors import KeyFileError, MldError
from base.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from base.terminal import PrintableFormatter, printable
from config import load_config, resolve_config_path
from mld import __version__
from mld.grammar import command_word, renames, resolve, value_options

__all__ = ["main"]

log = logging.getLogger("mld")

_COMMON_DEFAULTS: dict[str, object] = {"verbose": 0, "quiet": False, "json": False, "config": None}

# The commands each component's command line adds (its module and register function), in
# the order ``mld --help`` lists them. A command line names one of them, and only that
# module is imported (with what it imports): `mld detector analyze` does not load etcd3,
# grpc, FAISS or the RAG model's bindings, which took longer than reading a 10 MB capture.
# ``mld --help`` and a word that is none of them import every one.
COMPONENTS: dict[str, tuple[str, str]] = {
    "sniffer": ("sniffer.cli", "register"),
    "detector": ("detector.cli", "register"),
    "firewall": ("firewall.cli", "register"),
    "gateway": ("gateway.cli", "register"),
    "lab": ("lab.cli", "register"),
    "rag": ("rag.cli", "register"),
    "anomaly": ("anomaly.cli", "register"),
    "watch": ("watch.cli", "register"),
    "etcd": ("control.cli", "register_control"),
    "status": ("control.cli", "register_control"),
}

EPILOG = """\
commands are COMPONENT ACTION; the long-running action of a service is `run`.
examples:
  mld keys new /etc/mld/keys/node.key          create this node's X25519 key pair
  mld keys show /etc/mld/keys/node.key         print the public key of an existing key
  mld config show                              the effective configuration
  mld config show --json --config ./mld.yaml   ... of a given file, as JSON
  mld config check /etc/mld/mld.yaml           validate a file (exit 1 and the reason if bad)
  mld sniffer flows capture.pcap               the flows of a capture, with fast-rule scores
  mld sniffer run --iface eth0                 capture live with XDP, send to the detector
  mld detector run                             score flow batches from sniffers, send verdicts
  mld detector analyze capture.pcap            detect attacks in a capture, offline
  mld detector train --shared ../shared/data --out /tmp/bundle
  mld detector evaluate ../shared/data/labels.csv   detection and false-positive rates
  mld firewall run                             the firewall agent (see mld firewall --help)
  mld gateway run --outside eth0 --inside eth1
                                               every service on a dual-NIC gateway
  mld lab up                                   the namespace lab (see mld lab --help)
  mld rag ask "which address scanned the server?"   questions about the stored events
  mld anomaly run                              retrain the anomaly model on recent traffic
  mld watch run /var/captures                  analyse each capture dropped in a folder
  mld etcd up                                  a local etcd for the control plane
  mld status                                   every service registered in etcd, with health
  mld config set detector.thresholds.alert 0.6 change a setting live, through etcd
  mld version
exit status: 0 ok; 1 error; 2 usage; 3 refused (anomaly train); 4 some inputs failed
(docs/CLI.md).

""" + renames()


def _cmd_keygen(args: argparse.Namespace) -> int:
    from crypto_transport import KeyPair

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


def _register(name: str) -> Callable[..., None]:
    module, function = COMPONENTS[name]
    register: Callable[..., None] = getattr(importlib.import_module(module), function)
    return register


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mld`` parser; with ``command`` (a key of COMPONENTS, or keys, config, version)
    only that command's component is imported and registered, else every one is."""
    only = command if command in COMPONENTS or command in ("keys", "version") else None
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

    fmt = argparse.RawDescriptionHelpFormatter
    keys_epilog = (
        "examples:\n  mld keys new /etc/mld/keys/node.key\n"
        "  mld keys show /etc/mld/keys/node.key --json"
    )
    keys = sub.add_parser(
        "keys",
        parents=[common],
        help="create or show this node's X25519 key pair for the encrypted transport",
        description="Create this node's X25519 key pair: the private key (mode 0600) and "
        "PATH.pub. Give the public key to the peers that talk to this node "
        "(transport.peers in their mld.yaml).",
        epilog=keys_epilog,
        formatter_class=fmt,
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser(
        "new",
        parents=[common],
        help="create a key pair: PATH (mode 0600) and PATH.pub",
        epilog=keys_epilog,
        formatter_class=fmt,
    )
    new.add_argument("out", metavar="PATH", help="where to write the new private key")
    new.add_argument("--force", action="store_true", help="replace an existing key file")
    new.set_defaults(func=_cmd_keygen, show=None)
    show_key = keys_sub.add_parser(
        "show",
        parents=[common],
        help="print the public key of a private key file",
        epilog=keys_epilog,
        formatter_class=fmt,
    )
    show_key.add_argument("show", metavar="PATH", help="the private key file")
    show_key.set_defaults(func=_cmd_keygen, out=None, force=False)

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
    if only is None:
        from control.cli import register_config_actions

        register_config_actions(config_sub, common)

    done: set[tuple[str, str]] = set()
    for name, where in COMPONENTS.items():
        if (only is None or name == only) and where not in done:
            done.add(where)
            _register(name)(sub, common)

    version = sub.add_parser(
        "version",
        parents=[common],
        help="print the version",
        epilog="examples:\n  mld version\n  mld version --json",
        formatter_class=fmt,
    )
    version.set_defaults(func=_cmd_version)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler()  # stderr; no terminal controls from logged strings
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_word(argv))
    words, alias = resolve(argv, value_options(parser))
    if alias is not None:
        print(alias.note, file=sys.stderr)
    args = parser.parse_args(words)
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
        print(printable(f"mld: error: {exc}", keep_newlines=True), file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
