"""The whole service stack of one gateway box, as child processes of one process.

``mld gateway run --outside DEV --inside DEV`` and ``mld lab dev`` both run a
:class:`GatewayStack`:

* **etcd**: the one in ``control.endpoints``, or, when that is empty, a local etcd started
  here as a supervised child (data in ``<run_dir>/etcd``) that every service registers in.
  It requires TLS client certificates, made at the first start in ``<run_dir>/etcd-pki``
  (0700, keys 0600; ``control.credentials_dir`` of the derived config), and gives each
  component its own etcd user and role (control/rbac.py): no other local user can read
  or write it, and the sniffer cannot change the firewall's settings;
* **sniffer** ``mld sniffer run --iface OUTSIDE --iface INSIDE``: the XDP flow program on both
  NICs, which also drops sources in the blocklist, so blocks hold for traffic in transit in
  either direction;
* **firewall** ``mld firewall run``, started once the sniffer's program uses the pinned
  blocklist, so its ``auto`` backend picks XDP;
* **rag** ``mld rag run`` (unless turned off) and **detector** ``mld detector run``.

The services read one derived config file, ``<run_dir>/mld.yaml``: the user's file with
the stack's settings merged over it (the local etcd, the alert log, the blocklist pin
folder shared by sniffer and firewall, a node key made on first start when the configured
one does not exist) and the caller's overrides (the lab's short TTLs). It is validated
before anything starts. The supervisor restarts a service that dies; the services find
each other again through etcd.
"""

from __future__ import annotations

import copy
import logging
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from base.config_loader import build, load_yaml
from base.errors import ControlPlaneError, GatewayError
from config import MldConfig, load_config, resolve_config_path
from control.cli import gather_status
from control.client import EtcdClient
from control.etcd_server import EtcdServer
from crypto_transport import KeyPair
from gateway.supervisor import ChildSpec, Supervisor

__all__ = ["STOP_ORDER", "GatewayStack", "StackOptions", "deep_merge", "mld_command"]

log = logging.getLogger(__name__)

# Stop order: the sniffer first (it flushes its flow table to the detector), then the
# detector (its last verdicts and events), then their receivers, etcd last.
STOP_ORDER = ("sniffer", "detector", "firewall", "anomaly", "rag", "etcd")


