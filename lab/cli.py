"""``mld lab``: bring the namespace lab up and down, run traffic recipes, capture scenarios.

mld/cli.py registers it through :func:`register`. Exit codes (base/exit_codes.py): 0
success; 1 an ML Defender error (or a recipe whose evidence did not show up); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from base.errors import LabError
from base.exit_codes import EXIT_ERROR, EXIT_OK
from lab.lifecycle import DEFAULT_RUN_DIR, down, status, up
from lab.recipes import Recipe, load_recipes, run_recipe
from lab.scenario import Scenario, load_datasets, load_scenarios, run_scenario
from lab.summary import summarize_capture
from lab.topology import Topology, load_topology

__all__ = ["register"]

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  sudo mld lab up                         build the namespaces, start nginx, sshd, dnsmasq...
  mld lab status                          hosts, addresses, services, XDP programs
  mld lab recipes                         the traffic recipes (benign and attacks)
  mld lab run ssh_bruteforce --seed 3     one recipe: its ground truth and evidence
  mld lab run syn_flood --set count=2000  ... with a parameter fixed
  mld lab capture --scenario mixed --out build/lab-data/mixed-1 --seed 1
                                          pcap on the gateway + labels.csv + truth.jsonl
  mld lab dataset --out build/lab-data    every scenario of the default dataset
  mld lab summary build/lab-data/mixed-1  flows per label in a labelled capture
  sudo mld lab down                       remove everything (also after a crash)
"""


def _emit(args: argparse.Namespace, result: Any, text: str) -> None:
    print(json.dumps(result) if args.json else text)


def _topo(args: argparse.Namespace) -> Topology:
    return load_topology(args.topology)


def _require_up(args: argparse.Namespace, topo: Topology) -> None:
    st = status(topo, Path(args.run_dir))
    if not st["up"]:
        raise LabError(
            f"the lab is not up (missing: {', '.join(st['missing_namespaces']) or 'services'}); "
            "run `mld lab up` first"
        )


def _cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    state = up(_topo(args), Path(args.run_dir))
    result = {
        "up": True,
        "seconds": round(time.monotonic() - t0, 1),
        "run_dir": state.run_dir,
        "services": [{"service": p.service, "pid": p.pid} for p in state.processes],
    }
    services = ", ".join(f"{p.service} (pid {p.pid})" for p in state.processes)
    _emit(args, result, f"lab up in {result['seconds']} s; run dir {state.run_dir}\n"
                        f"services: {services}")  # fmt: skip
    return EXIT_OK


def _cmd_down(args: argparse.Namespace) -> int:
    result = down(_topo(args), Path(args.run_dir), keep_logs=not args.purge)
    _emit(args, result, f"lab down: removed {len(result['namespaces_removed'])} namespaces, "
                        f"stopped {len(result['processes_stopped'])} processes")  # fmt: skip
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    st = status(_topo(args), Path(args.run_dir))
    from gateway.supervisor import read_state

    stack = read_state(Path(args.run_dir) / "dev" / "stack" / "stack.json") or {}
    st["product"] = stack.get("children", {})
    lines = [f"lab: {'up' if st['up'] else 'down'} (run dir {st['run_dir']})"]
    for name, h in st["hosts"].items():
        addrs = "; ".join(f"{nic} {' '.join(a)}" for nic, a in h["addresses"].items())
        xdp = f"  xdp: {', '.join(h['xdp'])}" if h["xdp"] else ""
        lines.append(f"  {name:12s} {'up  ' if h['up'] else 'down'} {addrs}{xdp}")
    for s in st["services"]:
        lines.append(
            f"  service {s['service']:11s} pid {s['pid']:<7d} {'running' if s['alive'] else 'DEAD'}"
        )
    for name, c in st.get("product", {}).items():
        pid = c.get("pid")
        alive = pid is not None and Path(f"/proc/{pid}").exists()
        lines.append(f"  mld {name:15s} pid {pid or '-'!s:<7} "
                     f"{'running' if alive else 'stopped'}, {c.get('restarts', 0)} restarts, "
                     f"log {c.get('log')}")  # fmt: skip
    _emit(args, st, "\n".join(lines))
    return EXIT_OK if st["up"] or not st["namespaces"] else EXIT_ERROR


