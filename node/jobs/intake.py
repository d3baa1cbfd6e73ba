"""Where offers enter the node: OfferPosted events from the chain and signed offers sent to the API.

Both paths end the same way: the journal holds the job as *validated* (a claim candidate, and the scheduler
is woken) or *rejected* with a machine-readable code, and the metrics count it. The checks are the ones in
``chain.verify`` (terms, signature, replay) and ``jobs.policy`` (price, devices, deadline, lists).

What is not recorded: a direct offer that fails verification (malformed, forged, replayed). Its job id is
only a claim by the sender, and recording it would let anyone pre-empt a genuine offer with the same fields
by sending a forged copy first; it is logged and counted instead. An on-chain offer passed the market's own
signature check, so its id is genuine and every one of them is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from node.chain.follower import ChainEvent
from node.chain.offers import JobOffer
from node.chain.verify import (
    OfferChainView,
    OfferRejected,
    RejectReason,
    SignedOffer,
    check_offer_local,
    verify_offer,
)
from node.jobs.journal import JobRecord, JobSource, Journal
from node.jobs.policy import Decision, Policy
from node.jobs.state import JobState
from node.metrics import Metrics

log = logging.getLogger("gpunode.intake")

# An on-chain offer already passed the market's signature check (ECDSA or EIP-1271); these local verdicts
# can then only mean a contract wallet signed it, which the market accepted.
_SIGNATURE_REASONS = {RejectReason.SIGNER_MISMATCH, RejectReason.BAD_SIGNATURE_LENGTH,
                      RejectReason.BAD_SIGNATURE_V, RejectReason.MALLEABLE_SIGNATURE}


@dataclass(frozen=True)
class OfferReply:
    """What POST /offers answers: accepted (a claim candidate) or not, with the code and reason."""

    accepted: bool
    job_id: str | None
    state: str | None
    code: str | None
    reason: str


def offer_from_event(args: dict[str, Any]) -> JobOffer:
    o = args["offer"]
    return JobOffer(requester=o["requester"], provider=o["provider"], workload=bytes(o["workload"]),
                    paramsHash=bytes(o["paramsHash"]), inputHash=bytes(o["inputHash"]), inputURI=o["inputURI"],
                    payment=int(o["payment"]), providerBond=int(o["providerBond"]),
                    maxDuration=int(o["maxDuration"]), expiry=int(o["expiry"]), nonce=int(o["nonce"]))


class Intake:
    def __init__(self, journal: Journal, policy: Policy, metrics: Metrics, *, chain_id: int, market: str,
                 view: OfferChainView, chain_time: Callable[[], int], fee_bps: Callable[[], int],
                 wake: Callable[[], None] = lambda: None) -> None:
        self.journal, self.policy, self.metrics = journal, policy, metrics
        self.chain_id, self.market, self.view = chain_id, market, view
        self.chain_time, self.fee_bps, self.wake = chain_time, fee_bps, wake
        self.decisions: dict[str, Decision] = {}  # job id -> the accepted decision (its quote), for the scheduler
        self._deciding: dict[str, list] = {}  # job id -> [lock, holders]: see _one_at_a_time

    def decision(self, rec: JobRecord) -> Decision:
        """The policy's decision for a stored offer, cached while it is accepted: the scheduler ranks by its
        quote and the executor sizes its deadline check with it. After a restart it is made again."""
        cached = self.decisions.get(rec.job_id)
        if cached is not None:
            return cached
        signed = SignedOffer.from_json(rec.offer_json)
        decision = self.policy.evaluate(signed.offer, signed.params or b"", now=self.chain_time(),
                                        fee_bps=self.fee_bps(), free_stake=None)
        if decision.ok:
            self.decisions[rec.job_id] = decision
        return decision

    # ------------------------------------------------------------------------------------------ chain
    async def on_event(self, ev: ChainEvent) -> None:
        if ev.name != "OfferPosted" or ev.removed:
            return  # a removed post is handled by reading the chain before the claim (it would fail simulation)
        received = time.monotonic()  # event-to-claim is timed from here (metrics.event_to_claim)
        try:
            signed = SignedOffer(offer_from_event(ev.args), bytes(ev.args["signature"]), self.chain_id,
                                 self.market, bytes(ev.args["params"]))
        except (OfferRejected, KeyError, TypeError, ValueError) as exc:
            log.warning("undecodable OfferPosted in block %d: %s", ev.block_number, exc)
            self.metrics.offers_rejected.labels("malformed").inc()
            return
        job_id = "0x" + signed.job_id.hex()
        if job_id != "0x" + bytes(ev.args["jobId"]).hex():
            log.warning("OfferPosted %s does not hash to its job id; ignored", ev.args["jobId"])
            self.metrics.offers_rejected.labels("job_id_mismatch").inc()
            return
        async with self._one_at_a_time(job_id):
            new = await self._record(signed, JobSource.CHAIN)
            record = await asyncio.to_thread(self.journal.get, job_id)
            if not new and (record is None or record.state is not JobState.SEEN):
                return  # a replayed event (restart, reorg re-delivery): already decided
            self.metrics.offers_seen.labels("chain").inc()
            local = check_offer_local(signed, chain_id=self.chain_id, market=self.market, now=self.chain_time())
            wallet_signed = local.reason in _SIGNATURE_REASONS and await self.view.has_code(signed.offer.requester)
            if not local.ok and not wallet_signed:
                await self._reject(job_id, local.reason.value, local.detail)
                return
            await self._decide(job_id, signed, ("chain", received))

    # ------------------------------------------------------------------------------------------ direct
    async def direct(self, body: bytes) -> OfferReply:
        """A signed offer sent to POST /offers. Verified in full (signature, EIP-1271, replay against the
        chain), then the policy; accepted offers are claimed with claimSigned by the scheduler."""
        received = time.monotonic()
        try:
            signed = SignedOffer.from_json(body)
            if signed.params is None:
                raise OfferRejected(RejectReason.MALFORMED, "params: required for a direct offer")
        except OfferRejected as exc:
            return self._refuse(None, exc.reason.value, exc.detail)
        job_id = "0x" + signed.job_id.hex()
        async with self._one_at_a_time(job_id):
            existing = await asyncio.to_thread(self.journal.get, job_id)
            if existing is not None and existing.state is not JobState.SEEN:
                accepted = existing.state is not JobState.REJECTED
                return OfferReply(accepted, job_id, existing.state.value, existing.code, existing.reason)
            verdict = await verify_offer(signed, chain_id=self.chain_id, market=self.market,
                                         now=self.chain_time(), view=self.view)
            if not verdict.ok:
                return self._refuse(job_id, verdict.reason.value, verdict.detail)
            await self._record(signed, JobSource.DIRECT)
            self.metrics.offers_seen.labels("direct").inc()
            record = await self._decide(job_id, signed, ("direct", received))
            return OfferReply(record.state is JobState.VALIDATED, job_id, record.state.value, record.code,
                              record.reason)

    def _refuse(self, job_id: str | None, code: str, detail: str) -> OfferReply:
        self.metrics.offers_seen.labels("direct").inc()
        self.metrics.offers_rejected.labels(code).inc()
        log.info("direct offer %s refused: %s: %s", job_id or "(unparsed)", code, detail,
                 extra={"job_id": job_id, "code": code})
        return OfferReply(False, job_id, None, code, detail)

    # ------------------------------------------------------------------------------------------ shared
    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, job_id: str) -> AsyncIterator[None]:
        """Copies of one offer (a resend racing the first, or the same offer by POST and by event) are
        decided one after another, so the later copy finds the first one's verdict in the journal: counted
        once, decided once, and never a StaleState escaping as a 500 (found by bench.load)."""
        entry = self._deciding.setdefault(job_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._deciding[job_id]

    async def _record(self, signed: SignedOffer, source: JobSource) -> bool:
        o = signed.offer
        return await asyncio.to_thread(
            self.journal.record_seen, signed.job_id, requester=o.requester, provider=o.provider,
            workload=o.workload, payment=o.payment, bond=o.providerBond, expiry=o.expiry,
            offer_json=signed.to_json(), source=source)

    async def _decide(self, job_id: str, signed: SignedOffer, arrived: tuple[str, float]):
        """``arrived``: source and monotonic time the offer reached intake, to time its claim (event-to-claim)."""
        decision = self.policy.evaluate(signed.offer, signed.params or b"", now=self.chain_time(),
                                        fee_bps=self.fee_bps(), free_stake=None)
        if not decision.ok:
            return await self._reject(job_id, decision.code.value, decision.reason)
        self.decisions[job_id] = decision
        self.metrics.offer_arrived(job_id, *arrived)
        record = await asyncio.to_thread(
            self.journal.transition, job_id, JobState.VALIDATED, reason=decision.reason or "every check passed",
            expect=JobState.SEEN)
        log.info("offer %s validated: %s", job_id, decision.reason, extra={"job_id": job_id})
        self.wake()
        return record

    async def _reject(self, job_id: str, code: str, detail: str):
        self.metrics.offers_rejected.labels(code).inc()
        log.info("offer %s rejected: %s: %s", job_id, code, detail, extra={"job_id": job_id, "code": code})
        return await asyncio.to_thread(self.journal.transition, job_id, JobState.REJECTED, reason=detail,
                                       code=code, expect=JobState.SEEN)
