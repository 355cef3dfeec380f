"""``mld lab dev`` (``make run-lab-dev``): the whole product running on the lab.

1. ``mld lab up`` (leftovers of an earlier run are removed first);
2. this process moves into the gateway's network namespace (the gateway is the dual-NIC
   box) and starts the gateway stack there (gateway/stack.py): a local etcd, the sniffer
   with XDP on ``outside`` and ``inside``, the firewall agent blocking at XDP, the RAG
   store and the detector, all registered in etcd;
3. the scenario's traffic runs (benign users all along, attacks at seeded times) while a
   live view shows rates, flows, alerts per family, blocks and per attack its times;
4. at the end of the scenario, or on Ctrl-C/SIGTERM: the traffic stops, the services stop
   in order (the sniffer flushes, then the detector), the summary is printed and written
   to ``<run_dir>/dev/summary.json``, and the lab is taken down (``--keep-lab`` leaves it).

Everything the run made is under ``<run_dir>/dev``: the derived config, service logs, the
alert log, the decision log, the RAG store, the ground truth (``truth.jsonl``).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from base.errors import LabError
from base.signals import StopRequested, raise_on_stop_signals
from gateway.stack import GatewayStack, StackOptions, deep_merge
from lab.lifecycle import down, up
from lab.monitor import PipelineMonitor, render_summary, render_view
from lab.netns import enter_namespace, return_to_namespace
from lab.recipes import Recipe, load_recipes
from lab.scenario import ScenarioTraffic, load_scenarios
from lab.topology import Topology

__all__ = ["DevOptions", "lab_overrides", "run_dev"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevOptions:
    scenario: str = "live"
    seed: int = 1
    # Overrides the scenario's duration (seconds).
    duration_s: float | None = None
    # The user's mld.yaml merged under the lab's settings (None: the shipped defaults).
    config: str | None = None
    # "tty": redraw the screen every second; "lines": a status line every 10 s; "none".
    view: str = "tty"
    keep_lab: bool = False
    # Written at the end (besides <run_dir>/dev/summary.json).
    summary_json: Path | None = None
    scenarios_file: Path | None = None
    # Settings merged over the lab's (tests: shorter TTLs...).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Seconds the pipeline gets after the traffic ends for the last detections.
    settle_s: float = 3.0
    # Called once the stack is up, with it (tests kill services through it).
    on_ready: Callable[[GatewayStack], None] | None = None


def lab_overrides(topo: Topology, dev_dir: Path) -> dict[str, Any]:
    """The lab's settings over the user's: everything in the run folder, a blocklist pin
    folder of its own, short leases and health intervals for a lively view, short block
    TTLs so one attacker's later attacks are seen again."""
    return {
        "node": {
            "id": "lab-gateway",
            "state_dir": str(dev_dir / "state"),
            "xdp_pin_dir": f"/sys/fs/bpf/{topo.prefix}",
        },
        "logging": {"level": "info"},
        # Its own etcd, in the gateway's namespace, whatever the user's file names.
        "control": {"endpoints": [], "lease_ttl_s": 3, "health_interval_s": 1.0},
        # The lab's attackers sit on the gateway's own outside segment: allowlisting the
        # connected subnets, as a real gateway does, would exempt them.
        "firewall": {
            "backend": "xdp",
            "ttl_base_s": 20,
            "ttl_growth": 1.0,
            "auto_allowlist": ["own_addresses", "gateways", "resolvers", "ntp"],
        },
        "rag": {"model": "none"},
    }


class _View:
    def __init__(self, mode: str, out: TextIO) -> None:
        self.mode = mode if mode != "tty" or out.isatty() else "lines"
        self.out = out
        self._next_line = 0.0

    def show(self, screen: str, line: str) -> None:
        if self.mode == "tty":
            self.out.write("\x1b[H\x1b[J" + screen + "\n")
            self.out.flush()
        elif self.mode == "lines" and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + 10
            self.out.write(line + "\n")
            self.out.flush()


