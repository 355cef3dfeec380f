"""``mld etcd up|down|status``, ``mld status`` and ``mld config set|unset|list``.

mld/cli.py registers these. Exit codes (base/exit_codes.py): 0 done; 1 an ML Defender
error (etcd unreachable, refused, bad value); 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from base.errors import ConfigError, ControlPlaneError
from base.exit_codes import EXIT_OK
from base.terminal import printable
from config import MldConfig, load_config
from control.client import EtcdClient
from control.config import ControlConfig
from control.etcd_server import EtcdServer
from control.layout import COMPONENTS, GLOBAL_SECTIONS, config_key, config_prefix, dotted_name
from control.overrides import NetworkBounds, apply_override, check_settable
from control.pki import OPERATOR

__all__ = ["register_config_actions", "register_control"]

ETCD_EPILOG = """\
examples:
  mld etcd up                        etcd on 127.0.0.1:2379, data in <node.state_dir>/etcd
  mld etcd up --port 23790 --data-dir /tmp/etcd-lab
  mld etcd status --json
  mld etcd down                      stop it (the data stays; --purge removes it)
It serves TLS and requires client certificates, made at the first start in
<node.state_dir>/etcd-pki (0700): one etcd user and role per component, operator for
`mld config`/`mld status`. Point the services at it with control.endpoints:
[127.0.0.1:2379] in mld.yaml; they find their certificates there by themselves.
A multi-host deployment: see control/README.md.
"""

STATUS_EPILOG = """\
examples:
  mld status                         every registered service, its health and last config change
  mld status --etcd 127.0.0.1:2379   ask that etcd (default: control.endpoints)
  mld status --json                  the same as JSON
exit status: 0 listed (also when nothing is registered); 1 etcd unreachable or refused.
"""

CONFIG_EPILOG = """\
examples:
  mld config set detector.thresholds.alert 0.6       live on every detector
  mld config set firewall.allowlist '[10.0.0.0/8, 192.168.1.0/24]'
  mld config set logging.level debug --component sniffer
  mld config unset detector.thresholds.alert         back to the file's value
  mld config list detector
