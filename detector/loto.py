"""Leave-one-tool-out: train without a tool, test on it (``mld detector evaluate
--leave-one-tool-out``).

A forest that learnt a tool's fingerprint (its packet sizes, window, flags) scores that
tool well and the next tool badly. This run measures what carries over: for every family
whose attack captures come from more than one tool, and for every such tool, a bundle is
trained on everything else (the other tools of the family, the other families, the
training half of the benign captures) and scored on the left-out tool's captures, with
the fast rules as in the product (``final = max(fast, ml)``) and the forests alone.

The tool of a capture is the ``tool`` column of its labels row when there is one, else the
first word of its file name (``masscan_tcp_0_1000.pcap`` -> ``masscan``,
``amp_udp_snmp.pcapng`` -> ``amp``: for the shared DDoS captures the word names the
vector, reflection or SYN flood, which is what a generator tool sets). Lab captures mix
many recipes in one file, so they are only ever trained on here, never tested on; but the
runs of the left-out tool inside them (their label rows name the recipe, :data:`LAB_TOOLS`
gives its tool) are left out of the training too, flows and all, so that leaving out
nmap with ``--lab`` trains on no nmap at all.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.bundle import load_bundle
from detector.config import ThresholdsConfig, TrainConfig
from detector.dataset import Capture
from detector.evaluate import CaptureResult, _run
from detector.families import family_of_label
from detector.labels import LabelRow
from detector.scoring import Scorer
from detector.train import train_bundle
from sniffer.config import SnifferConfig

__all__ = ["LAB_TOOLS", "ToolResult", "lab_tool", "leave_one_tool_out", "render_loto", "tool_of"]

# The tool of each lab recipe that makes one of the shared captures' tools (lab/recipes.yaml;
# the DDoS names are the vectors, as in the shared file names). Recipes of other tools
# (hydra, iodine's lab runs are iodine too, slowhttptest, hping3's UDP and ICMP floods)
# only matter when a shared capture of that tool exists.
LAB_TOOLS = {
    "port_scan_syn": "nmap",
    "port_scan_connect": "nmap",
    "port_scan_udp": "nmap",
    "host_sweep": "nmap",
    "masscan_scan": "masscan",
    "syn_flood": "syn",
    "syn_flood_spoofed": "syn",
    "dns_amplification": "amp",
    "dns_tunnel": "iodine",
}


@dataclass
class ToolResult:
    family: str
    tool: str
    captures: list[str]
    trained_captures: int
    lab_runs_left_out: int  # label rows of the tool inside lab captures, flows left out
    flows: int
    detected: int  # final score alerts (fast rules and forests)
    detected_ml: int  # the forests alone at the family's alert threshold
    family_right: int

    @property
    def rate(self) -> float:
        return self.detected / self.flows if self.flows else 0.0

    @property
    def rate_ml(self) -> float:
        return self.detected_ml / self.flows if self.flows else 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "rate": round(self.rate, 6),
            "rate_ml": round(self.rate_ml, 6),
        }


def tool_of(capture: Capture) -> str:
    """The tool that made an attack capture (module doc); "" for benign and lab captures."""
    if capture.source != "shared-attack" or not capture.rows:
        return ""
    tool = getattr(capture.rows[0], "tool", "")
    return str(tool) if tool else Path(capture.name).name.split("_")[0].split(".")[0]


def lab_tool(row: LabelRow) -> str:
    """The tool of a lab label row (its notes start ``recipe NAME``), "" when unknown."""
    words = row.notes.replace(",", " ").split()
    if len(words) >= 2 and words[0] == "recipe":
        return LAB_TOOLS.get(words[1], "")
    return ""


def _family(capture: Capture) -> str:
    row = capture.rows[0]
    return family_of_label(row.label or row.family)


def leave_one_tool_out(
    captures: Sequence[Capture],
    sniffer: SnifferConfig,
    train: TrainConfig,
    thresholds: ThresholdsConfig,
    progress: Callable[[str], None] | None = None,
) -> list[ToolResult]:
    """One result per (family, tool) of the families with two tools or more."""
    say = progress or (lambda _m: None)
    tools: dict[str, dict[str, list[Capture]]] = {}
    for c in captures:
        tool = tool_of(c)
        if tool:
            tools.setdefault(_family(c), {}).setdefault(tool, []).append(c)
    results: list[ToolResult] = []
    for family, by_tool in sorted(tools.items()):
        if len(by_tool) < 2:
            say(f"{family}: one tool ({', '.join(by_tool)}), no leave-one-tool-out")
            continue
        for tool, test in sorted(by_tool.items()):
            left_out = {c.name for c in test}
            # Every other attack capture trains (held out or not, to give the forests
            # every other tool); benign and lab captures keep their split.
            train_caps = []
            lab_runs = 0
            for c in captures:
                if c.name in left_out:
                    continue
                if c.source == "shared-attack":
                    c = dataclasses.replace(c, held_out=False)
                elif c.source == "lab":
                    drop = tuple(r for r in c.rows if lab_tool(r) == tool)
                    lab_runs += len(drop)
                    c = dataclasses.replace(c, drop=drop)
                train_caps.append(c)
            say(
                f"{family}/{tool}: training on {len(train_caps)} captures without it"
                f" ({lab_runs} lab runs of it left out)"
            )
            with tempfile.TemporaryDirectory(prefix="mld-loto-") as tmp:
                out = Path(tmp) / "bundle"
                train_bundle(train_caps, out, sniffer, train, thresholds.alert, Path(tmp) / "c")
                scorer = Scorer(load_bundle(out, Path(tmp) / "c"), thresholds)
                r = ToolResult(
                    family, tool, sorted(left_out), len(train_caps), lab_runs, 0, 0, 0, 0
                )
                for c in test:
                    res: CaptureResult = _run(c, "attack", sniffer, scorer, set(), None)
                    n = res.counts(thresholds)
                    r.flows += res.in_scope
                    r.detected += n["flagged"]
                    r.family_right += n["family_right"]
                    r.detected_ml += int((res.ml >= thresholds.alert_of(family)).sum())
            say(f"{family}/{tool}: {r.detected}/{r.flows} detected ({r.rate:.3f})")
            results.append(r)
    return results


def render_loto(results: Sequence[ToolResult]) -> str:
    lines = [
        "leave-one-tool-out (trained without the tool, tested on it):",
        f"{'family':10s} {'left out':10s} {'captures':>8s} {'flows':>7s} {'detected':>8s} "
        f"{'rate':>7s} {'forests':>7s} {'fam ok':>7s} {'lab runs out':>12s}",
    ]
    for r in results:
        lines.append(
            f"{r.family:10s} {r.tool:10s} {len(r.captures):8d} {r.flows:7d} {r.detected:8d} "
            f"{r.rate:7.3f} {r.rate_ml:7.3f} {r.family_right:7d} {r.lab_runs_left_out:12d}"
        )
    if not results:
        lines.append("(no family has attack captures from two tools)")
    return "\n".join(lines) + "\n"