@dataclass(frozen=True)
class StackOptions:
    outside: str
    inside: str
    # The user's mld.yaml (None: the usual lookup, see config.resolve_config_path).
    config: str | None = None
    # Derived config, logs, local etcd data, supervisor state (None: <state_dir>/gateway).
    run_dir: Path | None = None
    rag: bool = True
    xdp_mode: str | None = None
    # Alert log (None: detector.eve_log, else <run_dir>/alerts.json).
    eve_log: str | None = None
    # Client port of the local etcd (0: any free port); used when control.endpoints is empty.
    etcd_port: int = 2379
    # Merged over the user's config last (the lab's settings).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Extra arguments per component, e.g. {"detector": ("-v",)}.
    extra_args: dict[str, tuple[str, ...]] = field(default_factory=dict)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in (mappings merged key by key, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def mld_command() -> list[str]:
    """How to run ``mld`` as a child: the script beside this Python, else ``-m``."""
    script = Path(sys.executable).with_name("mld")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mld.cli"]


class GatewayStack:
    """Prepare, start, watch and stop the services of one gateway (module docstring)."""

    def __init__(self, opts: StackOptions, on_event: Callable[[str], None] | None = None) -> None:
        if opts.outside == opts.inside:
            raise GatewayError(f"--outside and --inside must differ (both {opts.outside})")
        self.opts = opts
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self.user_config = resolve_config_path(opts.config)
        base = load_config(self.user_config)
        self.run_dir = Path(opts.run_dir or Path(base.node.state_dir) / "gateway")
        self.config_path = self.run_dir / "mld.yaml"
        self.local_etcd: EtcdServer | None = None
        self._etcd: EtcdClient | None = None
        self.cfg = self._derive()
        self.supervisor = Supervisor(
            self._specs(), self.run_dir / "logs", self.run_dir / "stack.json",
            on_event=self.on_event,
        )  # fmt: skip

    # ---- config ---------------------------------------------------------------------

    def _derive(self) -> MldConfig:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The user's file with the caller's overrides (the lab's) is what the stack's own
        # settings are decided from: e.g. the lab always wants an etcd of its own.
        raw = deep_merge(load_yaml(self.user_config), self.opts.overrides)
        base = build(MldConfig, raw, source=f"{self.user_config} with the stack's overrides")
        stack: dict[str, Any] = {}
        if not base.control.endpoints:
            port = self.opts.etcd_port
            self.local_etcd = EtcdServer(
                self.run_dir / "etcd",
                client_port=port,
                peer_port=port + 1 if port else 0,
                log_file=self.run_dir / "logs" / "etcd.log",
                pki_dir=self.run_dir / "etcd-pki",
            )
            self.local_etcd.prepare()  # the credentials, before anything reads the config
            # Its own credentials (control/pki.py), whatever the user's file names for
            # another etcd.
            stack["control"] = {
                "endpoints": [self.local_etcd.endpoint],
                "credentials_dir": str(self.local_etcd.pki_dir),
                **dict.fromkeys(("ca_cert", "cert", "key", "user", "password_file"), ""),
            }
        key_file = Path(base.transport.key_file)
        if not key_file.exists():
            key_file = self.run_dir / "node.key"
            if not key_file.exists():
                KeyPair.generate().save(key_file)
                self.on_event(
                    f"{base.transport.key_file} does not exist: made a node key in {key_file} "
                    "(`mld keys new PATH` and transport.key_file to use your own)"
                )
            stack["transport"] = {"key_file": str(key_file)}
        eve = self.opts.eve_log or base.detector.eve_log or str(self.run_dir / "alerts.json")
        stack["detector"] = {"eve_log": eve}
        merged = deep_merge(raw, stack)
        header = (
            f"# Written by the gateway stack from {self.user_config} on "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}; edit that file, not this one.\n"
        )
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(header + yaml.safe_dump(merged, sort_keys=False))
        cfg = load_config(tmp)  # a bad merge stops here, naming the key
        tmp.replace(self.config_path)
        return cfg

    @property
    def eve_path(self) -> Path:
        return Path(self.cfg.detector.eve_log)

    @property
    def pin_dir(self) -> Path:
        return Path(self.cfg.node.xdp_pin_dir)

    @property
    def instance(self) -> str:
        return self.cfg.node.id or socket.gethostname()

    def _specs(self) -> list[ChildSpec]:
        mld = mld_command()
        conf = ("--config", str(self.config_path))
        extra = self.opts.extra_args
        specs = []
        if self.local_etcd is not None:
            if shutil.which("etcd") is None:
                raise GatewayError("etcd is not installed (apt install etcd-server); or set "
                                   "control.endpoints to an etcd elsewhere")  # fmt: skip
            specs.append(ChildSpec("etcd", tuple(self.local_etcd.command()), grace_s=10))
        mode = ("--mode", self.opts.xdp_mode) if self.opts.xdp_mode else ()
        ifaces = ("--iface", self.opts.outside, "--iface", self.opts.inside)
        sniff = ("sniffer", "run", *conf, *ifaces, *mode)
        specs.append(ChildSpec("sniffer", (*mld, *sniff, *extra.get("sniffer", ())), grace_s=30))
        specs.append(
            ChildSpec("firewall", (*mld, "firewall", "run", *conf, *extra.get("firewall", ())))
        )
        if self.opts.rag:
            specs.append(ChildSpec("rag", (*mld, "rag", "run", *conf, *extra.get("rag", ()))))
        if self.cfg.anomaly.enabled:
            # It trains on the RAG store's events; without the store it keeps serving the
            # model it has (if any) and trains nothing new.
            if not self.opts.rag:
                self.on_event("anomaly.enabled without the RAG store: no new anomaly model "
                              "will be trained (its window is the store's events)")  # fmt: skip
            anomaly = (*mld, "anomaly", "run", *conf, *extra.get("anomaly", ()))
            specs.append(ChildSpec("anomaly", anomaly, grace_s=30))
        detector = (*mld, "detector", "run", *conf, *extra.get("detector", ()))
        specs.append(ChildSpec("detector", detector))
        return specs

    # ---- run ------------------------------------------------------------------------

    def start(self, ready_timeout_s: float = 90.0) -> None:
        """Start every service and wait until each is registered in etcd."""
        deadline = time.monotonic() + ready_timeout_s
        if self.local_etcd is not None:
            self.local_etcd.data_dir.mkdir(parents=True, exist_ok=True)
            self.supervisor.start("etcd")
            self._wait(deadline, "etcd to answer", self._etcd_answers, child="etcd")
            self._enable_rbac()
        self.supervisor.start("sniffer")
        self._wait(deadline, "the XDP program on both NICs", self._xdp_ready, child="sniffer")
        for name in self.supervisor.names:
            if name not in ("etcd", "sniffer"):
                self.supervisor.start(name)
        wanted = [n for n in self.supervisor.names if n != "etcd"]
        self._wait(
            deadline,
            "every service to register in etcd",
            lambda: not (set(wanted) - self.registered()),
        )

    def _wait(
        self, deadline: float, what: str, ready: Callable[[], bool], child: str | None = None
    ) -> None:
        while not ready():
            self.supervisor.poll()
            if child is not None and self.supervisor.pid(child) is None:
                raise GatewayError(
                    f"{child} exited while waiting for {what}; last lines of its log:\n"
                    f"{self.supervisor.tail(child)}"
                )
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {n}:\n{self.supervisor.tail(n, 6)}" for n in self.supervisor.names
                )
                raise GatewayError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.2)

    def _client(self) -> EtcdClient | None:
        """The stack's one etcd client (connected on first use, again after a failure);
        None when etcd does not answer."""
        if self._etcd is None:
            try:
                self._etcd = EtcdClient.connect(self.cfg.control)
            except ControlPlaneError:
                return None
        return self._etcd

    def _enable_rbac(self) -> None:
        """A role per component on the local etcd (once per data folder)."""
        from control.rbac import enable_rbac

        etcd = self.local_etcd
        assert etcd is not None and etcd.credentials is not None
        enable_rbac(etcd.endpoint, etcd.credentials, self.cfg.control.prefix, etcd.data_dir)
        if self._etcd is not None:  # connected before auth was on: connect again
            self._etcd.close()
            self._etcd = None

    def _etcd_answers(self) -> bool:
        return self._client() is not None

    def _xdp_ready(self) -> bool:
        from xdp import program_attached

        return program_attached(self.pin_dir)[0]

    def registered(self) -> set[str]:
        """Components of this stack registered in etcd under this node's id."""
        return {s["component"] for s in self.status() if s["instance"] == self.instance}

    def status(self) -> list[dict[str, Any]]:
        """``mld status`` for this deployment (empty when etcd does not answer)."""
        client = self._client()
        if client is None:
            return []
        try:
            return gather_status(client, self.cfg.control)
        except ControlPlaneError:
            client.close()
            self._etcd = None
            return []

    def poll(self) -> list[str]:
        """Restart services that died (raises GatewayError on a crash loop)."""
        return self.supervisor.poll()

    def stop(self) -> dict[str, int | None]:
        order = [n for n in STOP_ORDER if n in self.supervisor.names]
        if self._etcd is not None:
            self._etcd.close()
            self._etcd = None
        result = self.supervisor.stop(order)
        self.on_event("stopped: " + ", ".join(f"{n} ({_code(c)})" for n, c in result.items()))
        return result

    def pids(self) -> dict[str, int | None]:
        return {name: self.supervisor.pid(name) for name in self.supervisor.names}


def _code(code: int | None) -> str:
    if code is None:
        return "not running"
    return "exit 0" if code == 0 else f"signal {-code}" if code < 0 else f"exit {code}"
