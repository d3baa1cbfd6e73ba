"""Bad offers through chain events: OfferPosted logs built as the market would emit them, decoded by the
follower's own ``EventDecoder`` and handed to the running node's ``Intake.on_event``; plus bad offers really
posted on chain (the market takes only genuine signatures, so these are policy refusals) and seen by the
real follower.

An event names no domain (the market's is implied), so "mutated domain" cases do not apply here and a
"wrong domain" signature can only fail as ``signer_mismatch``. Every event whose job id matches its offer
must end as a journal row ``rejected`` with a code and a reason; one whose id does not match (only a lying
RPC could deliver it) must leave no row at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from node.chain.follower import EventDecoder
from node.chain.follower_store import RawLog
from node.chain.offers import JobOffer, workload_id
from node.jobs.journal import JobSource
from node.jobs.state import JobState
from tests.fuzz.events import TOPIC, Feeder
from tests.fuzz.offers import (
    Case,
    Target,
    bad_terms,
    dumps,
    envelope,
    expired,
    forged,
    mutated,
    signature_shape,
    words,
    wrong_domain,
)
from tests.fuzz.profile import LONG, fuzz
from tests.fuzz.stack import JSON, OPERATOR, OTHER_PROVIDER, PARAMS, Stack
from tests.fuzz.tally import TALLY

PATH = "chain events"
ONCHAIN = "posted on chain"
_ENVELOPE_ONLY = ("chainId", "market")  # mutations of the envelope's domain: nothing an event can carry


def event_cases(t: Target) -> dict[str, st.SearchStrategy[Case]]:
    def for_events(case: Case) -> Case:
        if case.category == "wrong_domain":
            return replace(case, expect=frozenset({"signer_mismatch"}))
        return case

    return {"forged": forged(t), "expired": expired(t), "wrong_domain": wrong_domain(t).map(for_events),
            "mutated": mutated(t).filter(lambda c: c.kind not in _ENVELOPE_ONLY),
            "malformed": st.one_of(signature_shape(t), bad_terms(t))}


def check_rejected(stack: Stack, job_id: str, expect: frozenset[str], where: str) -> str:
    rec = stack.node.journal.get(job_id)
    assert rec is not None, f"{where}: no journal row for {job_id}"
    assert rec.state is JobState.REJECTED, f"{where}: {rec.state} ({rec.code}: {rec.reason})"
    assert rec.code in expect, f"{where}: code {rec.code!r}, expected one of {sorted(expect)}"
    assert rec.reason.strip() and rec.source is JobSource.CHAIN, f"{where}: {rec}"
    return rec.code


@pytest.mark.parametrize("category", ["expired", "forged", "malformed", "mutated", "wrong_domain", "lying_rpc"])
@given(data=st.data())
@fuzz(ci=14, long=800)
def test_bad_offer_events_are_rejected_with_a_reason(healthy: Stack, category: str, data: st.DataObject) -> None:
    """Each bad OfferPosted ends as a rejected journal row with a code and a reason, and the same event
    delivered again (restart, reorg) changes nothing; one whose id is not its offer's leaves no row."""
    t = healthy.target()
    cases = event_cases(t)
    case = data.draw(cases[category] if category in cases else st.one_of(*cases.values()), label="case")
    feeder = Feeder(healthy)
    job_id = "0x" + case.job_id.hex()
    # The job id is the offer's digest: params and signature are not part of it, so an offer Hypothesis drew
    # before (with other damage) is already decided, and this event must change nothing.
    known = journal_state(healthy, job_id)
    if category == "lying_rpc":  # an event whose id is not its offer's: only a lying RPC could deliver it
        wrong = data.draw(words.filter(lambda w: w != case.job_id), label="wrong id")
        before = healthy.rejected_counts()["job_id_mismatch"]
        feeder.deliver(feeder.event(case.offer, case.params, case.signature, wrong))
        assert healthy.node.journal.get(wrong) is None and journal_state(healthy, job_id) == known
        assert healthy.rejected_counts()["job_id_mismatch"] == before + 1  # refused, and counted with its reason
        TALLY.offer(PATH, category, "job_id_mismatch")
        return
    ev = feeder.event(case.offer, case.params, case.signature, case.job_id)
    feeder.deliver(ev)
    if known is not None:
        assert journal_state(healthy, job_id) == known, f"{category} / {case.kind}: a decided job changed"
        TALLY.offer(PATH, f"{category} (offer seen before)", "no-op: already decided")
        return
    code = check_rejected(healthy, job_id, case.expect, f"{category} / {case.kind}")
    steps = journal_state(healthy, job_id)
    feeder.deliver(replace(ev, block_hash=keccak(ev.block_hash), log_index=ev.log_index + 1))  # redelivered
    assert journal_state(healthy, job_id) == steps
    TALLY.offer(PATH, category, code)
    TALLY.offer(PATH, "replayed (redelivered)", "no-op: already decided")


