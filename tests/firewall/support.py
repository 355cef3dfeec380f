"""Helpers of the firewall tests."""

from __future__ import annotations

from proto.events_pb2 import LABEL_MALICIOUS, FlowRef, Verdict


def malicious_verdict(
    src: str,
    score: float,
    *,
    n: int,
    family: str = "scan",
    protocol: int = 6,
    verified: bool = True,
) -> Verdict:
    """A LABEL_MALICIOUS verdict for a flow from IPv4 ``src`` to 192.0.2.2; ``verified``:
    its source completed a TCP handshake (Verdict.src_verified), which blocking needs by
    default."""
    return Verdict(
        verdict_id=f"det-{n}",
        flow=FlowRef(
            ip_version=4,
            src_addr=bytes(map(int, src.split("."))),
            dst_addr=bytes([192, 0, 2, 2]),
            protocol=protocol,
        ),
        final_score=score,
        ml_score=score,
        family=family,
        ml_family=family,
        label=LABEL_MALICIOUS,
        src_verified=verified,
    )
