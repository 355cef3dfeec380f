"""The source context and fast rules computed over whole batches in native windows (the
default) equal the per-record Python definition (``native=False``) on real captures: every
context column and every rule's score, with the default caps and with caps small enough
that keys and entries are evicted all the time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sniffer.config import ContextConfig, SnifferConfig
from sniffer.fast_rules import RULES, FastRules
from sniffer.records import flow_columns
from sniffer.source_context import SourceContextTracker
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA


@pytest.mark.parametrize(
    "context",
    [
        ContextConfig(),
        ContextConfig(window_s=5.0, max_keys=40, max_entries_per_key=6, max_entries=150),
    ],
    ids=["defaults", "tiny-caps"],
)
def test_batch_context_and_rules_equal_the_per_record_definition(context: ContextConfig) -> None:
    cfg = dataclasses.replace(SnifferConfig(), context=context)
    batch_ctx, ref_ctx = SourceContextTracker(context), SourceContextTracker(context, native=False)
    batch_rules = FastRules(cfg.rules, context)
    ref_rules = FastRules(cfg.rules, context, native=False)
    paths = [SHARED_DATA / "pcaps" / "attacks", SHARED_DATA / "pcaps" / "ndpi"]
    source = PcapSource(paths, cfg.capture)
    flows_seen = 0
    fired: set[str] = set()
    for events, obs in [*source.batches(), *source.flush()]:
        if len(events) == 0:
            continue
        flows = flow_columns(events, obs)
        got, want = batch_ctx.update(flows), ref_ctx.update(flows)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == want[name].dtype, name
            assert np.array_equal(got[name], want[name]), name
        scores, ref = batch_rules.score(flows, got), ref_rules.score(flows, want)
        for rule in RULES:
            assert np.array_equal(scores.per_rule[rule], ref.per_rule[rule]), rule
        assert scores.rule == ref.rule
        fired.update(r for r in ref.rule if r)
        flows_seen += len(flows)
    assert batch_rules.fired == ref_rules.fired and batch_rules.scored == ref_rules.scored
    assert len(batch_ctx.windows) == len(ref_ctx.windows)
    assert batch_ctx.windows.evicted_keys == ref_ctx.windows.evicted_keys
    assert batch_ctx.windows.evicted_entries == ref_ctx.windows.evicted_entries
    assert flows_seen > 5_000
    if context == ContextConfig():
        assert len(fired) >= 3, fired  # the rules had something to score
    if context.max_keys < 100:
        assert ref_ctx.windows.evicted_keys > 0 and ref_ctx.windows.evicted_entries > 0
