"""The node's Prometheus series, in one place so every layer counts into the same names.

Each node has its own CollectorRegistry (not the process-global one), so tests can run several nodes in
one process and a scrape shows exactly one node. Gauges that mirror stored state (jobs by state, earnings)
are refreshed from the journal right before each scrape instead of being kept in step by hand.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from node.jobs.state import JobState

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
        for state in JobState:
            self.jobs.labels(state.value)

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
