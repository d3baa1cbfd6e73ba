"""Device slots and the choice of claims: never more claims than slots, best pay per GPU-second first."""

from __future__ import annotations

from node.jobs.policy import Quote
from node.jobs.scheduler import Candidate, Slots, assign, rank


def cand(job: str, pay_per_second: float, fits=("cuda:0", "cuda:1"), bond: int = 10, expiry: int = 1000):
    q = Quote(device=fits[0], seconds=1.0, price_floor=1, power_cost=0, net_payment=int(pay_per_second),
              pay_per_second=pay_per_second, fits=tuple(fits))
    return Candidate(job, q, bond, expiry)


def test_a_slot_holds_one_job_and_a_job_one_slot():
    slots = Slots(["cuda:0", "cuda:1"])
    assert slots.reserve("cuda:0", "a")
    assert slots.reserve("cuda:0", "a")  # idempotent
    assert not slots.reserve("cuda:0", "b")
    assert not slots.reserve("cuda:1", "a")  # already holds cuda:0
    assert not slots.reserve("cuda:9", "b")
    assert slots.free() == ["cuda:1"] and slots.device_of("a") == "cuda:0"
    slots.release("a")
    assert slots.free() == ["cuda:0", "cuda:1"] and slots.holder("cuda:0") is None
    assert slots.free(lambda d: d != "cuda:0") == ["cuda:1"]


def test_best_pay_first_ties_to_the_sooner_expiry():
    a, b, c = cand("a", 5.0, expiry=900), cand("b", 9.0), cand("c", 5.0, expiry=800)
    assert [x.job_id for x in rank([a, b, c])] == ["b", "c", "a"]


def test_assign_never_exceeds_free_slots_or_free_stake_and_respects_fit():
    jobs = [cand("big", 9.0, fits=("cuda:1",)), cand("a", 8.0), cand("b", 7.0), cand("c", 6.0)]
    chosen = assign(jobs, ["cuda:0", "cuda:1"], free_stake=None)
    assert [(c.job_id, d) for c, d in chosen] == [("big", "cuda:1"), ("a", "cuda:0")]
    # stake for only one bond: the best-paying that fits goes, the rest wait
    chosen = assign(jobs, ["cuda:0", "cuda:1"], free_stake=15)
    assert [(c.job_id, d) for c, d in chosen] == [("big", "cuda:1")]
    # a candidate that fits no free device is skipped, not blocking the next
    chosen = assign(jobs, ["cuda:0"], free_stake=None)
    assert [(c.job_id, d) for c, d in chosen] == [("a", "cuda:0")]
    assert assign(jobs, [], free_stake=None) == []
