"""The node's Prometheus series, in one place so every layer counts into the same names.

Each node has its own CollectorRegistry (not the process-global one), so tests can run several nodes in
one process and a scrape shows exactly one node. Gauges that mirror stored state (jobs by state, earnings)
are refreshed from the journal right before each scrape instead of being kept in step by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from node.jobs.state import JobState

# Event-to-claim is a hot-path figure (goal: p50 <= 100 ms), so its buckets are fine below a second.
_CLAIM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_ARRIVALS_KEPT = 10_000  # offers awaiting their claim whose arrival time is kept; the oldest go first
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, float("inf"))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.offers_seen = Counter("gpunode_offers_seen", "Offers heard of, by source (chain event or direct)",
                                   ["source"], registry=r)
        self.offers_rejected = Counter("gpunode_offers_rejected", "Offers refused before any claim, by reason",
                                       ["reason"], registry=r)
        self.jobs = Gauge("gpunode_jobs", "Jobs in the journal, by state", ["state"], registry=r)
        self.job_seconds = Histogram("gpunode_job_duration_seconds", "From claim to result on chain",
                                     buckets=_STAGE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("gpunode_stage_duration_seconds", "Time spent per job stage",
                                       ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.gas_spent = Counter("gpunode_gas_spent_wei", "Fees paid for confirmed transactions, by step",
                                 ["step"], registry=r)
        self.gas_used = Counter("gpunode_gas_used", "Gas used by confirmed transactions, by step", ["step"],
                                registry=r)
        self.tx_attempts = Counter("gpunode_tx_attempts", "Transactions sent or settled, by step and outcome",
                                   ["step", "outcome"], registry=r)
        self.earnings = Counter("gpunode_earnings_token_units",
                                "Payments credited to the payout address (token base units)", registry=r)
        self.withdrawn = Counter("gpunode_withdrawn_token_units",
                                 "Earnings moved to the payout address (token base units)", registry=r)
        self.device_utilization = Gauge("gpunode_device_utilization_pct", "Device utilization (NVML)",
                                        ["device"], registry=r)
        self.device_idle = Gauge("gpunode_device_idle", "1 if the node may claim new work on the device",
                                 ["device"], registry=r)
        self.device_busy = Gauge("gpunode_device_slots_busy", "Jobs holding the device's slot", ["device"],
                                 registry=r)
        self.task_restarts = Counter("gpunode_task_restarts", "Supervised tasks restarted after an error",
                                     ["task"], registry=r)
        self.reveals = Counter("gpunode_reveals", "Reveal demands against our results, by what the node did "
                               "(sent, rejected, no_result, too_late, unknown_job, reverted_before)", ["outcome"],
                               registry=r)
        self.head = Gauge("gpunode_chain_head", "Latest block number seen", registry=r)
        self.event_to_claim = Histogram(
            "gpunode_event_to_claim_seconds", "From an offer reaching intake (the OfferPosted event handed over "
            "by the follower, or POST /offers) to its claim transaction being broadcast", ["source"],
            buckets=_CLAIM_BUCKETS, registry=r)
        self._arrived: OrderedDict[str, tuple[float, str]] = OrderedDict()
        for state in JobState:
            self.jobs.labels(state.value)

    def offer_arrived(self, job_id: str, source: str, at: float) -> None:
        """Notes when (time.monotonic()) an accepted offer reached intake, so its claim can be timed.
        Bounded: accepted offers that lapse unclaimed must not grow it without end."""
        self._arrived[job_id] = (at, source)
        self._arrived.move_to_end(job_id)
        while len(self._arrived) > _ARRIVALS_KEPT:
            self._arrived.popitem(last=False)

    def claim_broadcast(self, job_id: str, sent: bool) -> float | None:
        """Observes event-to-claim for a claim just handed to the network (once per job and process; a claim
        resumed after a restart has no arrival time and is not timed). Returns the seconds, or None."""
        arrival = self._arrived.pop(job_id, None)
        if arrival is None or not sent:
            return None
        seconds = max(0.0, time.monotonic() - arrival[0])
        self.event_to_claim.labels(arrival[1]).observe(seconds)
        return seconds

    def refresh_jobs(self, by_state: dict[str, int]) -> None:
        for state in JobState:
            self.jobs.labels(state.value).set(by_state.get(state.value, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_tx(self, step: str, outcome: object) -> None:
        """Counts a settled transaction (a chain.txmanager TxOutcome) and, when it was mined, its gas."""
        state = getattr(getattr(outcome, "state", None), "value", str(getattr(outcome, "state", "unknown")))
        self.tx_attempts.labels(step, state).inc()
        receipt = getattr(outcome, "receipt", None) or {}
        used = int(receipt.get("gasUsed", 0) or 0)
        if used:
            self.gas_used.labels(step).inc(used)
            self.gas_spent.labels(step).inc(used * int(receipt.get("effectiveGasPrice", 0) or 0))
