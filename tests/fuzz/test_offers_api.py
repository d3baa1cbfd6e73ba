"""Bad offers through POST /offers on the real node: forged, mutated, replayed, expired, wrong-domain and
malformed. Each must be answered 422 ``accepted: false`` with a code from the checks its damage is meant to
hit and a non-empty reason, counted under that code in the node's metrics, and never recorded as a job
(the ``healthy`` fixture also checks that the node still answers and logged no error)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.jobs.state import JobState
from tests.fuzz.offers import CATEGORIES, Case, dumps, envelope
from tests.fuzz.profile import fuzz
from tests.fuzz.stack import JSON, PARAMS, Stack
from tests.fuzz.tally import TALLY

PATH = "POST /offers"


def post_case(stack: Stack, case: Case) -> str:
    status, body, _ = stack.request("POST", "/offers", case.body, JSON)
    where = f"{case.category} / {case.kind}: HTTP {status} {body[:300]!r}"
    assert status == 422, where
    reply = json.loads(body)
    assert reply["accepted"] is False, where
    assert reply["code"] in case.expect, f"{where}; expected one of {sorted(case.expect)}"
    assert isinstance(reply["reason"], str) and reply["reason"].strip(), where
    if case.job_id:  # a refused direct offer is never recorded (its id is only the sender's claim)
        record = stack.node.journal.get("0x" + case.job_id.hex())
        assert record is None or record.state is JobState.REJECTED, f"{where}; journal: {record}"
    TALLY.offer(PATH, case.category, reply["code"])
    return reply["code"]


@pytest.mark.parametrize("category", sorted(CATEGORIES))
@fuzz(ci=45, long=1250)
@given(data=st.data())
def test_bad_offers_are_refused_with_a_reason(healthy: Stack, category: str, data: st.DataObject) -> None:
    before = healthy.rejected_counts()
    case = data.draw(CATEGORIES[category](healthy.target()), label="case")
    code = post_case(healthy, case)
    assert healthy.rejected_counts()[code] > before[code], f"{code} was not counted in offers_rejected"


@fuzz(ci=15, long=200)
@given(data=st.data())
def test_a_refused_offer_sent_again_is_refused_again(healthy: Stack, data: st.DataObject) -> None:
    """Direct refusals are not recorded, so a re-sent bad offer must meet the same checks, not a cache."""
    t = healthy.target()
    case = data.draw(st.one_of(*(make(t) for make in CATEGORIES.values())), label="case")
    first = post_case(healthy, case)
    again = post_case(healthy, case)
    assert again == first


def test_a_valid_offer_is_taken_once_even_when_sent_again(healthy: Stack) -> None:
    """The control that makes "0 accepted" mean something: an offer built like the fuzz's valid parts is
    taken, and sending it again answers the same job without a second record or claim."""
    o = healthy.offer(provider=healthy.provider)
    sig = healthy.proto.sign(healthy.requester_key, o)
    body = dumps(envelope(o, sig, PARAMS, healthy.chain_id, healthy.market))
    job = "0x" + healthy.proto.job_id(o).hex()
    healthy.controls.add(job)
    status, reply, _ = healthy.request("POST", "/offers", body, JSON)
    assert status == 202, reply
    assert json.loads(reply)["job_id"] == job
    status, again, _ = healthy.request("POST", "/offers", body, JSON)
    assert json.loads(again)["job_id"] == job and json.loads(again)["accepted"] is True
    TALLY.controls[PATH] += 1
    deadline = time.monotonic() + 60
    while healthy.proto.job(bytes.fromhex(job[2:]))["state"] == 0:  # JobState.None: not on chain yet
        assert time.monotonic() < deadline, "the control offer was never claimed"
        time.sleep(0.2)
    claims = healthy.proto.market.events.JobClaimed().get_logs(from_block=0)
    assert sum(1 for e in claims if "0x" + e["args"]["jobId"].hex() == job) == 1
    assert len(healthy.node.journal.history(job)) >= 2
