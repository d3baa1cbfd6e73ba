"""Answers reveal demands against our own matmul-int8 results, without the operator.

Why: a challenger who cannot get our result file (we never served it, or it is lost on their side) may
demand through MatmulInt8Verifier that we reveal the 4 KiB chunk holding one element of C, or audit one
with the requester's committed secret. Unless the chunk and its proof against our committed root are on
chain before the demand's deadline, anyone can call ``revealTimeout`` and our bond is slashed, honest
result or not. The node holds the file, so it answers at once.

How, and what survives a crash:
- The follower follows the verifier beside the market; its ``RevealDemanded`` events for our operator
  address reach ``on_event``. Every answer starts from the chain: ``demands(jobId)`` must still show the
  demand open, so a redelivered or reorganised event, or a demand someone else already answered, sends
  nothing.
- The chunk and its RFC 6962 proof are read from the stored result file (in a thread; the file is checked
  against the root we committed) and ``reveal`` goes through the transaction manager under the key
  ``reveal:<jobId>:<chunkIndex>``; ``submit`` stores that intent before the follower records the event as
  handled. A second demand for the same chunk after our first reveal landed (the challenger loses a bond
  each time, but may) gets ``reveal:<jobId>:<chunkIndex>:<n>``, so it is never mistaken for the first.
- ``reconcile`` reads ``demands(jobId)`` for every open matmul job of ours that is disputed (or named by a
  recent event) and answers whatever is open, at start and every ``recheck_s`` after: a demand whose event
  was lost in a crash, before its intent was stored, is still answered while its window is open.
- The journal notes the demand and the reveal sent (``Journal.note``); how the challenge ended (fraud or
  not) reaches it through the watcher's ChallengeClosed as before. ``gpunode_reveals{outcome}`` counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from node.chain.contracts import load_abi
from node.chain.follower import ChainEvent
from node.chain.fraud import VERIFIER, WORKLOAD_ID, FraudProofError, MatmulParams, reveal_calldata
from node.chain.rpc import RpcClient
from node.chain.txmanager import IdempotencyConflict, TxManager
from node.chain.txstore import TxState
from node.chain.verify import SignedOffer
from node.compute.commitment import CHUNK_SIZE, file_inclusion_proof
from node.jobs.journal import JobRecord, Journal, UnknownJob, job_key
from node.jobs.state import JobState
from node.metrics import Metrics

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x" + "00" * 20
_MAX_REPEATS = 1000  # demands on one chunk of one job; each costs the challenger a bond
_PROOF_ERRORS = ("BadResultProof", "BadChunkLength")  # reverts that our proof itself caused
_JOB_EVENTS = frozenset({"RevealDemanded", "ChunkRevealed", "RevealTimedOut"})  # the verifier events on_event reads


@dataclass(frozen=True)
class Demand:
    """MatmulInt8Verifier.demands(jobId); ``challenger`` is the zero address when none is open."""

    challenger: str
    deadline: int
    i: int
    j: int
    expected: int
    bond: int

    @property
    def open(self) -> bool:
        return self.challenger != ZERO_ADDRESS

    @classmethod
    def from_call(cls, value: Any) -> Demand:
        """From the getter's return value: the fields themselves, or one struct holding them (fields the
        contract may add after these six are not needed here)."""
        if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], list | tuple):
            value = value[0]
        challenger, deadline, i, j, expected, bond, *_ = value
        return cls(to_checksum_address(challenger), int(deadline), int(i), int(j), int(expected), int(bond))


async def read_demand(rpc: RpcClient, verifier: str, job_id: str | bytes) -> Demand:
    raw = bytes.fromhex(job_key(job_id)[2:])
    address = to_checksum_address(verifier)

    async def get(w3):
        return await w3.eth.contract(address=address, abi=load_abi(VERIFIER)).functions.demands(raw).call()

    return Demand.from_call(await rpc.call(get, f"demands {job_key(job_id)[:10]}"))


class Revealer:
    """Answers demands on jobs this operator (``provider``) claimed. ``verifier`` is the deployment's
    MatmulInt8Verifier; ``chain_time`` the latest block's timestamp."""

    def __init__(self, journal: Journal, txm: TxManager, rpc: RpcClient, verifier: str, provider: str,
                 metrics: Metrics | None, *, chain_time: Callable[[], int], recheck_s: float = 60.0) -> None:
        self.journal, self.txm, self.rpc, self.metrics = journal, txm, rpc, metrics
        self.verifier = to_checksum_address(verifier)
        self.provider = provider.lower()
        self.chain_time, self.recheck_s = chain_time, recheck_s
        self.errors = 0
        self.last_error: str | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._watch: set[str] = set()  # jobs named by an event whose demand the chain did not show yet
        self._inflight: dict[str, str] = {}  # key -> job id of reveals sent and not yet settled
        self._wake = asyncio.Event()

    # -- events ----------------------------------------------------------------------------------------

    async def handle(self, events: Iterable[ChainEvent]) -> None:
        """An EventFollower handler (for the verifier's events; others are ignored)."""
        for ev in events:
            await self.on_event(ev)

    async def on_event(self, ev: ChainEvent) -> None:
        """Never raises for one bad event: the follower would redeliver it forever."""
        if ev.contract != "verifier" or ev.removed or ev.name not in _JOB_EVENTS:
            return  # the verifier's admin events (ownership, bond and window settings) name no job
        try:
            job_id = job_key(ev.args["jobId"])
            if ev.name == "RevealDemanded":
                if str(ev.args["provider"]).lower() != self.provider:
                    return
                await self._note(job_id, "reveal_demanded",
                                 f"reveal of chunk {int(ev.args['chunkIndex'])} (element {int(ev.args['i'])},"
                                 f"{int(ev.args['j'])}) demanded by {ev.args['challenger']}; deadline "
                                 f"{int(ev.args['deadline'])} (block {ev.block_number})")
                outcome = await self.answer(job_id, hint=int(ev.args["chunkIndex"]))
                if outcome == "not_open":  # the chain we read lags the event's block: look again soon
                    self._watch.add(job_id)
                    self._wake.set()
            elif ev.name == "ChunkRevealed":
                await self._note(job_id, "chunk_revealed", f"chunk {int(ev.args['chunkIndex'])} revealed on chain "
                                 f"(committed {int(ev.args['committed'])}, expected {int(ev.args['expected'])}, "
                                 f"fraud: {bool(ev.args['fraud'])}; block {ev.block_number})")
            elif ev.name == "RevealTimedOut":
                if await self._note(job_id, "reveal_timed_out", f"the reveal window passed without a reveal "
                                    f"(block {ev.block_number}); the bond is slashed"):
                    log.error("job %s: a reveal demand timed out unanswered; our bond is slashed", job_id,
                              extra={"job_id": job_id})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged and counted; reconcile looks at the job again soon
            self._error(f"{ev.name} in block {ev.block_number}: {exc}", exc)
            if ev.name == "RevealDemanded" and isinstance(ev.args.get("jobId"), bytes):
                self._watch.add(job_key(ev.args["jobId"]))
                self._wake.set()

    # -- answering ---------------------------------------------------------------------------------------

    async def answer(self, job_id: str, *, hint: int | None = None) -> str:
        """Reveals for the job's open demand if one is open, ours, and not answered yet; returns what
        happened (the metrics label): sent, in_flight, not_open, too_late, unknown_job, no_result, rejected,
        reverted_before."""
        job_id = job_key(job_id)
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            outcome = await self._answer(job_id, hint)
        if not self._locks.get(job_id, lock).locked():
            self._locks.pop(job_id, None)
        if self.metrics is not None and outcome not in ("not_open", "in_flight"):
            self.metrics.reveals.labels(outcome).inc()
        return outcome

    async def _answer(self, job_id: str, hint: int | None) -> str:
        demand = await read_demand(self.rpc, self.verifier, job_id)
        if not demand.open:
            return "not_open"
        if demand.deadline < self.chain_time():
            log.error("job %s: a reveal demand is open past its deadline %d; it can only time out", job_id,
                      demand.deadline, extra={"job_id": job_id})
            return "too_late"
        rec = await asyncio.to_thread(self.journal.get, job_id)
        if rec is None:
            log.error("job %s: reveal demanded of us, but the journal does not know the job", job_id,
                      extra={"job_id": job_id})
            return "unknown_job"
        try:
            index = _chunk_index(rec, demand, hint)
        except (FraudProofError, ValueError) as exc:
            log.error("job %s: cannot tell which chunk is demanded: %s", job_id, exc, extra={"job_id": job_id})
            return "no_result"
        key = await self._free_key(job_id, index)
        if key is None:
            return "in_flight"
        if key == "reverted":
            return "reverted_before"
        try:
            chunk, proof = await asyncio.to_thread(_chunk_and_proof, rec, index)
        except (OSError, FraudProofError, ValueError) as exc:
            await self._note(job_id, "reveal_impossible", f"cannot reveal chunk {index}: {exc}")
            log.error("job %s: cannot answer the reveal demand (deadline %d): %s", job_id, demand.deadline, exc,
                      extra={"job_id": job_id})
            return "no_result"
        offer = SignedOffer.from_json(rec.offer_json).offer
        try:
            intent = await self.txm.submit(key, self.verifier, reveal_calldata(offer, chunk, proof))
        except IdempotencyConflict as exc:
            self._error(f"job {job_id}: {exc}")
            return "rejected"
        if intent.state is TxState.REJECTED:
            log.error("job %s: reveal of chunk %d would revert: %s", job_id, index, intent.reason,
                      extra={"job_id": job_id})
            return "rejected"
        self._inflight[key] = job_id
        await self._note(job_id, "reveal_sent", f"revealing chunk {index} ({key}); deadline {demand.deadline}")
        log.info("job %s: revealing chunk %d against the demand of %s (deadline %d)", job_id, index,
                 demand.challenger, demand.deadline, extra={"job_id": job_id})
        return "sent"

    async def _free_key(self, job_id: str, index: int) -> str | None:
        """The key for a reveal of this chunk now: the first never used, or one whose intent never reached
        the chain. None while an earlier reveal is in flight (it answers this demand); "reverted" when the
        latest one was mined and reverted for its proof (sending the same proof again would only revert)."""
        base = f"reveal:{job_id}:{index}"
        for n in range(1, _MAX_REPEATS + 1):
            key = base if n == 1 else f"{base}:{n}"
            intent = await asyncio.to_thread(self.txm.store.get, key)
            if intent is None or intent.state.retryable:
                return key
            if not intent.state.done:
                return None
            if intent.state is TxState.REVERTED and any(e in intent.reason for e in _PROOF_ERRORS):
                nxt = await asyncio.to_thread(self.txm.store.get, f"{base}:{n + 1}")
                if nxt is None:
                    log.error("job %s: our reveal %s reverted (%s); not sending it again", job_id, key,
                              intent.reason, extra={"job_id": job_id})
                    return "reverted"
            # Confirmed, or reverted for another reason (someone revealed first, the window closed): that
            # demand is over, so the open one is new.
        raise RuntimeError(f"job {job_id}: more than {_MAX_REPEATS} reveals of chunk {index}")

    # -- the backstop -------------------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Answers every open demand on our disputed matmul jobs (and jobs events named); returns how many
        reveals it sent."""
        jobs = {r.job_id for r in await asyncio.to_thread(self.journal.open_jobs)
                if r.state is JobState.DISPUTED and _is_matmul(r)}
        watched, self._watch = self._watch, set()  # each looked at once more; an error keeps it watched
        sent = 0
        for job_id in sorted(jobs | watched):
            try:
                if await self.answer(job_id) == "sent":
                    sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one job's trouble must not hold up the others
                self._error(f"job {job_id}: checking its reveal demand failed: {exc}", exc)
                if job_id in watched:
                    self._watch.add(job_id)
        await self._collect()
        return sent

    async def _collect(self) -> None:
        """Counts how sent reveals settled (gas, outcome); the journal learns the result from the events."""
        for key, job_id in list(self._inflight.items()):
            outcome = await self.txm.outcome(key)
            if outcome is None:
                continue
            del self._inflight[key]
            if self.metrics is not None:
                self.metrics.count_tx("reveal", outcome)
            if not outcome.ok:
                log.error("job %s: reveal %s %s: %s", job_id, key, outcome.state, outcome.reason,
                          extra={"job_id": job_id})

    async def run(self) -> None:
        """Supervised loop: reconcile now, then every ``recheck_s`` or sooner when an event asks."""
        while True:
            self._wake.clear()
            await self.reconcile()
            try:
                await asyncio.wait_for(self._wake.wait(), self.recheck_s if not self._inflight else
                                       min(self.recheck_s, 5.0))
                await asyncio.sleep(1.0)  # let a lagging endpoint catch up with the event's block
            except TimeoutError:
                pass

    # -- plumbing -----------------------------------------------------------------------------------------

    async def _note(self, job_id: str, code: str, reason: str) -> bool:
        try:
            return await asyncio.to_thread(self.journal.note, job_id, reason=reason, code=code)
        except UnknownJob:
            return False

    def _error(self, what: str, exc: BaseException | None = None) -> None:
        self.errors += 1
        self.last_error = what[:500]
        log.warning("reveal: %s", what, exc_info=exc)


def _is_matmul(rec: JobRecord) -> bool:
    return rec.workload.lower() == "0x" + WORKLOAD_ID.hex()


def _chunk_index(rec: JobRecord, demand: Demand, hint: int | None) -> int:
    """The demanded chunk, from the element (i, j) and the job's params; the event's chunk index when the
    params cannot be read (they can: the verifier only accepts canonical params)."""
    try:
        params = SignedOffer.from_json(rec.offer_json).params
        return MatmulParams.from_params(params or b"").element_chunk(demand.i, demand.j)[0]
    except (FraudProofError, ValueError):
        if hint is None:
            raise
        return hint


def _chunk_and_proof(rec: JobRecord, index: int) -> tuple[bytes, list[bytes]]:
    """The chunk and its proof from our stored result, only if the file still has the root we committed."""
    if not rec.result_path or not os.path.isfile(rec.result_path):
        raise FraudProofError(f"the result file {rec.result_path or '(none)'} is gone")
    size = os.stat(rec.result_path).st_size
    if not 0 <= index < -(-size // CHUNK_SIZE):
        raise FraudProofError(f"chunk {index} is outside our {size}-byte result")
    chunk, proof, commitment = file_inclusion_proof(rec.result_path, index)
    if rec.result_root is None or "0x" + commitment.root.hex() != rec.result_root:
        raise FraudProofError("the stored result file no longer has the root we committed")
    return chunk, proof


__all__ = ["Demand", "Revealer", "read_demand"]