def _cmd_recipes(args: argparse.Namespace) -> int:
    recipes = load_recipes(_topo(args), args.recipes)
    rows = [
        {"name": r.name, "kind": r.kind, "family": r.family, "label": r.label, "host": r.host,
         "timeout_s": r.timeout_s, "params": r.params}
        for r in recipes.values()
    ]  # fmt: skip
    text = "\n".join(
        f"{r['name']:20s} {r['kind']:7s} {r['family'] or '-':11s} on {r['host']:12s} "
        f"<= {r['timeout_s']:.0f} s" for r in rows
    )  # fmt: skip
    _emit(args, rows, text)
    return EXIT_OK


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LabError(f"--set takes KEY=VALUE, not {item!r}")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    topo = _topo(args)
    recipes = load_recipes(topo, args.recipes)
    if args.recipe not in recipes:
        raise LabError(f"no recipe {args.recipe!r}; `mld lab recipes` lists them")
    _require_up(args, topo)
    recipe = recipes[args.recipe]
    overrides = _parse_set(args.set or [])
    unknown = set(overrides) - set(recipe.params)
    if unknown:
        raise LabError(f"{recipe.name} has no parameter(s) {', '.join(sorted(unknown))} "
                       f"(it has: {', '.join(recipe.params) or 'none'})")  # fmt: skip
    if overrides:
        recipe = replace(recipe, params={**recipe.params, **overrides})
    truth = run_recipe(recipe, topo, Path(args.run_dir), seed=args.seed, timeout_s=args.timeout)
    ok = all(e["ok"] for e in truth.evidence)
    evidence = "\n".join(f"  {'ok ' if e['ok'] else 'NOT'} {e['check']}: saw {e['seen']}"
                         for e in truth.evidence)  # fmt: skip
    text = (f"{truth.recipe} ({truth.kind}{', ' + truth.family if truth.family else ''}) "
            f"{truth.end - truth.start:.1f} s, exit {truth.exit_code}"
            f"{' (timed out)' if truth.timed_out else ''}, params {truth.params}\n"
            f"{evidence}")  # fmt: skip
    _emit(args, truth.to_dict(), text)
    return EXIT_OK if ok else EXIT_ERROR


def _load_scenarios(
    args: argparse.Namespace,
) -> tuple[Topology, dict[str, Recipe], dict[str, Scenario]]:
    topo = _topo(args)
    recipes = load_recipes(topo, args.recipes)
    return topo, recipes, load_scenarios(recipes, args.scenarios)