The value is YAML (JSON works too) and is checked against the config file's schema first,
and against the settings the running instances take from etcd (the live ones: paths,
peers, keys and endpoints never come from etcd; allowlist entries no wider than /8, /32).
A running service checks it again and writes the outcome under
<prefix>/status/<component>/<instance>/config (see `mld status`).
"""


def _control(args: argparse.Namespace) -> tuple[MldConfig, ControlConfig]:
    cfg = load_config(args.config)
    control = cfg.control
    if getattr(args, "etcd", None):
        control = dataclasses.replace(control, endpoints=(args.etcd,))
    # The command line is the operator: read everything, write the config.
    control = control.with_credentials(cfg.node.state_dir, OPERATOR)
    if not control.enabled:
        raise ControlPlaneError(
            "control.endpoints is empty, so no service uses etcd: set it in mld.yaml "
            "(for example [127.0.0.1:2379], after `mld etcd up`) or pass --etcd HOST:PORT"
        )
    return cfg, control


# --- mld etcd ---------------------------------------------------------------------------


def _etcd_dir(args: argparse.Namespace, cfg: MldConfig) -> Path:
    return Path(args.data_dir) if args.data_dir else Path(cfg.node.state_dir) / "etcd"


def _pki_dir(cfg: MldConfig) -> Path:
    return Path(cfg.control.credentials_dir or Path(cfg.node.state_dir) / "etcd-pki")


def _pid_file(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".pid")


def _read_pid(pid_file: Path) -> tuple[int, str] | None:
    try:
        pid_text, endpoint = pid_file.read_text().split()
        pid = int(pid_text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid, endpoint


def _cmd_etcd_up(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    data_dir = _etcd_dir(args, cfg)
    pid_file = _pid_file(data_dir)
    running = _read_pid(pid_file)
    if running is not None:
        print(f"etcd is already running (pid {running[0]}) at {running[1]}")
        return EXIT_OK
    server = EtcdServer(
        data_dir,
        host=args.host,
        client_port=args.port,
        peer_port=args.peer_port or args.port + 1,
        log_file=data_dir.with_name(data_dir.name + ".log"),
        # Authenticated: the credentials where every service of this node finds them,
        # a role per component under this deployment's prefix.
        pki_dir=_pki_dir(cfg),
        rbac_prefix=cfg.control.prefix,
    )
    server.start(detach=True)
    pid_file.write_text(f"{server.pid} {server.endpoint}\n")
    _emit(
        args,
        {"pid": server.pid, "endpoint": server.endpoint, "data_dir": str(data_dir)},
        f"etcd {server.endpoint} up (pid {server.pid}, data {data_dir}, log {server.log_file})\n"
        f"use it with control.endpoints: [{server.endpoint}]; clients authenticate with "
        f"the certificates in {server.pki_dir} (found there by themselves)",
    )
    return EXIT_OK


def _cmd_etcd_down(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    data_dir = _etcd_dir(args, cfg)
    pid_file = _pid_file(data_dir)
    running = _read_pid(pid_file)
    if running is None:
        print("etcd is not running (no live pid in " + str(pid_file) + ")")
    else:
        pid = running[0]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _read_pid(pid_file) is not None:
            time.sleep(0.1)
        if _read_pid(pid_file) is not None:
            os.kill(pid, signal.SIGKILL)
        print(f"etcd (pid {pid}) stopped")
    pid_file.unlink(missing_ok=True)
    if args.purge and data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
        print(f"removed {data_dir}")
    return EXIT_OK


def _cmd_etcd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    data_dir = _etcd_dir(args, cfg)
    running = _read_pid(_pid_file(data_dir))
    result: dict[str, Any] = {"running": running is not None, "data_dir": str(data_dir)}
    if running is not None:
        result |= {"pid": running[0], "endpoint": running[1]}
        probe = dataclasses.replace(cfg.control, endpoints=(running[1],))
        probe = probe.with_credentials(cfg.node.state_dir, OPERATOR)
        try:
            client = EtcdClient.connect(probe)
            result["version"] = client.version()
            client.close()
        except ControlPlaneError as exc:
            result["error"] = str(exc)
    text = (
        f"etcd {result['endpoint']} running (pid {result['pid']}), version "
        f"{result.get('version', '?')}"
        if running
        else f"etcd is not running (data dir {data_dir})"
    )
    _emit(args, result, text)
    return EXIT_OK


# --- mld status -------------------------------------------------------------------------


def gather_status(client: EtcdClient, control: ControlConfig) -> list[dict[str, Any]]:
    """Every registered instance with its health and last config outcome."""
    prefix = control.prefix
    status: dict[str, dict[str, Any]] = {}
    for kv in client.get_prefix(f"{prefix}/status/"):
        parts = kv.key[len(f"{prefix}/status/") :].split("/")
        if len(parts) == 3:
            try:
                record = json.loads(kv.value)
            except ValueError:
                continue
            if isinstance(record, dict):
                status.setdefault("/".join(parts[:2]), {})[parts[2]] = record
    now = time.time()
    services = []
    for kv in client.get_prefix(f"{prefix}/services/"):
        try:
            reg = json.loads(kv.value)
        except ValueError:
            reg = None
        if not isinstance(reg, dict):
            reg = {"malformed": kv.value.decode("utf-8", "replace")}
        name = kv.key[len(f"{prefix}/services/") :]
        component, _, instance = name.partition("/")
        extra = status.get(name, {})
        health = extra.get("health", {})
        age = now - _number(health.get("ts"), 0.0) if health else None
        state = health.get("state", "unknown")
        if age is not None and age > 3 * control.health_interval_s:
            state = f"stale ({age:.0f} s)"
        services.append(
            {
                "component": component,
                "instance": instance,
                "health": state,
                "health_age_s": None if age is None else round(age, 1),
                "registration": reg,
                "counters": health.get("counters", {}),
                "config": extra.get("config"),
                # Other status records a service reports (e.g. anomaly/<id>/model).
                "reports": {k: v for k, v in extra.items() if k not in ("health", "config")},
            }
        )
    return sorted(services, key=lambda s: (s["component"], s["instance"]))


def _cmd_status(args: argparse.Namespace) -> int:
    _cfg, control = _control(args)
    client = EtcdClient.connect(control)
    try:
        services = gather_status(client, control)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"etcd": client.endpoint, "services": services}, indent=1))
        return EXIT_OK
    if not services:
        print(f"no service is registered in etcd {client.endpoint} under {control.prefix}")
        return EXIT_OK
    print(f"{'SERVICE':28} {'HEALTH':12} {'HOST':16} {'PID':>7} {'UP':>8}  ENDPOINTS")
    for s in services:
        reg = s["registration"]
        up = time.time() - _number(reg.get("started_ts"), time.time())
        offers = reg.get("endpoints")
        endpoints = ", ".join(
            f"{name}={e.get('endpoint') if isinstance(e, dict) else e}"
            for name, e in (offers.items() if isinstance(offers, dict) else ())
        )
        name = printable(s["component"] + "/" + s["instance"])
        host, pid = printable(reg.get("host", "?")), printable(reg.get("pid", "?"))
        print(
            f"{name:28} {printable(s['health']):12} {host:16} {pid:>7} {_ago(up):>8}  "
            f"{printable(endpoints or '-')}"
        )
        change = s["config"]
        if change:
            line = f"    last config change: {change.get('key')} -> {change.get('state')}"
            if change.get("reason"):
                line += f" ({change['reason']})"
            print(printable(line))
        for what, record in s["reports"].items():
            if isinstance(record, dict) and record.get("summary"):
                print(printable(f"    {what}: {record['summary']}"))
    return EXIT_OK


def _number(value: object, default: float) -> float:
    """A number from etcd's JSON, or ``default`` for anything else."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# --- mld config set|unset|list ----------------------------------------------------------


