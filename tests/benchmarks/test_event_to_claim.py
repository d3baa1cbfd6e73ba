"""The event-to-claim histogram's bookkeeping (node/metrics.py): one observation per claim that was broadcast
for an offer this process saw arrive, labelled by where the offer came from; none for a claim resumed after
a restart (no arrival time) or one that never went out; and the arrival table stays bounded."""

from __future__ import annotations

import time

from node import metrics as metrics_module
from node.metrics import Metrics


def _count(m: Metrics, source: str) -> float:
    return m.registry.get_sample_value("gpunode_event_to_claim_seconds_count", {"source": source}) or 0.0


def test_one_observation_per_broadcast_claim():
    m = Metrics()
    m.offer_arrived("0xa", "chain", time.monotonic() - 0.05)
    m.offer_arrived("0xb", "direct", time.monotonic())
    seconds = m.claim_broadcast("0xa", sent=True)
    assert seconds is not None and seconds >= 0.05
    assert m.claim_broadcast("0xa", sent=True) is None  # asked again (a retried step): not observed twice
    assert m.claim_broadcast("0xb", sent=False) is None  # simulation refused it: nothing was broadcast
    assert m.claim_broadcast("0xc", sent=True) is None  # resumed after a restart: no arrival time
    assert (_count(m, "chain"), _count(m, "direct")) == (1, 0)
    assert b'gpunode_event_to_claim_seconds_bucket{le="0.1",source="chain"}' in m.render()


def test_arrivals_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics_module, "_ARRIVALS_KEPT", 3)
    m = Metrics()
    for i in range(5):
        m.offer_arrived(f"0x{i}", "chain", time.monotonic())
    assert m.claim_broadcast("0x0", sent=True) is None and m.claim_broadcast("0x1", sent=True) is None
    assert all(m.claim_broadcast(f"0x{i}", sent=True) is not None for i in (2, 3, 4))
