"""Labelled flows from captures, for training and evaluation, kept apart by capture.

A :class:`Capture` is one capture file (or a lab capture folder) with its label rows
(``detector/labels.py`` format; none means every flow is benign) and, for the nDPI captures,
the flows nDPI flags with a risk, which are left out. :func:`extract` reads it with the
offline analysis path (so the features are the live ones) and returns its flows'
features, family and fine label.

:func:`discover` lists the captures the training pipeline uses and says which are held
out. The split is by capture, never by rows of one capture:

* **lab** -- every folder of ``mld lab dataset`` output (``capture.pcap`` + ``labels.csv``);
  the folders named in ``lab_test`` are held out (by default the second ``mixed`` run,
  the only one besides the first with every family in it).
* **shared attacks** -- ``../shared/data/labels.csv`` rows; the captures in
  :data:`SHARED_TRAIN` train, the rest are held out.
* **shared benign** -- ``pcaps/ndpi/``: files at even positions of the sorted list train,
  odd positions are held out; risk-flagged flows are dropped from both.
* ``pcaps/suricata-verify/`` is not used for training: it exercises decoders with a few
  packets per file, not traffic.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from base.errors import ModelError
from detector.analysis import AnalysisStats, analyze_captures
from detector.families import BENIGN, family_of_label
from detector.features import FEATURES
from detector.labels import LabelRow, label_columns, read_labels
from detector.ndpi_risk import FlowKey, flow_key, results_file, risky_flows
from sniffer.config import SnifferConfig
from sniffer.records import FlowColumns

__all__ = [
    "LAB_TEST_DEFAULT",
    "SHARED_TRAIN",
    "Capture",
    "CaptureFlows",
    "discover",
    "extract",
    "keep_mask",
    "labelled_captures",
    "shared_attack_captures",
    "shared_benign_captures",
]

log = logging.getLogger(__name__)

# Shared attack captures used for training (one per kind); the others are held out.
SHARED_TRAIN = (
    "attacks/scan/masscan_tcp_0_1000.pcap",
    "attacks/ddos/syn_dominate_ecn_cwr.pcapng",
    "attacks/ddos/amp_udp_bacnet.pcapng",
)
LAB_TEST_DEFAULT = ("07-mixed-seed8",)


@dataclass(frozen=True)
class Capture:
    """One capture and how its flows are labelled."""

    name: str  # "lab/00-mixed-seed1", "shared/attacks/scan/x.pcap", "shared/ndpi/y.pcap"
    path: Path
    rows: tuple[LabelRow, ...] = ()
    exclude: frozenset[FlowKey] = frozenset()
    held_out: bool = False
    source: str = "lab"  # lab | shared-attack | shared-benign
    # Label rows whose flows are left out altogether (not relabelled benign): the runs of
    # the tool a leave-one-tool-out run holds out, inside a lab capture (detector/loto.py).
    drop: tuple[LabelRow, ...] = ()


@dataclass
class CaptureFlows:
    """A capture's flows: features, labels, fast scores, and counts."""

    capture: Capture
    x: npt.NDArray[np.float32]
    family: npt.NDArray[np.object_]
    label: npt.NDArray[np.object_]
    fast_score: npt.NDArray[np.float32]
    excluded: int = 0
    packets: int = 0
    stats: AnalysisStats = field(default_factory=AnalysisStats)


def _lab_captures(lab_dir: Path, lab_test: Sequence[str]) -> list[Capture]:
    folders = sorted(p.parent for p in lab_dir.glob("*/labels.csv"))
    if (lab_dir / "labels.csv").exists():
        folders = [lab_dir]
    out = []
    for folder in folders:
        pcap = folder / "capture.pcap"
        if not pcap.exists():
            log.warning("%s has labels but no capture.pcap; skipped", folder)
            continue
        rows = tuple(read_labels(folder / "labels.csv"))
        out.append(Capture(f"lab/{folder.name}", pcap, rows, held_out=folder.name in lab_test))
    unknown = set(lab_test) - {c.path.parent.name for c in out}
    if unknown:
        raise ModelError(f"held-out lab captures {sorted(unknown)} are not in {lab_dir}")
    return out


def labelled_captures(labels_csv: Path) -> list[tuple[str, Path, tuple[LabelRow, ...]]]:
    """``(name, path, rows)`` per capture a labels file names, in file order. ``name`` is
    the ``pcap`` column; the file is looked up under ``pcaps/`` beside the labels file,
    then beside it."""
    by_file: dict[str, list[LabelRow]] = {}
    for row in read_labels(labels_csv):
        by_file.setdefault(row.pcap, []).append(row)
    root = labels_csv.parent / "pcaps"
    out = []
    for name, rows in by_file.items():
        path = root / name if (root / name).exists() else labels_csv.parent / name
        if not path.exists():
            raise ModelError(f"{labels_csv}: capture {name} not found under {root} or beside it")
        out.append((name, path, tuple(rows)))
    return out