def _target(args: argparse.Namespace, dotted: str) -> str:
    head = dotted.split(".", 1)[0]
    if head in COMPONENTS:
        if args.component and args.component != head:
            raise ConfigError(f"{dotted} is a {head} setting, not a {args.component} one")
        return head
    if head in GLOBAL_SECTIONS:
        if not args.component:
            raise ConfigError(
                f"{dotted} is shared by every service: say which one with --component "
                f"({', '.join(COMPONENTS)})"
            )
        return str(args.component)
    raise ConfigError(
        f"{dotted!r} is not a setting: start with a component ({', '.join(COMPONENTS)}) "
        f"or a shared section ({', '.join(GLOBAL_SECTIONS)})"
    )


def _cmd_config_set(args: argparse.Namespace) -> int:
    cfg, control = _control(args)
    component = _target(args, args.key)
    if not args.no_check and component != "rag":
        apply_override(cfg, args.key, args.value, source="the command line")
    key = config_key(control.prefix, component, args.key)
    client = EtcdClient.connect(control)
    try:
        if not args.no_check:
            _check_live(client, control, component, args.key, args.value, cfg)
        client.put(key, args.value)
    finally:
        client.close()
    _emit(args, {"key": key, "value": args.value}, f"{key} = {args.value}")
    return EXIT_OK


