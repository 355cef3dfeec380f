"""The detector families, from the schema, and how attack labels and fast rules map onto them.

The families are defined once, as the ``Family`` enum of proto/events.proto (with their
meaning); this module is their Python view. A family is written everywhere (protobuf
string fields, labels.csv, the model bundle's manifest, EVE output, mld.yaml) as its
enum name without the prefix, in lower case (``FAMILY_DDOS`` -> ``ddos``):

    FAMILIES          the families with a forest, in bundle order: one RandomForest per
                      family, trained one-against-the-rest (benign flows and the other
                      families' flows are its negatives): ddos, scan, bruteforce, tunnel,
                      lateral, c2 (a bundle holds the forests it was trained with; one
                      trained before c2 existed has none, and c2 then comes from the
                      ``beacon`` fast rule only)
    ANOMALY           the anomaly model's family (detector/anomaly_model.py): no forest
    VERDICT_FAMILIES  every family a verdict can name: FAMILIES, then ANOMALY
    BENIGN            no attack (labels and training; never a verdict's family)

Labels come from two vocabularies: the lab's fine labels (``lab/recipes.yaml``) and the
shared captures' ``family`` column (``../shared/data/labels.csv``). A label that is in
neither is an error, so a new recipe cannot silently train as benign.
"""

from __future__ import annotations

from proto.events_pb2 import FAMILY_ANOMALY, FAMILY_BENIGN, FAMILY_UNSPECIFIED, Family

__all__ = [
    "ANOMALY",
    "BENIGN",
    "FAMILIES",
    "FAST_RULE_FAMILY",
    "LABEL_FAMILY",
    "VERDICT_FAMILIES",
    "family_name",
    "family_of_label",
]

_PREFIX = "FAMILY_"


def family_name(value: Family.ValueType) -> str:
    """The written name of a ``Family`` value: ``FAMILY_DDOS`` -> ``"ddos"``."""
    return Family.Name(value).removeprefix(_PREFIX).lower()


BENIGN = family_name(FAMILY_BENIGN)
ANOMALY = family_name(FAMILY_ANOMALY)
FAMILIES: tuple[str, ...] = tuple(
    family_name(v)
    for v in sorted(Family.values())
    if v not in (FAMILY_UNSPECIFIED, FAMILY_BENIGN, FAMILY_ANOMALY)
)
VERDICT_FAMILIES: tuple[str, ...] = (*FAMILIES, ANOMALY)

LABEL_FAMILY: dict[str, str] = {
    # lab/recipes.yaml labels
    "syn_flood": "ddos",
    "udp_flood": "ddos",
    "icmp_flood": "ddos",
    "dns_amplification": "ddos",
    "slow_http": "ddos",
    "port_scan": "scan",
    "host_sweep": "scan",
    "ssh_bruteforce": "bruteforce",
    "ftp_bruteforce": "bruteforce",
    "http_bruteforce": "bruteforce",
    "dns_tunnel": "tunnel",
    "dns_exfil": "tunnel",
    "c2_beacon": "c2",
    "lateral_fanout": "lateral",
    # ../shared/data/labels.csv families
    "portscan": "scan",
    "amplification": "ddos",
    # family names map to themselves
    **{f: f for f in FAMILIES},
}

# The fast rule's family, for Verdict.family when fast_score wins (sniffer/fast_rules.py).
FAST_RULE_FAMILY: dict[str, str] = {
    "syn_flood": "ddos",
    "udp_flood": "ddos",
    "port_scan": "scan",
    "host_sweep": "scan",
    "tiny_fragments": "scan",
    "dns_tunnel": "tunnel",
    "brute_force": "bruteforce",
    "beacon": "c2",
    "fingerprint": "scan",
    "reflection": "ddos",
}


def family_of_label(label: str) -> str:
    """The family of a lab or shared label; ``benign`` for benign. Raises on unknown."""
    if label == BENIGN or label == "":
        return BENIGN
    try:
        return LABEL_FAMILY[label]
    except KeyError:
        raise ValueError(
            f"label {label!r} belongs to no detector family: add it to "
            "detector.families.LABEL_FAMILY"
        ) from None
