"""The loop that turns claim candidates and free device slots into running jobs, and keeps them running.

Each pass, in order of who is owed a device first:
1. Jobs the node already holds a claim for (claimed, fetching, running) and that no task is driving, after
   a restart or a failed step: they take their device's slot again and are driven on. A claim in flight
   (a claim:<id> intent) counts as held. Committed jobs need no slot and are driven to their submit.
2. New candidates (validated): best pay per GPU-second first, into a free slot on an idle device, while
   the free stake on chain (less the bonds of claims in flight) covers the bond. A candidate whose offer
   lapsed is looked up on chain before it is written off, in case our claim landed after all.

While draining (shutdown) nothing new is started; what runs is left to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from node.jobs.executor import Executor
from node.jobs.intake import Intake
from node.jobs.journal import JobRecord, Journal
from node.jobs.policy import Policy
from node.jobs.scheduler import Candidate, Slots, assign
from node.jobs.state import JobState
from node.metrics import Metrics
from node.supervisor import cancel_and_wait

log = logging.getLogger("gpunode.dispatcher")

HELD = (JobState.CLAIMED, JobState.FETCHING, JobState.RUNNING)
RETRY_AFTER_S = 5.0
CLAIM_MARGIN_S = 15  # an offer this close to its expiry is not worth a claim: it would land too late


class Dispatcher:
    def __init__(self, journal: Journal, executor: Executor, intake: Intake, policy: Policy, slots: Slots,
                 metrics: Metrics, *, chain_time: Callable[[], int], fee_bps: Callable[[], int],
                 free_stake: Callable[[], Awaitable[int | None]], usable: Callable[[str], bool],
                 has_claim_intent: Callable[[str], Awaitable[bool]]) -> None:
        self.journal, self.executor, self.intake, self.policy, self.slots = journal, executor, intake, policy, slots
        self.metrics, self.chain_time, self.fee_bps = metrics, chain_time, fee_bps
        self.free_stake, self.usable, self.has_claim_intent = free_stake, usable, has_claim_intent
        self.driving: dict[str, asyncio.Task] = {}
        self._failed_at: dict[str, float] = {}
        self.accepting = True
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, poll_s: float = 2.0) -> None:
        while True:
            await self.pass_once()
            try:
                async with asyncio.timeout(poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def pass_once(self) -> None:
        if not self.accepting:
            return
        open_jobs = await asyncio.to_thread(self.journal.open_jobs)
        candidates: list[JobRecord] = []
        for rec in open_jobs:
            held = rec.state in HELD or (rec.state is JobState.VALIDATED and (
                rec.job_id in self.driving or await self.has_claim_intent(rec.job_id)))
            if held:
                # A job we hold a claim for keeps a slot even while a failed step waits for its retry, so
                # the slot is never handed to a new claim meanwhile.
                if self.slots.device_of(rec.job_id) is None:
                    device = rec.device if rec.device in self.slots.free() else None
                    device = device or next(iter(self.slots.free()), None)
                    if device is None or not self.slots.reserve(device, rec.job_id):
                        continue
                if rec.job_id not in self.driving and self._may_retry(rec.job_id):
                    self._drive(rec.job_id)
            elif rec.state is JobState.COMMITTED:
                if rec.job_id not in self.driving and self._may_retry(rec.job_id):
                    self._drive(rec.job_id)
            elif rec.state is JobState.VALIDATED:
                candidates.append(rec)
        await self._claim_new(candidates, open_jobs)
        busy = self.slots.busy()
        for device, job in busy.items():
            self.metrics.device_busy.labels(device).set(1 if job else 0)

    async def _claim_new(self, records: list[JobRecord], open_jobs: list[JobRecord]) -> None:
        now = self.chain_time()
        live: list[Candidate] = []
        for rec in records:
            if rec.expiry <= now + CLAIM_MARGIN_S:
                await self._lapse(rec)
                continue
            decision = self.intake.decision(rec)
            if not decision.ok:  # only after a restart: an accepted decision is cached by intake
                await asyncio.to_thread(self.journal.transition, rec.job_id, JobState.REJECTED,
                                        reason=f"re-checked after a restart: {decision.reason}",
                                        code=decision.code.value)
                self.metrics.offers_rejected.labels(decision.code.value).inc()
                continue
            live.append(Candidate(rec.job_id, decision.quote, rec.bond, rec.expiry))
        if not live:
            return
        free = self.slots.free(self.usable)
        if not free:
            return
        stake = await self.free_stake()
        if stake is not None:  # bonds of claims sent but not yet mined are not locked on chain yet
            stake -= sum(r.bond for r in open_jobs if r.state is JobState.VALIDATED and r.job_id in self.driving)
        for cand, device in assign(live, free, stake):
            if self.slots.reserve(device, cand.job_id):
                self._drive(cand.job_id)

    async def _lapse(self, rec: JobRecord) -> None:
        try:
            found = await self.executor.chain_verdict(rec, "offer lapsed before we claimed it")
        except Exception as exc:  # noqa: BLE001 - an RPC hiccup: try again next pass
            log.warning("job %s: cannot read the chain (%s); will retry", rec.job_id, exc)
            return
        if found is None:
            await asyncio.to_thread(self.journal.transition, rec.job_id, JobState.EXPIRED,
                                    reason="the offer expired before a device was free for it", code="not_scheduled")
        self.intake.decisions.pop(rec.job_id, None)

    def _may_retry(self, job_id: str) -> bool:
        failed = self._failed_at.get(job_id)
        return failed is None or time.monotonic() - failed >= RETRY_AFTER_S

    def _drive(self, job_id: str) -> None:
        task = asyncio.create_task(self._guarded(job_id), name=f"job:{job_id[:10]}")
        self.driving[job_id] = task

    async def _guarded(self, job_id: str) -> None:
        try:
            await self.executor.drive(job_id)
            self._failed_at.pop(job_id, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one job's error must not stop the others; it is retried
            self._failed_at[job_id] = time.monotonic()
            log.error("job %s: step failed (%s: %s); retrying in %.0f s", job_id, type(exc).__name__, exc,
                      RETRY_AFTER_S, exc_info=exc, extra={"job_id": job_id})
        finally:
            self.driving.pop(job_id, None)
            self.slots.release(job_id)  # a job still held gets its slot back first thing next pass
            self.intake.decisions.pop(job_id, None)
            self.wake()

    async def drain(self, grace_s: float) -> int:
        """Stops new work and waits up to grace_s for running jobs; returns how many were still running."""
        self.accepting = False
        tasks = list(self.driving.values())
        if tasks:
            log.info("waiting up to %.0f s for %d running job(s)", grace_s, len(tasks))
            done, pending = await asyncio.wait(tasks, timeout=grace_s)
            await cancel_and_wait(pending)
            return len(pending)
        return 0
