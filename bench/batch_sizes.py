"""The largest batch each channel carries with real traffic, to size the transport limits.

Runs the shared captures through the sniffer's pipeline, batches the flow records as the
sniffer does (``--records`` per batch, default transport.batch_records), scores each
batch with the shipped model bundle and builds its verdicts and events as the detector
does; prints the largest serialized payload and sealed frame of each channel:

    PYTHONPATH=. .venv/bin/python bench/batch_sizes.py [--records 100] [PCAP ...]

Last line: ``flows_frame=B verdicts_frame=B events_frame=B events_payload=B``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import shared_data
from config import load_config
from crypto_transport import frame
from crypto_transport.keys import KEY_ID_BYTES
from detector.features import scorer_inputs
from detector.scoring import default_scorer
from detector.verdicts import add_scored_events, build_verdicts
from proto.events_pb2 import (
    LABEL_MALICIOUS,
    EventBatch,
    FlowBatch,
    FlowRecord,
    VerdictBatch,
)
from sniffer.pipeline import FlowPipeline
from sniffer.sources import PcapSource

DEFAULT_PCAPS = (
    "pcaps/attacks/scan/masscan_tcp_0_1000.pcap",
    "pcaps/ndpi/reddit.pcap",
)
SENSOR = "sensor-with-a-long-name-01"


def _records(paths: Sequence[Path]) -> Iterator[FlowRecord]:
    scfg = load_config().sniffer
    for path in paths:
        pipeline = FlowPipeline(scfg)
        source = PcapSource([path], scfg.capture)
        for events, obs in source.batches():
            if len(events):
                for raw in pipeline.process(events, obs).records:
                    yield FlowRecord.FromString(raw)
        for events, obs in source.flush():
            for raw in pipeline.process(events, obs).records:
                yield FlowRecord.FromString(raw)


def _frame_size(payload: bytes) -> int:
    sealed = frame.seal(
        payload,
        key=bytes(32),
        key_id=bytes(KEY_ID_BYTES),
        seq=1,
        channel=b"events",
        sender_id=SENSOR.encode(),
    )
    return len(sealed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=load_config().transport.batch_records)
    parser.add_argument("pcaps", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.pcaps or [shared_data() / p for p in DEFAULT_PCAPS]
    cfg = load_config().detector
    scorer = default_scorer(cfg)
    records = list(_records(paths))
    largest = {"flows": (0, 0), "verdicts": (0, 0), "events": (0, 0)}
    for start in range(0, len(records), args.records):
        batch = records[start : start + args.records]
        x, fast, rules = scorer_inputs(batch)
        scores = scorer.score(x, fast, rules)
        ids = [f"{SENSOR}-{start + i}" for i in range(len(batch))]
        verdicts = build_verdicts(scores, batch, SENSOR, ids, 1_800_000_000_000_000_000)
        # As if every verdict were malicious: the largest verdict batch this can make.
        payloads = {
            "flows": FlowBatch(sensor_id=SENSOR, batch_seq=start, records=batch),
            "verdicts": VerdictBatch(detector_id=SENSOR, batch_seq=start, verdicts=verdicts),
        }
        events = EventBatch(detector_id=SENSOR, batch_seq=start)
        add_scored_events(events, batch, verdicts, SENSOR)
        payloads["events"] = events
        for name, message in payloads.items():
            data = message.SerializeToString()
            size = (len(data), _frame_size(data))
            largest[name] = max(largest[name], size, key=lambda s: s[1])
    malicious = sum(
        1 for lab in scorer.score(*scorer_inputs(records)).label if lab == LABEL_MALICIOUS
    )
    print(f"records={len(records)} malicious={malicious} per_batch={args.records}")
    for name, (payload, sealed) in largest.items():
        print(f"{name}: largest payload {payload} B, sealed frame {sealed} B")
    print(
        f"flows_frame={largest['flows'][1]} verdicts_frame={largest['verdicts'][1]} "
        f"events_frame={largest['events'][1]} events_payload={largest['events'][0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
