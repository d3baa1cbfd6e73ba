"""One job's way from claim to result on chain: claim, fetch, run, commit, submit.

``drive(job_id)`` picks up from whatever state the journal holds, so the same code runs a fresh job and
resumes one after a crash. Every on-chain step goes through the transaction manager under the job's
idempotency key (``claim:<id>``, ``submit:<id>``): asking again after a restart returns the transaction
already sent, never a second one. When a step does not land, the chain is read and its verdict recorded
(taken by another provider, expired, already submitted) before anything is called a failure.

A job whose deadline can no longer be met is not dropped: it is recorded *failed* with the numbers, shown
in status, and the settler sees the claim through to expiry on chain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from node.chain.contracts import calldata
from node.chain.rpc import RpcClient
from node.chain.txmanager import TxManager
from node.chain.txstore import TxState
from node.chain.verify import SignedOffer
from node.compute.commitment import commit_file
from node.compute.inputs import InputError, fetch_input, input_session, stored_path
from node.compute.pool import WorkerPool
from node.compute.workers import FailureReason, JobRequest
from node.compute.workloads import ParamsError, get
from node.config import Settings
from node.jobs.chainstate import apply_chain_state, read_job
from node.jobs.journal import JobRecord, JobSource, Journal
from node.jobs.scheduler import Slots
from node.jobs.state import JobState
from node.metrics import Metrics

log = logging.getLogger("gpunode.executor")

EXECUTE = "node.compute.workloads:execute"
SUBMIT_MARGIN_S = 30  # time kept back before the deadline for the submit transaction to be mined


@dataclass
class Paths:
    inputs: Path
    results: Path


class Executor:
    def __init__(self, journal: Journal, txm: TxManager, rpc: RpcClient, pool: WorkerPool, slots: Slots,
                 metrics: Metrics, settings: Settings, *, market: str, provider: str, paths: Paths,
                 chain_time: Callable[[], int], result_url: Callable[[str], str],
                 estimate_seconds: Callable[[JobRecord], float]) -> None:
        self.journal, self.txm, self.rpc, self.pool, self.slots = journal, txm, rpc, pool, slots
        self.metrics, self.settings, self.market, self.provider = metrics, settings, market, provider
        self.paths, self.chain_time, self.result_url = paths, chain_time, result_url
        self.estimate_seconds = estimate_seconds
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _move(self, job_id: str, to: JobState, reason: str, code: str | None = None, **fields) -> JobRecord:
        rec = await asyncio.to_thread(self.journal.transition, job_id, to, reason=reason, code=code, **fields)
        level = logging.WARNING if to in (JobState.FAILED, JobState.EXPIRED) else logging.INFO
        log.log(level, "job %s → %s: %s", job_id, to.value, reason, extra={"job_id": job_id, "code": code})
        return rec

    async def drive(self, job_id: str) -> None:
        """Runs the job from its current state until it is submitted or its work ends. The device slot (taken
        by the dispatcher, which also frees it when this returns) is released as soon as the device is no
        longer needed."""
        rec = await asyncio.to_thread(self.journal.get, job_id)
        while rec is not None and not rec.terminal:
            step = _STEPS.get(rec.state)
            if step is None:
                return  # submitted and later: the settler's business
            started = time.monotonic()
            nxt = await step(self, rec)
            self.metrics.stage_seconds.labels(rec.state.value).observe(time.monotonic() - started)
            if nxt is None or nxt.state is rec.state:
                return
            if nxt.state not in (JobState.CLAIMED, JobState.FETCHING, JobState.RUNNING):
                self.slots.release(job_id)  # the device is free while the submit is mined
            rec = nxt

    # ------------------------------------------------------------------------------------------ steps
    async def chain_verdict(self, rec: JobRecord, what: str) -> JobRecord | None:
        """Records what the chain says of a job whose step did not go as sent (chainstate's rules, every
        legal step, compare-and-set); the job as it now stands, or None when the chain implies nothing."""
        chain = await read_job(self.rpc, self.market, rec.job_id)
        moved = await asyncio.to_thread(apply_chain_state, self.journal, rec, chain, self.provider,
                                        self.chain_time())
        if moved is None:  # nothing implied, or another task (the event watcher) moved it first
            moved = await asyncio.to_thread(self.journal.get, rec.job_id)
            if moved is None or moved.state is rec.state:
                return None
        log.info("job %s: %s; the chain shows it %s → %s", rec.job_id, what, chain.state.name.lower(),
                 moved.state.value, extra={"job_id": rec.job_id})
        return moved

    async def _claim(self, rec: JobRecord) -> JobRecord | None:
        signed = SignedOffer.from_json(rec.offer_json)
        if rec.source is JobSource.DIRECT:
            data = calldata("JobMarket", "claimSigned", signed.offer.as_struct(), signed.params or b"",
                            signed.signature)
        else:
            data = calldata("JobMarket", "claim", bytes.fromhex(rec.job_id[2:]))
        intent = await self.txm.submit(f"claim:{rec.job_id}", self.market, data)  # send = submit + wait, split
        latency = self.metrics.claim_broadcast(rec.job_id, intent.state is not TxState.QUEUED and not intent.reason)
        if latency is not None:  # so event-to-claim is timed at the broadcast, not at the confirmation
            log.info("job %s: claim broadcast %.1f ms after the offer reached intake", rec.job_id, latency * 1000,
                     extra={"job_id": rec.job_id, "event_to_claim_ms": round(latency * 1000, 2)})
        outcome = await self.txm.wait(f"claim:{rec.job_id}")
        self.metrics.count_tx("claim", outcome)
        # Confirmed or not, the chain says where the job stands (the JobClaimed event may have said it first).
        found = await self.chain_verdict(rec, f"claim {outcome.state.value} {outcome.tx_hash or outcome.reason}")
        if found is not None:
            return found
        if outcome.state is TxState.CONFIRMED:
            raise RuntimeError(f"claim confirmed in {outcome.tx_hash} but the chain does not show it yet")
        return await self._move(rec.job_id, JobState.REJECTED, f"claim {outcome.state.value}: {outcome.reason}",
                                code="claim_failed")

    def _time_left(self, rec: JobRecord) -> float:
        return (rec.deadline or 0) - self.chain_time() - SUBMIT_MARGIN_S

    async def _start(self, rec: JobRecord) -> JobRecord:
        need = self.estimate_seconds(rec)
        left = self._time_left(rec)
        if left < need:
            return await self._move(rec.job_id, JobState.FAILED, f"deadline cannot be met: the job needs about "
                                    f"{need:.0f} s and {max(left, 0):.0f} s are left before the submit margin",
                                    code="deadline")
        return await self._move(rec.job_id, JobState.FETCHING, "device slot ready; fetching the inputs",
                                device=self.slots.device_of(rec.job_id) or rec.device)

    async def _fetch(self, rec: JobRecord) -> JobRecord:
        offer = SignedOffer.from_json(rec.offer_json).offer
        policy = self.settings.policy
        if self._session is None:
            self._session = input_session(allow_private=policy.allow_private_inputs)
        try:
            path = await fetch_input(offer.inputURI, offer.inputHash, self.paths.inputs,
                                     max_bytes=policy.max_input_bytes, allow_file=policy.allow_file_inputs,
                                     allow_private=policy.allow_private_inputs, timeout_s=policy.input_timeout_s,
                                     session=self._session)
        except InputError as exc:
            return await self._move(rec.job_id, JobState.FAILED, f"input: {exc}", code=f"input_{exc.reason.value}")
        note = f"input ready ({path.stat().st_size} bytes, hash checked)" if path else "job has no input"
        return await self._move(rec.job_id, JobState.RUNNING, note)

    async def _run(self, rec: JobRecord) -> JobRecord | None:
        signed = SignedOffer.from_json(rec.offer_json)
        offer = signed.offer
        try:
            workload = get(offer.workload)
            params = workload.validate_params(signed.params or b"")
        except (KeyError, ValueError, ParamsError) as exc:
            return await self._move(rec.job_id, JobState.FAILED, f"params: {exc}", code="params")
        input_path = None
        if offer.inputURI:
            input_path = stored_path(self.paths.inputs, offer.inputHash)
            if not input_path.is_file():  # removed since fetched: fetch again
                return await self._move(rec.job_id, JobState.FAILED, "input vanished from the store", code="input")
        self.paths.results.mkdir(parents=True, exist_ok=True)
        out = self.paths.results / f"{rec.job_id}.out"
        timeout = min(self.settings.hardware.job_timeout_s, self._time_left(rec))
        if timeout <= 0:
            return await self._move(rec.job_id, JobState.FAILED, "no time left before the deadline", code="deadline")
        device = self.slots.device_of(rec.job_id) or rec.device or self.slots.devices[0]
        request = JobRequest(rec.job_id, EXECUTE, {"workload": workload.name, "params": params,
                                                    "input_path": str(input_path) if input_path else None,
                                                    "output_path": str(out)})
        outcome = await self.pool.submit(device, request, timeout)
        if not outcome.ok:
            if outcome.reason is FailureReason.CANCELLED:
                log.info("job %s: run cancelled (shutting down); it resumes on the next start", rec.job_id,
                         extra={"job_id": rec.job_id})
                return None
            return await self._move(rec.job_id, JobState.FAILED, f"worker: {outcome.reason.value}: {outcome.detail}",
                                    code=f"worker_{outcome.reason.value}")
        commitment = await asyncio.to_thread(commit_file, out)
        return await self._move(rec.job_id, JobState.COMMITTED,
                                f"ran in {outcome.seconds:.2f} s on {device}; {commitment.size} bytes committed",
                                result_root="0x" + commitment.root.hex(), result_path=str(out))

    async def _submit(self, rec: JobRecord) -> JobRecord | None:
        size = os.stat(rec.result_path).st_size if rec.result_path and os.path.exists(rec.result_path) else 0
        if size == 0:
            return await self._move(rec.job_id, JobState.FAILED, "the committed result file is missing",
                                    code="result_missing")
        data = calldata("JobMarket", "submitResult", bytes.fromhex(rec.job_id[2:]), bytes.fromhex(rec.result_root[2:]),
                        size, self.result_url(rec.job_id))
        outcome = await self.txm.send(f"submit:{rec.job_id}", self.market, data)
        self.metrics.count_tx("submit", outcome)
        if outcome.state is TxState.CONFIRMED:
            history = await asyncio.to_thread(self.journal.history, rec.job_id)
            claimed = next((t.at for t in history if t.to_state is JobState.CLAIMED), None)
            if claimed is not None:
                self.metrics.job_seconds.observe(max(0.0, time.time() - claimed))
            return await self._move(rec.job_id, JobState.SUBMITTED, f"result root on chain in tx {outcome.tx_hash}")
        found = await self.chain_verdict(rec, f"submit {outcome.state.value}: {outcome.reason}")
        if found is not None:
            return found
        return await self._move(rec.job_id, JobState.FAILED, f"submit {outcome.state.value}: {outcome.reason}",
                                code="submit_failed")


_STEPS = {
    JobState.VALIDATED: Executor._claim,
    JobState.CLAIMED: Executor._start,
    JobState.FETCHING: Executor._fetch,
    JobState.RUNNING: Executor._run,
    JobState.COMMITTED: Executor._submit,
}
