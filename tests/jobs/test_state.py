"""The state machine table itself: its shape, its invariants and its error messages."""

from __future__ import annotations

from collections import deque

import pytest

from node.jobs.state import (
    ON_CHAIN_STEP,
    RESUME,
    TERMINAL,
    TRANSITIONS,
    UNDER_DEADLINE,
    WHY,
    IllegalTransition,
    JobState,
    check,
    is_legal,
)

S = JobState
HAPPY = [S.SEEN, S.VALIDATED, S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED, S.FINALIZED, S.PAID]
PRE_CLAIM = {S.SEEN, S.VALIDATED}


def reachable(start: JobState) -> set[JobState]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_exactly_the_issue_states():
    assert {s.value for s in JobState} == {
        "seen", "validated", "claimed", "fetching", "running", "committed", "submitted", "finalized", "paid",
        "rejected", "failed", "expired", "disputed", "slashed"}
    assert set(TRANSITIONS) == set(JobState)


def test_terminal_states_have_no_way_out():
    assert TERMINAL == {S.PAID, S.REJECTED, S.EXPIRED, S.SLASHED}
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
        assert not any(is_legal(state, other) for other in JobState)


def test_happy_path_is_legal_step_by_step():
    for a, b in zip(HAPPY, HAPPY[1:], strict=False):
        assert is_legal(a, b), (a, b)
    assert not is_legal(S.SEEN, S.CLAIMED)  # no skipping validation
    assert not is_legal(S.RUNNING, S.SUBMITTED)  # nothing goes on chain before it is committed locally


def test_every_state_is_reachable_and_every_job_can_end():
    assert reachable(S.SEEN) == set(JobState)
    for state in JobState:
        assert reachable(state) & TERMINAL, f"{state} can never end"


def test_no_self_loops_and_nothing_returns_to_seen():
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        assert S.SEEN not in targets
        assert not is_legal(state, state)


def test_every_edge_says_why():
    edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert set(WHY) == edges
    assert all(len(why) > 10 for why in WHY.values())


def test_rejection_only_before_a_claim_and_failure_only_after():
    assert {a for a, t in TRANSITIONS.items() if S.REJECTED in t} == PRE_CLAIM
    assert {a for a, t in TRANSITIONS.items() if S.FAILED in t} == UNDER_DEADLINE


def test_claimed_work_can_always_fail_or_expire_and_nothing_else_is_under_deadline():
    assert UNDER_DEADLINE == {S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED}
    for state in UNDER_DEADLINE:
        assert {S.FAILED, S.EXPIRED} <= TRANSITIONS[state]


def test_failed_stays_open_until_the_chain_expires_the_claim():
    assert S.FAILED not in TERMINAL
    assert TRANSITIONS[S.FAILED] == {S.EXPIRED}


def test_dispute_branches():
    assert TRANSITIONS[S.SUBMITTED] == {S.FINALIZED, S.DISPUTED, S.SLASHED}
    assert TRANSITIONS[S.DISPUTED] == {S.FINALIZED, S.SUBMITTED, S.SLASHED}
    # paid is the withdraw's move; back to submitted or disputed only when a reorg removed the finalization
    assert TRANSITIONS[S.FINALIZED] == {S.PAID, S.SUBMITTED, S.DISPUTED}


def test_offer_that_goes_elsewhere_expires():
    assert S.EXPIRED in TRANSITIONS[S.SEEN] and S.EXPIRED in TRANSITIONS[S.VALIDATED]


def test_on_chain_steps_and_resume_notes():
    assert dict(ON_CHAIN_STEP) == {S.CLAIMED: "claim", S.SUBMITTED: "submit", S.FINALIZED: "finalize",
                                   S.PAID: "withdraw"}
    assert set(RESUME) == set(JobState) - TERMINAL
    assert all(RESUME[s].strip() for s in RESUME)
    assert "claim:" in RESUME[S.VALIDATED] and "submit:" in RESUME[S.COMMITTED]


def test_illegal_transition_message_and_type():
    with pytest.raises(IllegalTransition) as err:
        check(S.CLAIMED, S.PAID, "0xabc")
    assert isinstance(err.value, ValueError)
    assert err.value.from_state is S.CLAIMED and err.value.to_state is S.PAID
    text = str(err.value)
    assert "0xabc" in text and "claimed -> paid" in text and "fetching" in text
    with pytest.raises(IllegalTransition, match="paid is terminal"):
        check(S.PAID, S.SEEN)
    check(S.SEEN, S.VALIDATED)  # legal: no error


def test_is_legal_takes_strings_and_refuses_unknown_states():
    assert is_legal("seen", "validated")
    assert not is_legal("seen", "paid")
    with pytest.raises(ValueError):
        is_legal("seen", "bogus")
