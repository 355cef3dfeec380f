"""Detector families and how attack labels and fast rules map onto them.

One RandomForest per family, each trained one-against-the-rest (benign flows and the
other families' flows are its negatives):

    ddos        floods (SYN, UDP, ICMP), reflection/amplification, slow HTTP
    scan        port scans and host sweeps
    bruteforce  credential guessing against a login service (SSH, HTTP basic auth, ...)
    tunnel      DNS tunnelling, DNS exfiltration and C2-like beaconing
    lateral     SMB/RDP fan-out from an inside host (the network side of ransomware spread)

Labels come from two vocabularies: the lab's fine labels (``lab/recipes.yaml``) and the
shared captures' ``family`` column (``../shared/data/labels.csv``). A label that is in
neither is an error, so a new recipe cannot silently train as benign.
"""

from __future__ import annotations

__all__ = [
    "BENIGN",
    "FAMILIES",
    "FAST_RULE_FAMILY",
    "LABEL_FAMILY",
    "family_of_label",
]

BENIGN = "benign"
FAMILIES = ("ddos", "scan", "bruteforce", "tunnel", "lateral")

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
    "http_bruteforce": "bruteforce",
    "dns_tunnel": "tunnel",
    "dns_exfil": "tunnel",
    "c2_beacon": "tunnel",
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
    "dns_tunnel": "tunnel",
    "brute_force": "bruteforce",
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