def run_dev(
    topo: Topology, run_dir: Path, opts: DevOptions, out: TextIO = sys.stdout
) -> dict[str, Any]:
    """Run the product on the lab (module docstring); returns the summary."""
    recipes = load_recipes(topo)
    scenarios = load_scenarios(recipes, opts.scenarios_file)
    if opts.scenario not in scenarios:
        raise LabError(f"no scenario {opts.scenario!r}; have: {', '.join(sorted(scenarios))}")
    scenario = scenarios[opts.scenario]
    if opts.duration_s is not None:
        scenario = replace(scenario, duration_s=opts.duration_s)
    dev_dir = run_dir / "dev"
    events: list[str] = []

    def event(text: str) -> None:
        events.append(f"{time.strftime('%H:%M:%S')} {text}")
        log.info("%s", text)

    pin_dir = Path(f"/sys/fs/bpf/{topo.prefix}")
    previous_handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    raise_on_stop_signals()
    root_ns: int | None = None
    stack: GatewayStack | None = None
    monitor: PipelineMonitor | None = None
    traffic: ScenarioTraffic | None = None
    summary: dict[str, Any] = {}
    try:
        t_up = time.monotonic()
        up(topo, run_dir)
        event(f"lab up in {time.monotonic() - t_up:.1f} s")
        if dev_dir.exists():
            shutil.rmtree(dev_dir)
        dev_dir.mkdir(parents=True)
        shutil.rmtree(pin_dir, ignore_errors=True)
        root_ns = enter_namespace(topo.namespace("gateway"))
        overrides = deep_merge(lab_overrides(topo, dev_dir), opts.overrides)
        stack = GatewayStack(
            StackOptions(
                outside="outside",
                inside="inside",
                config=opts.config,
                run_dir=dev_dir / "stack",
                eve_log=str(dev_dir / "alerts.json"),
                overrides=overrides,
            ),
            on_event=event,
        )
        t_stack = time.monotonic()
        stack.start()
        event(f"services up and registered in etcd in {time.monotonic() - t_stack:.1f} s")
        monitor = PipelineMonitor(
            stack.status,
            stack.eve_path,
            stack.cfg.firewall.decision_log_path(stack.cfg.node.state_dir),
            stack.pin_dir,
        )
        monitor.host_addresses = {h.name: str(h.ipv4) for h in topo.hosts.values()}
        if opts.on_ready is not None:
            opts.on_ready(stack)
        traffic = ScenarioTraffic(scenario, recipes, topo, run_dir, opts.seed,
                                  dev_dir / "recipes.log")  # fmt: skip
        view = _View(opts.view, out)
        if view.mode == "tty":
            # The screen is redrawn every second: log lines would scroll it away. Events
            # (restarts...) are shown in the view; warnings and errors still print.
            logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        traffic.start()
        title = f"ML Defender lab — scenario {scenario.name}, seed {opts.seed}"
        next_health = 0.0
        while traffic.running:
            traffic.tick()
            stack.poll()
            now = time.monotonic()
            monitor.sample(health=now >= next_health)
            if now >= next_health:
                next_health = now + 1.0
            screen = render_view(monitor, title, traffic.elapsed, scenario.duration_s,
                                 traffic.attacks_started, traffic.t0, events)  # fmt: skip
            line = (f"+{traffic.elapsed:.0f}/{scenario.duration_s:.0f} s: "
                    f"{monitor.counter('sniffer', 'source.packets'):,} packets, "
                    f"{monitor.alerts:,} alerts, {len(monitor.decisions)} firewall decisions, "
                    f"{monitor.dropped_total():,} dropped")  # fmt: skip
            view.show(screen, line)
            time.sleep(0.5)
        event(f"scenario over; {opts.settle_s:.0f} s for the last detections")
        settle_until = time.monotonic() + opts.settle_s
        while time.monotonic() < settle_until:
            stack.poll()
            monitor.sample()
            time.sleep(0.5)
    except (StopRequested, KeyboardInterrupt) as exc:
        event(f"stopping ({exc or 'interrupt'})")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if traffic is not None:
                traffic.stop()
            if monitor is not None:
                monitor.sample()
            if stack is not None:
                stack.stop()
            if monitor is not None and traffic is not None:
                summary = _summarize(monitor, traffic, topo, dev_dir, stack, recipes)
                text = render_summary(summary)
                out.write("\n" + text + "\n")
                out.flush()
                monitor.close()
        finally:
            if root_ns is not None:
                return_to_namespace(root_ns)
            shutil.rmtree(pin_dir, ignore_errors=True)
            if not opts.keep_lab:
                down(topo, run_dir)
            signal.signal(signal.SIGINT, previous_handlers[0])
            signal.signal(signal.SIGTERM, previous_handlers[1])
    if summary and opts.summary_json is not None:
        opts.summary_json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _summarize(
    monitor: PipelineMonitor,
    traffic: ScenarioTraffic,
    topo: Topology,
    dev_dir: Path,
    stack: GatewayStack | None,
    recipes: dict[str, Recipe],
) -> dict[str, Any]:
    truths = traffic.truths
    with open(dev_dir / "truth.jsonl", "w") as f:
        for t in truths:
            f.write(json.dumps(t.to_dict()) + "\n")
    hosts = {name: r.host for name, r in recipes.items()}
    benign_hosts = sorted({hosts[t.recipe] for t in truths if t.kind == "benign"})
    addresses = {h: [str(a) for n in topo.host(h).nics for a in n.addresses] for h in benign_hosts}
    summary = monitor.summary(truths, addresses, hosts, traffic.t0, time.time())
    summary["scenario"] = traffic.scenario.name
    summary["errors"] = traffic.errors
    summary["run_dir"] = str(dev_dir)
    summary["restarts"] = (
        {n: stack.supervisor.restarts(n) for n in stack.supervisor.names} if stack else {}
    )
    (dev_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
