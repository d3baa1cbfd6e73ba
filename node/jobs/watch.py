"""Turns the market's lifecycle events about our jobs into journal moves, as they happen.

Why events and not only chain reads: a dispute or a verifier's challenge must be noticed while the
window is open (the operator may want to answer it), and a claim landing or an offer being taken by
someone else should move the job at once instead of at the settler's next pass. The settler's reads of
``getJob`` remain the backstop for anything missed (downtime, a removed event).

Every handler names the journal states it may move a job out of, so a replayed event, an event that
arrives after the settler already recorded the same fact, or an out-of-date one does nothing: ``apply``
is idempotent. Moves are compare-and-set (``expect=``), so racing the settler or the executor on the same
job can never produce a double move or a double-counted payment. A removed (reorganised-away) event is
only logged: undoing a move is not a legal transition, and the chain reads correct the journal later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from node.chain.follower import ChainEvent
from node.jobs.journal import JobRecord, Journal, StaleState, job_key
from node.jobs.state import UNDER_DEADLINE, JobState
from node.metrics import Metrics

log = logging.getLogger(__name__)
S = JobState

_PRE_CLAIM = frozenset({S.SEEN, S.VALIDATED})
_EXPIRABLE = _PRE_CLAIM | UNDER_DEADLINE | {S.FAILED}
_RESULT_ON_CHAIN = frozenset({S.SUBMITTED, S.DISPUTED})


class Watcher:
    """Applies market events for jobs in the journal. ``provider`` is our operator address (the one that
    claims and submits); ``payout`` is where the market credits our payments (None: not known, no check)."""

    def __init__(self, journal: Journal, provider: str, metrics: Metrics | None, payout: str | None) -> None:
        self.journal = journal
        self.provider = provider.lower()
        self.payout = payout.lower() if payout else None
        self.metrics = metrics
        self.applied = 0  # journal moves made from events, for status and tests
        self._handlers: dict[str, Callable[[JobRecord, ChainEvent], None]] = {
            "JobClaimed": self._claimed, "OfferCancelled": self._cancelled, "JobExpired": self._expired,
            "ResultSubmitted": self._submitted, "JobFinalized": self._finalized, "JobDisputed": self._disputed,
            "ChallengeOpened": self._challenged, "DisputeResolved": self._resolved,
            "ChallengeClosed": self._challenge_closed, "ProviderSlashed": self._slashed,
        }

    async def handle(self, events: Iterable[ChainEvent]) -> None:
        """An EventFollower handler: applies the batch in chain order off the event loop (SQLite fsyncs)."""
        batch = list(events)
        await asyncio.to_thread(lambda: [self.apply(e) for e in batch])

    def apply(self, event: ChainEvent) -> None:
        """Records what one event means for our job; ignores other contracts, other events and jobs the
        journal does not know. Never raises for a malformed event (logged): one bad log must not stop the
        follower, which would redeliver it forever."""
        handler = self._handlers.get(event.name) if event.contract == "market" else None
        if handler is None:
            return
        try:
            job_id = job_key(event.args["jobId"])
        except (KeyError, ValueError):
            log.warning("%s event without a valid jobId in block %d; ignored", event.name, event.block_number)
            return
        record = self.journal.get(job_id)
        if record is None:
            return
        if event.removed:
            log.warning("%s of job %s in block %d was reorganised away; the settler's chain reads will correct "
                        "the journal (now %s)", event.name, job_id, event.block_number, record.state,
                        extra={"job_id": job_id})
            return
        try:
            handler(record, event)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s of job %s does not look like the market's event (%s); ignored", event.name, job_id, exc,
                        extra={"job_id": job_id})

    # -- one handler per event --------------------------------------------------------------------------

    def _claimed(self, rec: JobRecord, ev: ChainEvent) -> None:
        who, deadline = str(ev.args["provider"]), int(ev.args["deadline"])
        if who.lower() == self.provider:
            self._move(rec, {S.VALIDATED}, S.CLAIMED, f"our claim was mined; deadline {deadline}", ev,
                       deadline=deadline)
        else:
            self._move(rec, _PRE_CLAIM, S.EXPIRED, f"claimed by another provider ({who})", ev)

    def _cancelled(self, rec: JobRecord, ev: ChainEvent) -> None:
        self._move(rec, _PRE_CLAIM, S.EXPIRED, "the requester cancelled the offer", ev)

    def _expired(self, rec: JobRecord, ev: ChainEvent) -> None:
        slashed = int(ev.args["slashed"])
        held = rec.state in UNDER_DEADLINE or rec.state is S.FAILED
        why = (f"the claim lapsed and was expired on chain; bond of {slashed} forfeited to the requester" if held
               else "the offer expired on chain")
        if self._move(rec, _EXPIRABLE, S.EXPIRED, why, ev) and held:
            log.warning("job %s expired on chain while we held the claim; bond of %d forfeited", rec.job_id,
                        slashed, extra={"job_id": rec.job_id})

    def _submitted(self, rec: JobRecord, ev: ChainEvent) -> None:
        if str(ev.args["provider"]).lower() != self.provider or rec.state is not S.COMMITTED:
            return
        root = "0x" + bytes(ev.args["resultRoot"]).hex()
        if root != rec.result_root:
            log.error("job %s: the chain holds result root %s but we committed %s; is the operator key used "
                      "elsewhere? leaving the job for a human", rec.job_id, root, rec.result_root,
                      extra={"job_id": rec.job_id})
            return
        end = int(ev.args["challengeWindowEnd"])
        self._move(rec, {S.COMMITTED}, S.SUBMITTED, f"our result is on chain; the window ends at {end}", ev)

    def _finalized(self, rec: JobRecord, ev: ChainEvent) -> None:
        amount, payout = int(ev.args["amount"]), str(ev.args["payout"])
        moved = self._move(rec, _RESULT_ON_CHAIN, S.FINALIZED, f"finalized on chain; {amount} credited to {payout}", ev)
        if not moved:
            return
        if self.metrics is not None:
            self.metrics.earnings.inc(amount)
        if self.payout is not None and payout.lower() != self.payout:
            log.warning("job %s was paid to %s, not the configured payout address %s (changed in the registry?)",
                        rec.job_id, payout, self.payout, extra={"job_id": rec.job_id})

    def _disputed(self, rec: JobRecord, ev: ChainEvent) -> None:
        if self._move(rec, {S.SUBMITTED}, S.DISPUTED, f"the requester {ev.args['requester']} disputed the result "
                      f"(dispute bond {int(ev.args['disputeBond'])})", ev):
            log.warning("job %s: the requester disputed our result; the arbiter will rule", rec.job_id,
                        extra={"job_id": rec.job_id})

    def _challenged(self, rec: JobRecord, ev: ChainEvent) -> None:
        if self._move(rec, {S.SUBMITTED}, S.DISPUTED, f"the verifier {ev.args['verifier']} opened a challenge", ev):
            log.warning("job %s: a verifier challenged our result", rec.job_id, extra={"job_id": rec.job_id})

    def _resolved(self, rec: JobRecord, ev: ChainEvent) -> None:
        if ev.args["providerWasRight"]:
            # The same transaction emits JobFinalized with the amount; that event records the payment.
            log.info("job %s: the arbiter ruled for us", rec.job_id, extra={"job_id": rec.job_id})
            return
        if self._move(rec, {S.DISPUTED}, S.SLASHED, "the arbiter ruled against us; the bond is gone", ev):
            log.warning("job %s: the arbiter ruled against us; bond slashed", rec.job_id, extra={"job_id": rec.job_id})

    def _challenge_closed(self, rec: JobRecord, ev: ChainEvent) -> None:
        if ev.args["fraud"]:
            if self._move(rec, _RESULT_ON_CHAIN, S.SLASHED, f"the verifier proved fraud (challenger "
                          f"{ev.args['challenger']}); the bond is gone", ev):
                log.warning("job %s: fraud proven against our result; bond slashed", rec.job_id,
                            extra={"job_id": rec.job_id})
        else:
            self._move(rec, {S.DISPUTED}, S.SUBMITTED, "the challenge closed without fraud", ev)

    def _slashed(self, rec: JobRecord, ev: ChainEvent) -> None:
        # expire() emits this too, before JobExpired; for a claim that lapsed the JobExpired event records it.
        if self._move(rec, _RESULT_ON_CHAIN, S.SLASHED, f"our bond of {int(ev.args['amount'])} was slashed", ev):
            log.warning("job %s: our bond was slashed", rec.job_id, extra={"job_id": rec.job_id})

    # -- the one way a move is made -----------------------------------------------------------------------

    def _move(self, rec: JobRecord, sources: Iterable[JobState], target: JobState, reason: str, ev: ChainEvent,
              **fields: Any) -> bool:
        """Moves the job to ``target`` if it is in one of ``sources``; True if this call made the move.
        On a lost race the job is read again and the move retried only if it still applies."""
        allowed = frozenset(sources)
        for _ in range(3):
            if rec.state not in allowed:
                return False
            try:
                self.journal.transition(rec.job_id, target, reason=reason, code=f"event:{ev.name}",
                                        expect=rec.state, **fields)
            except StaleState:
                fresh = self.journal.get(rec.job_id)
                if fresh is None:
                    return False
                rec = fresh
                continue
            self.applied += 1
            log.info("job %s: %s (%s in block %d)", rec.job_id, target, ev.name, ev.block_number,
                     extra={"job_id": rec.job_id})
            return True
        return False


__all__ = ["Watcher"]
