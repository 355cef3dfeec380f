"""The families come from the schema's Family enum, and everything that names one agrees."""

from __future__ import annotations

from detector.families import (
    ANOMALY,
    BENIGN,
    FAMILIES,
    FAST_RULE_FAMILY,
    LABEL_FAMILY,
    VERDICT_FAMILIES,
    family_name,
)
from firewall.config import FirewallConfig
from proto.events_pb2 import FAMILY_C2, FAMILY_DDOS, FAMILY_LATERAL, FAMILY_UNSPECIFIED, Family


def test_the_python_names_are_the_enum_names() -> None:
    # The forests' order is the bundle's and the training's column order: it must not move.
    # c2 came after anomaly in the enum (values never change meaning): it is the sixth forest.
    assert FAMILIES == ("ddos", "scan", "bruteforce", "tunnel", "lateral", "c2")
    assert [BENIGN, ANOMALY] == ["benign", "anomaly"]
    assert (*FAMILIES, ANOMALY) == VERDICT_FAMILIES
    named = {family_name(v) for v in Family.values() if v != FAMILY_UNSPECIFIED}
    assert named == {BENIGN, *VERDICT_FAMILIES}
    assert [Family.Value("FAMILY_" + f.upper()) for f in FAMILIES] == [
        *range(FAMILY_DDOS, FAMILY_LATERAL + 1),
        FAMILY_C2,
    ]


def test_every_mapping_lands_on_a_family() -> None:
    assert set(LABEL_FAMILY.values()) <= set(FAMILIES)
    assert set(FAST_RULE_FAMILY.values()) <= set(FAMILIES)


def test_the_firewall_accepts_every_verdict_family_and_no_other() -> None:
    assert FirewallConfig().families == VERDICT_FAMILIES
    assert BENIGN not in FirewallConfig().families