def journal_state(stack: Stack, job_id: str) -> tuple | None:
    """The job's row and history length, or None: what a replay must leave as it found it."""
    rec = stack.node.journal.get(job_id)
    return None if rec is None else (rec.state, rec.code, rec.reason, len(stack.node.journal.history(job_id)))


@given(data=st.data())
@fuzz(ci=60, long=1500)
def test_undecodable_logs_are_skipped_not_raised(stack: Stack, data: st.DataObject) -> None:
    """Garbage where an OfferPosted log should be (what a broken or hostile RPC might return): the decoder
    answers None (the follower skips it) and never raises."""
    decoder = EventDecoder({"market": stack.market})
    topics = data.draw(st.lists(st.binary(min_size=0, max_size=40), max_size=5), label="topics")
    if data.draw(st.booleans(), label="real topic0"):
        topics = [TOPIC] + topics[1:]
    raw = RawLog(1, 0, b"\x00" * 32, b"\x00" * 32, stack.market, tuple(topics),
                 data.draw(st.binary(max_size=1024), label="data"))
    ev = decoder.decode(raw)
    assert ev is None or ev.name == "OfferPosted"


# ---------------------------------------------------------------------------------------------- on chain
def _bad_onchain(stack: Stack, i: int) -> list[tuple[str, str, Callable[[int], tuple[JobOffer, bytes]]]]:
    """Offers the market accepts (genuine signatures, valid terms) that this node must refuse by policy; each
    is made from the chain time just before it is posted."""
    other = stack.proto.account(stack.keys[OTHER_PROVIDER]).address
    bad_params = b'{"m": "many"}'

    def o(now: int, **terms: Any) -> JobOffer:
        return stack.offer(expiry=now + 86400 + i, **terms)

    return [
        ("under-priced", "below_price_floor", lambda now: (o(now, payment=1 + i), PARAMS)),
        ("wrong workload", "workload_disabled",
         lambda now: (o(now, workload=workload_id(f"no-such-workload/v{i}")), PARAMS)),
        ("bad params", "invalid_params", lambda now: (o(now, paramsHash=keccak(bad_params)), bad_params)),
        ("expiring before a claim", "offer_expiring|expired", lambda now: (stack.offer(expiry=now + 15), PARAMS)),
        ("another provider's", "not_addressed_to_us", lambda now: (o(now, provider=other), PARAMS)),
        ("file input", "input_not_allowed", lambda now: (o(now, inputURI=f"file:///etc/passwd{i}"), PARAMS)),
        ("deadline too short", "deadline_infeasible", lambda now: (o(now, maxDuration=1), PARAMS)),
    ]


def test_bad_offers_posted_on_chain_are_rejected_replays_change_nothing(healthy: Stack) -> None:
    """Really posted (the follower delivers them from the chain), each refused with its policy code; then
    the same events redelivered (a reorg or restart) and the same offers sent to POST /offers change nothing."""
    proto, feeder = healthy.proto, Feeder(healthy)
    assert proto.account(healthy.keys[OPERATOR]).address == healthy.provider
    posted: list[tuple[str, str, str, JobOffer, bytes, bytes]] = []
    for i in range(5 if LONG else 1):
        for kind, code, make in _bad_onchain(healthy, i):
            offer, params = make(proto.w3.eth.get_block("latest")["timestamp"])
            sig = proto.sign(healthy.requester_key, offer)
            proto.post(healthy.requester_key, offer, params, sig)
            posted.append((kind, code, "0x" + proto.job_id(offer).hex(), offer, params, sig))
    deadline = time.monotonic() + 60
    while any(healthy.node.journal.get(job) is None or healthy.node.journal.get(job).state is JobState.SEEN
              for _, _, job, *_ in posted):
        assert time.monotonic() < deadline, "the follower did not deliver every posted offer"
        time.sleep(0.2)
    logs = {"0x" + bytes(r["topics"][1]).hex(): RawLog.from_rpc(r)
            for r in proto.w3.eth.get_logs({"address": healthy.market, "fromBlock": 0, "topics": ["0x" + TOPIC.hex()]})}
    for kind, code, job, offer, params, sig in posted:
        got = check_rejected(healthy, job, frozenset(code.split("|")), f"on chain: {kind}")
        TALLY.offer(ONCHAIN, kind, got)
        steps = len(healthy.node.journal.history(job))
        feeder.deliver(feeder.decoder.decode(logs[job]))  # the same log again, as after a restart or reorg
        body = dumps(envelope(offer, sig, params, healthy.chain_id, healthy.market))
        status, body, _ = healthy.request("POST", "/offers", body, JSON)
        assert status == 422 and json.loads(body)["accepted"] is False and json.loads(body)["code"] == got, body
        assert len(healthy.node.journal.history(job)) == steps
        TALLY.offer(ONCHAIN, "replayed (redelivered)", "no-op: already decided")
        TALLY.offer(ONCHAIN, "replayed (POST /offers)", got)
