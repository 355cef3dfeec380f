"""The detector's /metrics: its counters and inference-time histograms over real HTTP."""

from __future__ import annotations

from pathlib import Path

from base.metrics import MetricsConfig, serve_metrics
from crypto_transport import TransportConfig
from detector.config import DetectorConfig, EventsOutput, ListenConfig, VerdictsOutput
from detector.service import DetectorService
from proto.events_pb2 import FlowBatch
from tests.base.test_metrics import scrape
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    ANY_PORT,
    DETECTOR,
    SCAN_PCAP,
    SENSOR,
    Keys,
    capture_records,
    parse,
)


def test_the_detector_serves_its_counters_and_inference_histograms(
    tiny_bundle: TinyBundle, tmp_path: Path
) -> None:
    cfg = DetectorConfig(
        bundle_dir=str(tiny_bundle.path),
        model_cache_dir=str(tmp_path / "cache"),
        reload_interval_s=0,
        listen=ListenConfig(endpoint=ANY_PORT),
        verdicts=VerdictsOutput(enabled=False),
        events=EventsOutput(enabled=False),
    )
    service = DetectorService.from_config(
        cfg, TransportConfig(), Keys().ring(DETECTOR, SENSOR), DETECTOR, state_dir=str(tmp_path)
    )
    server = serve_metrics(
        "detector", MetricsConfig(detector_port=0), service.health, service.registry
    )
    assert server is not None
    try:
        records = parse(capture_records(SCAN_PCAP))[:150]
        service.handle(FlowBatch(sensor_id=SENSOR, records=records[:100]), SENSOR)
        service.handle(FlowBatch(sensor_id=SENSOR, records=records[100:]), SENSOR)
        got = scrape(server.port)
        assert got["mld_detector_batches_in"] == 2 and got["mld_detector_records_in"] == 150
        assert got["mld_detector_batch_seconds_count"] == 2
        assert got["mld_detector_inference_seconds_per_flow_count"] == 2
        assert got["mld_detector_batch_seconds_sum"] > 0
        labels = sum(v for k, v in got.items() if k.startswith("mld_detector_labels_"))
        assert labels == 150
    finally:
        server.close()
        service.close()
