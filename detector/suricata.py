"""Suricata 7 with a rule set on the same captures, as the reference column of ``mld
detector evaluate``: which flows of each capture Suricata alerts on.

Suricata reads every capture in one run (``-r`` on a folder of copies, so its start-up and
rule loading, about 8 s for ET Open's 49,000 lines, are paid once), with its installed
configuration (``/etc/suricata/suricata.yaml``) and these overrides:

* ``HOME_NET`` and ``EXTERNAL_NET`` are ``any``: the captures come from other networks,
  and ET's inbound/outbound rules would otherwise see nothing of them;
* the EVE log names the capture of each event (``pcap-file``), and only its alerts are
  read; every rule file of the rule folder is loaded (concatenated into one file).

A flow counts as flagged by Suricata when an alert names its 5-tuple in either direction
(ICMP: addresses only, as :func:`detector.ndpi_risk.flow_key` keys flows), the same key
as the nDPI risk exclusion. When Suricata is not installed (``bench/setup-peers.sh``
installs it from bookworm-backports), :func:`suricata_version` says None and evaluate
prints the column as not run.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from base.errors import MldError
from detector.ndpi_risk import FlowKey, flow_key

__all__ = ["SuricataAlerts", "run_suricata", "suricata_version"]

log = logging.getLogger(__name__)

_PROTO = {"TCP": 6, "UDP": 17, "ICMP": 1, "IPV6-ICMP": 58, "SCTP": 132}


@dataclass
class SuricataAlerts:
    """Flow keys Suricata alerted on, per capture path, and its version and rule count."""

    version: str
    rules_dir: Path
    by_capture: dict[Path, set[FlowKey]] = field(default_factory=dict)
    alerts: int = 0

    def flagged(self, capture: Path) -> set[FlowKey]:
        return self.by_capture.get(capture.resolve(), set())


def suricata_version() -> str | None:
    """``"7.0.10"`` when a Suricata 7 is on PATH, else None."""
    exe = shutil.which("suricata")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    if "version" not in words:
        return None
    version = words[words.index("version") + 1]
    return version if version.startswith("7.") else None


def run_suricata(
    captures: Sequence[Path], rules_dir: Path, timeout_s: float = 1800.0
) -> SuricataAlerts:
    """Run Suricata over ``captures`` with every ``*.rules`` file of ``rules_dir``."""
    version = suricata_version()
    if version is None:
        raise MldError("Suricata 7 is not installed (bash bench/setup-peers.sh installs it)")
    rule_files = sorted(rules_dir.glob("*.rules"))
    if not rule_files:
        raise MldError(f"{rules_dir}: no *.rules files")
    result = SuricataAlerts(version, rules_dir)
    with tempfile.TemporaryDirectory(prefix="mld-eval-suricata-") as tmp:
        work = Path(tmp)
        inbox = work / "in"
        inbox.mkdir()
        names: dict[str, Path] = {}
        for i, path in enumerate(captures):
            # A copy (Suricata skips symbolic links in a folder); an index keeps names unique.
            name = f"{i:05d}-{path.name}"
            shutil.copyfile(path, inbox / name)
            names[name] = path.resolve()
        rules = work / "all.rules"
        with rules.open("w") as out:
            for f in rule_files:
                out.write(f.read_text(errors="replace"))
                out.write("\n")
        logdir = work / "log"
        logdir.mkdir()
        cmd = [
            "suricata",
            "-r",
            str(inbox),
            "-S",
            str(rules),
            "-l",
            str(logdir),
            "-k",
            "none",
            "--runmode",
            "single",
            "--set",
            "vars.address-groups.HOME_NET=any",
            "--set",
            "vars.address-groups.EXTERNAL_NET=any",
            "--set",
            "outputs.1.eve-log.pcap-file=true",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        eve = logdir / "eve.json"
        if proc.returncode != 0 or not eve.exists():
            raise MldError(
                f"suricata failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
            )
        with eve.open() as lines:
            for line in lines:
                if '"event_type":"alert"' not in line:
                    continue
                e = json.loads(line)
                if "pcap_filename" not in e:
                    raise MldError(
                        "suricata's EVE alerts carry no pcap_filename: its configuration's "
                        "second output is not eve-log (see detector/suricata.py)"
                    )
                source = names.get(Path(e["pcap_filename"]).name)
                proto = _PROTO.get(str(e.get("proto", "")).upper())
                if source is None or proto is None:
                    continue
                key = flow_key(
                    proto,
                    e["src_ip"],
                    int(e.get("src_port", 0)),
                    e["dest_ip"],
                    int(e.get("dest_port", 0)),
                )
                result.by_capture.setdefault(source, set()).add(key)
                result.alerts += 1
    log.info("suricata %s: %d alerts over %d captures", version, result.alerts, len(captures))
    return result
