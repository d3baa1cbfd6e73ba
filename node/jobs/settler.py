"""Collects the money: finalizes our submitted jobs once their window has passed, expires our failed claims
to close them out, and withdraws the credited payments to the payout address.

Why it is shaped this way:
- One ``finalizeMany`` per batch instead of a ``finalize`` per job: settlement gas is the provider's cost
  on every job, and the contract skips jobs that are not due (or were finalized by someone else), so a
  batch never fails as a whole.
- Every transaction has an idempotency key derived from what it settles (``finalize:<hash of the ids>``,
  ``expire:<id>``, ``withdraw:<hash of the finalized ids>``): a pass repeated after a crash asks the
  transaction manager for the same effect and gets the same transaction, never a second one.
- The chain decides. Before and after each transaction the jobs are read back (``getJob``) and the journal
  moves only as ``chainstate.implied_state`` says, compare-and-set, so the event watcher recording the same
  fact first simply wins and the payment is counted once.
- ``withdrawFor(payout)`` is open to anyone and pays only to the payout address itself, so the node's hot
  operator key moves the earnings to a cold payout wallet that never signs anything. A withdraw only goes
  out with at least one finalized job to mark paid; other credits (a won dispute's bond) leave with it.
- A job is marked paid only after the chain shows it Finalized just before: a reorg can remove a
  finalizeMany the journal already recorded (and the re-mined blocks may come before the window ends),
  and an empty market balance then means "never credited", not "already withdrawn". Such a job goes back
  to submitted and is finalized again under a fresh key (``finalize:<hash>#2``): the settled transaction
  under the first key did nothing for it, and asking that key again would only return the old outcome.
- Reads are paced: a job in its challenge window is read again when it falls due, a disputed one every
  ``recheck_s`` chain seconds. Disputes and rulings reach the journal at once through the event watcher;
  these reads are the backstop for events the node missed, and cost one RPC call per job each.

``settle_once`` is meant to be called from one task, once per new head or timer tick; it is not safe to run
concurrently with itself (two passes could ask for overlapping batches). It never raises for one bad job or
one failed step: errors are logged, counted in ``errors`` / ``last_error`` and the pass goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from eth_utils import keccak, to_checksum_address
from web3.exceptions import Web3RPCError

from node.chain.contracts import calldata, load_abi
from node.chain.follower import EventDecoder
from node.chain.follower_store import RawLog
from node.chain.rpc import RpcClient, RpcError
from node.chain.txmanager import TxManager, TxOutcome
from node.chain.txstore import TxState
from node.jobs.chainstate import ChainJobState, OnChainJob, apply_chain_state, read_job
from node.jobs.journal import JobRecord, Journal, StaleState
from node.jobs.state import JobState
from node.metrics import Metrics

log = logging.getLogger(__name__)


def batch_key(prefix: str, job_ids: Iterable[str]) -> str:
    """``prefix:`` + the first 8 bytes (hex) of keccak over the sorted 32-byte ids: the same set of jobs
    always names the same transaction."""
    joined = b"".join(bytes.fromhex(j[2:]) for j in sorted(job_ids))
    return f"{prefix}:{keccak(joined)[:8].hex()}"


def _calldata(fn: str, args: list[Any]) -> bytes:
    return calldata("JobMarket", fn, *args)


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


class Settler:
    def __init__(self, journal: Journal, txm: TxManager, rpc: RpcClient, market: str, payout: str, *,
                 withdraw_threshold: int, metrics: Metrics, batch: int = 50, tx_timeout: float = 600.0,
                 recheck_s: int = 300) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if withdraw_threshold < 0:
            raise ValueError("withdraw_threshold must not be negative")
        self.journal, self.txm, self.rpc, self.metrics = journal, txm, rpc, metrics
        self.market = to_checksum_address(market)
        self.payout = to_checksum_address(payout)
        self.me = txm.sender  # the operator: the address that claims, submits and sends these transactions
        self.withdraw_threshold, self.batch, self.tx_timeout = withdraw_threshold, batch, tx_timeout
        self.recheck_s = recheck_s
        self.errors = 0
        self.last_error: str | None = None
        self._decoder = EventDecoder({"market": self.market})
        self._counted: set[str] = set()  # tx hashes whose gas is already in the metrics
        self._counted_withdrawals: set[str] = set()  # withdraw tx hashes already in the withdrawn counter
        self._earned: set[str] = set()  # jobs already in the earnings counter (a reorg can finalize one twice)
        # key -> (step, job ids) of a transaction a pass stopped waiting for; later passes collect it
        self._inflight: dict[str, tuple[str, list[str]]] = {}
        # job id -> chain time of its next getJob: a job in its window is read again when it falls due, or
        # every recheck_s as a backstop for missed events, not on every pass (one RPC call per job per pass)
        self._next_read: dict[str, int] = {}

    # -- the pass --------------------------------------------------------------------------------------

    async def settle_once(self, chain_time: int) -> None:
        """One settlement pass at ``chain_time`` (the latest block's timestamp, not the wall clock)."""
        for step in (self._collect_inflight, self._finalize_due, self._expire_failed, self._withdraw):
            try:
                await step(chain_time)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed step must not stop the others or the node
                self._error(f"{step.__name__.strip('_')}: {exc}", exc)

    def _error(self, what: str, exc: BaseException | None = None, job_id: str | None = None) -> None:
        self.errors += 1
        self.last_error = what[:500]
        log.warning("settlement: %s", what, exc_info=exc if exc and not _expected(exc) else None,
                    extra={"job_id": job_id} if job_id else None)

    async def _collect_inflight(self, chain_time: int) -> None:
        """Settles what earlier passes stopped waiting for, so a slow transaction blocks no pass and is never
        asked for a second time under another key while it may still be mined."""
        for key, (step, ids) in list(self._inflight.items()):
            outcome = await self.txm.outcome(key)
            if outcome is None:
                if await asyncio.to_thread(self.txm.store.get, key) is None:
                    del self._inflight[key]  # never stored: nothing can land under this key
                continue
            del self._inflight[key]
            self._count(step, outcome)
            if step == "finalize":
                await self._after_finalize(outcome, ids, chain_time)
            elif step == "withdraw":
                await self._after_withdraw(outcome, ids, chain_time)
            # an expire is read back from the chain by the next pass

    # -- (1) finalize ----------------------------------------------------------------------------------

    async def _finalize_due(self, chain_time: int) -> None:
        waiting = {j for step, ids in self._inflight.values() if step == "finalize" for j in ids}
        due: list[str] = []
        jobs = await self._open(JobState.SUBMITTED, JobState.DISPUTED)
        self._next_read = {r.job_id: t for r in jobs if (t := self._next_read.get(r.job_id)) is not None}
        for rec in jobs:
            if self._next_read.get(rec.job_id, 0) > chain_time:
                continue
            try:
                chain = await read_job(self.rpc, self.market, rec.job_id)
                rec = await self._record(rec, chain, chain_time) or rec
                self._next_read.pop(rec.job_id, None)
                if chain.state is ChainJobState.SUBMITTED and chain.due > chain_time:
                    self._next_read[rec.job_id] = min(chain.due, chain_time + self.recheck_s)
                elif chain.state in (ChainJobState.DISPUTED, ChainJobState.CHALLENGED):
                    self._next_read[rec.job_id] = chain_time + self.recheck_s
                elif (rec.state is JobState.SUBMITTED and chain.state is ChainJobState.SUBMITTED
                        and rec.job_id not in waiting):
                    due.append(rec.job_id)
            except Exception as exc:  # noqa: BLE001 - one job's trouble must not hold up the others
                self._error(f"job {rec.job_id}: reading its chain state failed: {exc}", exc, rec.job_id)
        due.sort()
        for i in range(0, len(due), self.batch):
            ids = due[i:i + self.batch]
            key = await self._fresh_key(batch_key("finalize", ids))
            data = _calldata("finalizeMany", [[bytes.fromhex(j[2:]) for j in ids]])
            outcome = await self._send("finalize", key, data, ids)
            if outcome is not None:
                await self._after_finalize(outcome, ids, chain_time)

    async def _after_finalize(self, outcome: TxOutcome, ids: Sequence[str], chain_time: int) -> None:
        if not outcome.ok:
            self._error(f"finalizeMany of {len(ids)} jobs ({outcome.key}) {outcome.state}: {outcome.reason}")
        paid = {e.args["jobId"].hex(): int(e.args["amount"]) for e in self._events(outcome, "JobFinalized")}
        for job_id in ids:  # read back even after a failure: someone else may have finalized them
            rec = await asyncio.to_thread(self.journal.get, job_id)
            if rec is None:
                continue
            try:
                chain = await read_job(self.rpc, self.market, job_id)
                await self._record(rec, chain, chain_time, paid.get(job_id[2:]))
            except Exception as exc:  # noqa: BLE001
                self._error(f"job {job_id}: recording the finalization failed: {exc}", exc, job_id)

    # -- (2) expire our failed claims ------------------------------------------------------------------

    async def _expire_failed(self, chain_time: int) -> None:
        for rec in await self._open(JobState.FAILED):
            if rec.deadline is None or rec.deadline >= chain_time or f"expire:{rec.job_id}" in self._inflight:
                continue  # the contract expires a claim only once its deadline is strictly past
            try:
                await self._expire_one(rec, chain_time)
            except Exception as exc:  # noqa: BLE001
                self._error(f"job {rec.job_id}: expiring it failed: {exc}", exc, rec.job_id)

    async def _expire_one(self, rec: JobRecord, chain_time: int) -> None:
        chain = await read_job(self.rpc, self.market, rec.job_id)
        if await self._record(rec, chain, chain_time):
            return  # already expired (by the requester or anyone), or our claim is gone
        mine = chain.provider.lower() == self.me.lower()
        if not (chain.state is ChainJobState.CLAIMED and mine and chain.due < chain_time):
            if chain.state is not ChainJobState.CLAIMED:
                log.warning("job %s failed here but the chain shows it %s; leaving it for a human", rec.job_id,
                            chain.state.name.lower(), extra={"job_id": rec.job_id})
            return
        data = _calldata("expire", [bytes.fromhex(rec.job_id[2:])])
        outcome = await self._send("expire", f"expire:{rec.job_id}", data, [rec.job_id])
        if outcome is None:
            return  # in flight (a later pass reads the chain again) or not sent (the next pass retries)
        if not outcome.ok:  # e.g. rejected because someone else expired it first: the chain says what happened
            log.info("job %s: expire %s: %s", rec.job_id, outcome.state, outcome.reason, extra={"job_id": rec.job_id})
        chain = await read_job(self.rpc, self.market, rec.job_id)
        fresh = await asyncio.to_thread(self.journal.get, rec.job_id)
        if fresh is not None and not await self._record(fresh, chain, chain_time) and fresh.state is JobState.FAILED:
            self._error(f"job {rec.job_id}: expire {outcome.state} ({outcome.reason or 'ok'}) but the chain shows "
                        f"it {chain.state.name.lower()}", job_id=rec.job_id)

    # -- (3) withdraw to the payout address ------------------------------------------------------------

    async def _withdraw(self, chain_time: int) -> None:
        if any(step == "withdraw" for step, _ in self._inflight.values()):
            return  # one withdraw at a time: a second could only revert with NothingToWithdraw
        finalized = sorted(r.job_id for r in await self._open(JobState.FINALIZED))
        if not finalized:
            return  # credits not tied to a journal job (a dispute bond) go out with the next payment
        balance = await self._balance()
        if 0 < balance < self.withdraw_threshold:
            return
        finalized = await self._still_finalized(finalized, chain_time)
        if not finalized:
            return  # a reorg took the finalizations back: they are submitted again and finalize anew
        if balance == 0:
            # Every finalized job's credit reached the market before it was recorded, and the chain still
            # shows them finalized: an empty balance means it was withdrawn already (e.g. `gpunode withdraw`,
            # or anyone calling withdrawFor).
            await self._mark_paid(finalized, "the payout balance was already withdrawn from the market")
            return
        # a settled withdraw under this set's key that left a balance behind did not take this one
        key = await self._fresh_key(batch_key("withdraw", finalized))
        outcome = await self._send("withdraw", key, _calldata("withdrawFor", [self.payout]), finalized)
        if outcome is not None:
            await self._after_withdraw(outcome, finalized, chain_time)

    async def _balance(self) -> int:
        """What the market holds for the payout address (credited, not yet withdrawn)."""
        return await self.rpc.call(
            lambda w3: w3.eth.contract(address=self.market, abi=load_abi("JobMarket")).functions
            .balanceOf(self.payout).call(), "market balanceOf")

    async def _still_finalized(self, job_ids: Sequence[str], chain_time: int) -> list[str]:
        """The jobs the chain still shows finalized (one getJob each); the others are recorded as the chain
        says (a reorg that removed a finalizeMany moves its jobs back to submitted)."""
        confirmed = []
        for job_id in job_ids:
            try:
                rec = await asyncio.to_thread(self.journal.get, job_id)
                if rec is None or rec.state is not JobState.FINALIZED:
                    continue
                chain = await read_job(self.rpc, self.market, job_id)
                if chain.state is ChainJobState.FINALIZED:
                    confirmed.append(job_id)
                elif await self._record(rec, chain, chain_time) is not None:
                    self._next_read.pop(job_id, None)
                    log.warning("job %s: a reorg undid its finalization; it is %s on chain again", job_id,
                                chain.state.name.lower(), extra={"job_id": job_id})
                else:
                    self._error(f"job {job_id}: finalized here but {chain.state.name.lower()} on chain", job_id=job_id)
            except Exception as exc:  # noqa: BLE001 - one job's trouble must not hold up the others
                self._error(f"job {job_id}: reading its chain state failed: {exc}", exc, job_id)
        return confirmed

    async def _fresh_key(self, base: str) -> str:
        """``base``, or ``base#2``, ``#3``... past every key whose transaction was mined and settled. Only
        asked when the chain shows that effect still to do (jobs due, a balance left), so a settled
        transaction under the key did nothing for it; one still in flight is waited for, never doubled.
        The same walk after a restart finds the same key."""
        key, n = base, 1
        while (intent := await asyncio.to_thread(self.txm.store.get, key)) is not None \
                and intent.state in (TxState.CONFIRMED, TxState.REVERTED):
            n += 1
            key = f"{base}#{n}"
        return key

    async def _after_withdraw(self, outcome: TxOutcome, finalized: list[str], chain_time: int) -> None:
        if outcome.ok:
            amount = sum(int(e.args["amount"]) for e in self._events(outcome, "Withdrawn")
                         if str(e.args["account"]).lower() == self.payout.lower())
            if outcome.tx_hash not in self._counted_withdrawals:
                self._counted_withdrawals.add(outcome.tx_hash)
                self.metrics.withdrawn.inc(amount)
            log.info("withdrew %d to the payout address %s (%s)", amount, self.payout, outcome.tx_hash)
            await self._mark_paid(finalized, f"withdrawn to the payout address in {outcome.tx_hash}")
        elif outcome.state is TxState.REJECTED and "NothingToWithdraw" in outcome.reason:
            # withdrawn by someone else, or never credited because a reorg took the finalization back
            await self._mark_paid(await self._still_finalized(finalized, chain_time),
                                  "the payout balance was already withdrawn from the market")
        else:
            self._error(f"withdrawFor({self.payout}) {outcome.state}: {outcome.reason}")

    async def _mark_paid(self, job_ids: Iterable[str], reason: str) -> None:
        for job_id in job_ids:
            try:
                await asyncio.to_thread(self.journal.transition, job_id, JobState.PAID, reason=reason,
                                        code="withdrawn", expect=JobState.FINALIZED)
            except StaleState:
                pass  # moved meanwhile: paid by another pass, or back to submitted by a chain read after a reorg
            except Exception as exc:  # noqa: BLE001
                self._error(f"job {job_id}: recording it paid failed: {exc}", exc, job_id)

    # -- plumbing --------------------------------------------------------------------------------------

    async def _open(self, *states: JobState) -> list[JobRecord]:
        return [r for r in await asyncio.to_thread(self.journal.open_jobs) if r.state in states]

    async def _record(self, rec: JobRecord, chain: OnChainJob, chain_time: int,
                      amount: int | None = None) -> JobRecord | None:
        """Records what the chain implies; counts the earnings when this call is the one that finalized."""
        moved = await asyncio.to_thread(apply_chain_state, self.journal, rec, chain, self.me, chain_time)
        if moved is not None and moved.state is JobState.FINALIZED and rec.job_id not in self._earned:
            self._earned.add(rec.job_id)
            self.metrics.earnings.inc(chain.net_payment if amount is None else amount)
        return moved

    async def _send(self, step: str, key: str, data: bytes, ids: Sequence[str]) -> TxOutcome | None:
        """Sends through the transaction manager and counts it. None when it is not settled within
        ``tx_timeout`` (remembered as in flight for later passes) or could not be sent (logged)."""
        try:
            outcome = await self.txm.send(key, self.market, data, timeout=self.tx_timeout)
        except TimeoutError:
            self.metrics.tx_attempts.labels(step, "timeout").inc()
            self._inflight[key] = (step, list(ids))
            log.warning("%s: not settled after %.0f s; a later pass collects it", key, self.tx_timeout)
            return None
        except Exception as exc:  # noqa: BLE001 - RPC outage, key conflict: the next pass tries again
            self.metrics.tx_attempts.labels(step, "error").inc()
            self._error(f"{key}: could not send: {exc}", exc)
            return None
        self._count(step, outcome)
        return outcome

    def _count(self, step: str, outcome: TxOutcome) -> None:
        """tx_attempts{step,outcome} per settled ask; gas once per mined transaction."""
        self.metrics.tx_attempts.labels(step, outcome.state.value).inc()
        receipt = outcome.receipt
        if receipt is not None and outcome.tx_hash not in self._counted:
            self._counted.add(outcome.tx_hash)
            used = _int(receipt.get("gasUsed", 0))
            self.metrics.gas_used.labels(step).inc(used)
            self.metrics.gas_spent.labels(step).inc(used * _int(receipt.get("effectiveGasPrice", 0)))

    def _events(self, outcome: TxOutcome, name: str) -> list[Any]:
        """The market's events of one name in a transaction's receipt, decoded with the exported ABI."""
        if outcome.receipt is None or not outcome.ok:
            return []
        events = []
        for lg in outcome.receipt.get("logs", []):
            raw = RawLog(_int(lg["blockNumber"]), _int(lg["logIndex"]), _bytes(lg["blockHash"]),
                         _bytes(lg["transactionHash"]), str(lg["address"]), tuple(_bytes(t) for t in lg["topics"]),
                         _bytes(lg["data"]))
            event = self._decoder.decode(raw)
            if event is not None and event.name == name:
                events.append(event)
        return events


def _bytes(value: Any) -> bytes:
    return bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)


def _expected(exc: BaseException) -> bool:
    """Errors that explain themselves (an RPC outage, a node's refusal): logged without a traceback."""
    return isinstance(exc, RpcError | Web3RPCError | TimeoutError)


__all__ = ["Settler", "batch_key"]