def shared_attack_captures(labels_csv: Path, train: Sequence[str] = SHARED_TRAIN) -> list[Capture]:
    """The captures a shared-format labels file names, ``train`` ones not held out."""
    return [
        Capture(f"shared/{name}", path, rows, held_out=name not in train, source="shared-attack")
        for name, path, rows in labelled_captures(labels_csv)
    ]


def shared_benign_captures(ndpi_dir: Path) -> list[Capture]:
    """nDPI captures as benign: even positions train, odd are held out; risks excluded."""
    files = sorted(
        p for p in ndpi_dir.iterdir() if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap")
    )
    return [
        Capture(
            f"shared/ndpi/{p.name}",
            p,
            (),
            frozenset(risky_flows(results_file(p))),
            held_out=i % 2 == 1,
            source="shared-benign",
        )
        for i, p in enumerate(files)
    ]


def discover(
    lab_dir: Path | None,
    shared_dir: Path | None,
    lab_test: Sequence[str] = LAB_TEST_DEFAULT,
) -> list[Capture]:
    """Every capture the training pipeline reads, marked held out or not."""
    out: list[Capture] = []
    if lab_dir is not None:
        if not lab_dir.is_dir():
            raise ModelError(
                f"{lab_dir} does not exist: capture the lab dataset first (make lab-dataset)"
            )
        out += _lab_captures(lab_dir, lab_test)
    if shared_dir is not None:
        labels = shared_dir / "labels.csv"
        ndpi = shared_dir / "pcaps" / "ndpi"
        if not labels.exists() or not ndpi.is_dir():
            raise ModelError(f"{shared_dir} has no labels.csv and pcaps/ndpi: pass ../shared/data")
        out += shared_attack_captures(labels) + shared_benign_captures(ndpi)
    if not out:
        raise ModelError("no training data: pass --lab DIR and/or --shared DIR")
    return out


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def keep_mask(flows: FlowColumns, exclude: frozenset[FlowKey]) -> npt.NDArray[np.bool_]:
    """False for the flows whose key is in ``exclude`` (the nDPI risk-flagged ones)."""
    keep = np.ones(len(flows), dtype=bool)
    if not exclude:
        return keep
    proto = flows["protocol"].tolist()
    sp, dp = flows["src_port"].tolist(), flows["dst_port"].tolist()
    for i in range(len(flows)):
        key = flow_key(proto[i], _addr(flows.src_addr[i]), sp[i], _addr(flows.dst_addr[i]), dp[i])
        keep[i] = key not in exclude
    return keep


def extract(capture: Capture, sniffer: SnifferConfig) -> CaptureFlows:
    """Features and labels of every flow of ``capture`` (risk-flagged nDPI flows dropped)."""
    xs, fams, labels, fasts = [], [], [], []
    excluded = 0
    stats = AnalysisStats()
    # Flows left out: nDPI's risk-flagged ones and those of ``capture.drop`` (both counted
    # in ``excluded``).
    # One row per flow, its final record: interim records (sniffer.capture.interim_s) would
    # add partial copies of every long flow to the training and evaluation sets.
    sniffer = dataclasses.replace(
        sniffer, capture=dataclasses.replace(sniffer.capture, interim_s=0.0)
    )
    for batch in analyze_captures([capture.path], sniffer, None, stats):
        flows = batch.flows
        keep = keep_mask(flows, capture.exclude)
        if capture.drop:
            _gone_fam, gone = label_columns(capture.drop, flows)
            keep &= gone == BENIGN
        excluded += int((~keep).sum())
        if capture.rows:
            _fam, fine = label_columns(capture.rows, flows)
        else:
            fine = np.full(len(flows), BENIGN, dtype=object)
        family = np.array([family_of_label(str(v)) for v in fine], dtype=object)
        xs.append(batch.features[keep])
        fams.append(family[keep])
        labels.append(fine[keep])
        fasts.append(batch.fast.score.astype(np.float32)[keep])
    n_feat = len(FEATURES)
    if stats.rejected:
        log.warning("%s: %s", capture.name, "; ".join(r.message for r in stats.rejected))
    return CaptureFlows(
        capture=capture,
        x=np.concatenate(xs) if xs else np.zeros((0, n_feat), np.float32),
        family=np.concatenate(fams) if fams else np.zeros(0, object),
        label=np.concatenate(labels) if labels else np.zeros(0, object),
        fast_score=np.concatenate(fasts) if fasts else np.zeros(0, np.float32),
        excluded=excluded,
        packets=stats.packets,
        stats=stats,
    )