def _check_live(
    client: EtcdClient, control: ControlConfig, component: str, dotted: str, raw: str, cfg: Any
) -> None:
    """Refuse at once what the running instances of ``component`` would refuse: a
    setting outside the live ones they report in their health, or a network wider than
    etcd may set (control/overrides.py). Nothing to check when none runs."""
    live: set[str] = set()
    for kv in client.get_prefix(f"{control.prefix}/status/{component}/"):
        if kv.key.endswith("/health"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                live.update(str(k) for k in json.loads(kv.value).get("live_keys") or ())
    if not live:
        return
    bounds = NetworkBounds(control.override_min_prefix_v4, control.override_min_prefix_v6)
    file_value: Any = cfg
    for part in dotted.split("."):
        file_value = getattr(file_value, part, None)
    check_settable(dotted, raw, live=sorted(live), bounds=bounds, file_value=file_value)


def _cmd_config_unset(args: argparse.Namespace) -> int:
    _cfg, control = _control(args)
    component = _target(args, args.key)
    key = config_key(control.prefix, component, args.key)
    client = EtcdClient.connect(control)
    try:
        deleted = client.delete(key)
    finally:
        client.close()
    _emit(args, {"key": key, "deleted": deleted}, f"{key} {'removed' if deleted else 'not set'}")
    return EXIT_OK


def _cmd_config_list(args: argparse.Namespace) -> int:
    _cfg, control = _control(args)
    components = [args.component] if args.component else list(COMPONENTS)
    client = EtcdClient.connect(control)
    rows = []
    try:
        for component in components:
            for kv in client.get_prefix(config_prefix(control.prefix, component)):
                try:
                    name = dotted_name(control.prefix, component, kv.key)
                except ConfigError:
                    name = kv.key + " (malformed key)"
                rows.append({"component": component, "setting": name, "value": kv.value.decode()})
    finally:
        client.close()
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no settings are overridden in etcd")
    for row in [] if args.json else rows:
        print(printable(f"{row['component']:10} {row['setting']} = {row['value']}"))
    return EXIT_OK


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result) if args.json else text)


# --- registration -------------------------------------------------------------------------


def register_control(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``etcd`` and ``status`` to the ``mld`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    etcd = sub.add_parser(
        "etcd",
        parents=[common],
        help="run a local etcd for the lab or one host",
        description="Start, stop or inspect a local etcd server (Debian's etcd-server) "
        "with its data under the node's state directory.",
        epilog=ETCD_EPILOG,
        formatter_class=fmt,
    )
    actions = etcd.add_subparsers(dest="etcd_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("up", _cmd_etcd_up, "start etcd in the background"),
        ("down", _cmd_etcd_down, "stop it"),
        ("status", _cmd_etcd_status, "is it running"),
    ):
        action = actions.add_parser(name, parents=[common], help=text, epilog=ETCD_EPILOG,
                                    formatter_class=fmt)  # fmt: skip
        action.add_argument("--data-dir", metavar="DIR", help="default: <node.state_dir>/etcd")
        action.set_defaults(func=func)
        if name == "up":
            action.add_argument("--host", default="127.0.0.1", help="address to listen on")
            action.add_argument("--port", type=int, default=2379, help="client port (2379)")
            action.add_argument("--peer-port", type=int, help="peer port (client port + 1)")
        if name == "down":
            action.add_argument("--purge", action="store_true", help="also remove the data")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="every registered service and its health, from etcd",
        description="List the service instances registered in etcd (control.endpoints) with "
        "their health, endpoints and the outcome of the last config change.",
        epilog=STATUS_EPILOG,
        formatter_class=fmt,
    )
    status.add_argument("--etcd", metavar="HOST:PORT", help="etcd to ask")
    status.set_defaults(func=_cmd_status)


def register_config_actions(
    config_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``set``, ``unset`` and ``list`` (settings in etcd) to ``mld config``."""
    fmt = argparse.RawDescriptionHelpFormatter
    for name, func, text in (
        ("set", _cmd_config_set, "override a setting in etcd (live where the service can)"),
        ("unset", _cmd_config_unset, "remove an override from etcd"),
        ("list", _cmd_config_list, "the overrides in etcd"),
    ):
        action = config_sub.add_parser(
            name, parents=[common], help=text, epilog=CONFIG_EPILOG, formatter_class=fmt
        )
        if name in ("set", "unset"):
            action.add_argument(
                "key", metavar="KEY", help="mld.yaml name, e.g. detector.thresholds.alert"
            )
        if name == "set":
            action.add_argument("value", metavar="VALUE", help="YAML value, e.g. 0.6 or '[a, b]'")
            action.add_argument("--no-check", action="store_true",
                                help="write without checking against the local schema")  # fmt: skip
        action.add_argument(
            "--component" if name != "list" else "component",
            nargs=None if name != "list" else "?",
            choices=COMPONENTS,
            help="the service a shared setting (logging.*, transport.*) is for"
            if name != "list"
            else "one component (default: all)",
        )
        action.add_argument("--etcd", metavar="HOST:PORT", help="etcd to use")
        action.set_defaults(func=func)