def _capture_one(
    args: argparse.Namespace,
    loaded: tuple[Topology, dict[str, Recipe], dict[str, Scenario]],
    name: str,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    topo, recipes, scenarios = loaded
    if name not in scenarios:
        raise LabError(f"no scenario {name!r} (scenarios: {', '.join(scenarios)})")
    host, _, nic = args.iface.partition("/")
    progress = (
        None if args.quiet or args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    summary = run_scenario(scenarios[name], recipes, topo, Path(args.run_dir), out, seed=seed,
                           iface=(host, nic or "outside"), snaplen=args.snaplen,
                           progress=progress)  # fmt: skip
    summary["flows"] = summarize_capture(out)
    summary["out"] = str(out)
    return summary


def _summary_text(s: dict[str, Any]) -> str:
    labels = ", ".join(f"{k} {v}" for k, v in s["flows"]["labels"].items())
    cap = s["capture"]
    lines = [f"{s['scenario']} (seed {s['seed']}): {s['duration_s']} s, {s['attack_runs']}/"
             f"{s['attacks_scheduled']} attacks, {s['flows']['flows']} flows ({labels}); "
             f"{cap.get('captured', '?')} packets, {cap.get('dropped_by_kernel', '?')} dropped "
             f"-> {s['out']}"]  # fmt: skip
    lines += [f"  evidence missing: {f}" for f in s["evidence_failed"]]
    lines += [f"  error: {e}" for e in s["errors"]]
    return "\n".join(lines)


def _cmd_capture(args: argparse.Namespace) -> int:
    loaded = _load_scenarios(args)
    _require_up(args, loaded[0])
    summary = _capture_one(args, loaded, args.scenario, args.seed, Path(args.out))
    _emit(args, summary, _summary_text(summary))
    return EXIT_OK if not summary["errors"] else EXIT_ERROR


def _cmd_dataset(args: argparse.Namespace) -> int:
    loaded = _load_scenarios(args)
    _require_up(args, loaded[0])
    datasets = load_datasets(loaded[2], args.scenarios)
    if args.name not in datasets:
        raise LabError(f"no dataset {args.name!r} (datasets: {', '.join(datasets)})")
    results = []
    for i, (scenario, seed) in enumerate(datasets[args.name]):
        out = Path(args.out) / f"{i:02d}-{scenario}-seed{seed}"
        if (out / "scenario.json").exists() and not args.force:
            log.info("%s exists; skipping (--force captures it again)", out)
            continue
        summary = _capture_one(args, loaded, scenario, seed, out)
        results.append(summary)
        if not args.json:
            print(_summary_text(summary), flush=True)
    total = sum(r["flows"]["flows"] for r in results)
    if args.json:
        print(json.dumps({"captures": results, "flows": total}))
    else:
        print(f"dataset {args.name}: {len(results)} captures, {total} flows -> {args.out}")
    return EXIT_OK if all(not r["errors"] for r in results) else EXIT_ERROR


def _dotted_overrides(items: list[str]) -> dict[str, Any]:
    """["firewall.ttl_base_s=5", ...] -> {"firewall": {"ttl_base_s": 5}} (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabError(f"--set takes SECTION.KEY=VALUE, not {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _cmd_dev(args: argparse.Namespace) -> int:
    from lab.dev import DevOptions, run_dev

    opts = DevOptions(
        scenario=args.scenario,
        seed=args.seed,
        duration_s=args.duration,
        config=args.config,
        view="none" if args.json else args.view,
        keep_lab=args.keep_lab,
        summary_json=Path(args.summary) if args.summary else None,
        scenarios_file=Path(args.scenarios) if args.scenarios else None,
        overrides=_dotted_overrides(args.set or []),
    )
    summary = run_dev(_topo(args), Path(args.run_dir), opts)
    if args.json:
        print(json.dumps(summary))
    if not summary:
        return EXIT_ERROR
    return dev_exit_code(summary)


def dev_exit_code(summary: dict[str, Any]) -> int:
    """1 when a recipe failed to run, or attacks ran and not one (with a real source) was
    handled: blocked, or detected and deliberately not blocked because its source never
    completed a handshake (``not_blocked_unverified``: a SYN scan or flood, whose source
    could be forged; firewall.block_unverified). Then the product did not do its job."""
    real = [a for a in summary["attacks"] if not a["spoofed"]]
    unhandled = [
        a
        for a in real
        if a["blocked_after_s"] is None and not a.get("not_blocked_unverified", False)
    ]
    failed = summary.get("errors") or (real and len(unhandled) == len(real))
    return EXIT_ERROR if failed else EXIT_OK


def _cmd_summary(args: argparse.Namespace) -> int:
    result = summarize_capture(Path(args.folder))
    text = f"{result['flows']} flows\n" + "\n".join(
        f"  {k:20s} {v}" for k, v in result["labels"].items()
    )
    _emit(args, result, text)
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``lab`` and its actions to the ``mld`` subcommands."""
    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument(
        "--topology", metavar="FILE", help="topology file (default: lab/topology.yaml)"
    )
    shared.add_argument("--run-dir", metavar="DIR", default=str(DEFAULT_RUN_DIR),
                        help="state, service configs and logs (default: $MLD_LAB_RUN_DIR or "
                        "/run/mld-lab)")  # fmt: skip
    shared.add_argument(
        "--recipes", metavar="FILE", help="recipes file (default: lab/recipes.yaml)"
    )
    fmt = argparse.RawDescriptionHelpFormatter
    lab = sub.add_parser(
        "lab",
        parents=[common],
        help="the network-namespace lab: topology, real traffic, labelled captures",
        description="A lab of network namespaces (attacker, client, workstation, victim, a "
        "gateway with two NICs, a server running nginx, OpenSSH, dnsmasq and iodined) with "
        "benign and attack traffic from real tools, and labelled captures of it. Needs root.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    p = actions.add_parser("up", parents=[shared], help="build the lab and start its services",
                           epilog="examples:\n  sudo mld lab up\n  mld lab up --json",
                           formatter_class=fmt)  # fmt: skip
    p.set_defaults(func=_cmd_up)
    p = actions.add_parser("down", parents=[shared], help="remove everything the lab made",
                           epilog="examples:\n  sudo mld lab down\n  mld lab down --purge",
                           formatter_class=fmt)  # fmt: skip
    p.add_argument("--purge", action="store_true", help="also delete the run dir (logs)")
    p.set_defaults(func=_cmd_down)
    p = actions.add_parser("status", parents=[shared], help="what is up",
                           epilog="examples:\n  mld lab status\n  mld lab status --json | jq .up",
                           formatter_class=fmt)  # fmt: skip
    p.set_defaults(func=_cmd_status)
    p = actions.add_parser(
        "recipes",
        parents=[shared],
        help="list the traffic recipes",
        epilog="examples:\n  mld lab recipes --json",
        formatter_class=fmt,
    )
    p.set_defaults(func=_cmd_recipes)

    p = actions.add_parser(
        "run", parents=[shared], help="run one recipe and show its ground truth and evidence",
        epilog="examples:\n  mld lab run port_scan_syn\n  mld lab run syn_flood --set count=2000 "
        "--seed 7 --json\nexit status 1 when the recipe's evidence did not show up.",
        formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("recipe")
    p.add_argument("--seed", type=int, default=0, help="seed for the recipe's parameters")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a parameter")
    p.add_argument("--timeout", type=float, help="stop earlier than the recipe's timeout_s")
    p.set_defaults(func=_cmd_run)

    def capture_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenarios", metavar="FILE", help="default: lab/scenarios.yaml")
        p.add_argument("--iface", default="gateway/outside", metavar="HOST/NIC",
                       help="where to capture (default: gateway/outside)")  # fmt: skip
        p.add_argument("--snaplen", type=int, default=256, help="bytes kept per packet")

    p = actions.add_parser(
        "capture", parents=[shared], help="run a scenario; write capture.pcap and labels.csv",
        epilog="examples:\n  mld lab capture --scenario mixed --out build/lab-data/mixed --seed 1\n"
        "  mld lab capture --scenario smoke --out /tmp/smoke --iface gateway/inside",
        formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    capture_options(p)
    p.set_defaults(func=_cmd_capture)

    p = actions.add_parser(
        "dataset", parents=[shared], help="capture every scenario of a dataset recipe",
        epilog="examples:\n  mld lab dataset --out build/lab-data\n"
        "  mld lab dataset --name default --out /data/lab --force",
        formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("--name", default="default", help="dataset in the scenarios file")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="capture again what exists")
    capture_options(p)
    p.set_defaults(func=_cmd_dataset)

    p = actions.add_parser(
        "dev", parents=[shared],
        help="the whole product on the lab: every service, a scenario, a live view, a summary",
        description="Bring the lab up, run every service on its gateway (XDP on both NICs, "
        "detector, firewall agent at XDP, RAG store, a local etcd), run a scenario of benign "
        "users and attacks with a live view, then print when each attack was detected, "
        "blocked and dropped, and what the benign users got. The lab is taken down at the end "
        "(Ctrl-C too).",
        epilog="examples:\n  sudo mld lab dev                       the 'live' scenario (about "
        "2.5 minutes)\n  sudo mld lab dev --scenario floods --seed 3\n"
        "  sudo mld lab dev --duration 60 --view lines --summary /tmp/summary.json\n"
        "  sudo mld lab dev --keep-lab            leave the lab up afterwards (make kill-lab)\n"
        "exit status 1 when no attack was blocked or a recipe failed to run.",
        formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("--scenario", default="live", help="scenario (default: live)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, metavar="S", help="override the scenario's length")
    p.add_argument("--scenarios", metavar="FILE", help="default: lab/scenarios.yaml")
    p.add_argument("--view", choices=("tty", "lines", "none"), default="tty",
                   help="live view: redraw (tty, default when a terminal), a line every 10 s, "
                   "or none")  # fmt: skip
    p.add_argument("--summary", metavar="FILE", help="also write the summary here (JSON)")
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="a setting over the lab's (mld.yaml names), e.g. "
                   "firewall.ttl_base_s=60")  # fmt: skip
    p.set_defaults(func=_cmd_dev)

    p = actions.add_parser("summary", parents=[shared], help="flows per label of a capture",
                           epilog="examples:\n  mld lab summary build/lab-data/00-mixed-seed1",
                           formatter_class=fmt)  # fmt: skip
    p.add_argument("folder", metavar="DIR", help="a folder with capture.pcap and labels.csv")
    p.set_defaults(func=_cmd_summary)
