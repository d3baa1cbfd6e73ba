"""The journal over real SQLite files: legal moves only, an audit row per move, restarts and crashes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import pytest

from node.jobs.journal import JobSource, Journal, StaleState, UnknownJob, job_key
from node.jobs.state import TERMINAL, TRANSITIONS, IllegalTransition, JobState

S = JobState
REPO = Path(__file__).resolve().parents[2]
REQUESTER = "0x" + "Ab" * 20
PROVIDER = "0x" + "00" * 20
ROOT = "0x" + "7e" * 32
DEADLINE = 2_000_000_000
# What a job must carry when it enters a state (the journal refuses a claim without a deadline).
ENTRY_FIELDS = {S.CLAIMED: {"deadline": DEADLINE}, S.COMMITTED: {"result_root": ROOT, "result_path": "/r/out"}}


class Clock:
    """Strictly increasing time, so ordering assertions do not depend on the wall clock's resolution."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += 1.0
            return self.now


def jid(n: int) -> str:
    return "0x" + f"{n:064x}"


def offer(n: int) -> str:
    return json.dumps({"requester": REQUESTER, "nonce": str(n), "payment": "5"})


def see(journal: Journal, n: int, **over) -> str:
    args = dict(requester=REQUESTER, provider=PROVIDER, workload="matmul-int8/v1", payment=5 * 10**18,
                bond=10**18, expiry=DEADLINE - 100, offer_json=offer(n), source="chain")
    args.update(over)
    assert journal.record_seen(jid(n), **args) is True
    return jid(n)


def path_to(target: JobState) -> list[JobState]:
    """A shortest legal path from seen to ``target`` (breadth-first over the table)."""
    prev: dict[JobState, JobState | None] = {S.SEEN: None}
    todo = deque([S.SEEN])
    while todo:
        state = todo.popleft()
        for nxt in sorted(TRANSITIONS[state]):
            if nxt not in prev:
                prev[nxt] = state
                todo.append(nxt)
    out: list[JobState] = [target]
    while prev[out[-1]] is not None:
        out.append(prev[out[-1]])  # type: ignore[arg-type]
    return out[::-1]


def drive(journal: Journal, job: str, states: list[JobState]) -> None:
    for state in states:
        if journal.get(job).state is not state:
            journal.transition(job, state, reason=f"to {state}", **ENTRY_FIELDS.get(state, {}))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock):
    j = Journal(tmp_path / "node.sqlite", clock=clock)
    yield j
    j.close()


def assert_chain(history, start=None):
    """History rows link up (each row starts where the previous ended) and every move is legal."""
    prev = start
    for row in history:
        assert row.from_state == prev
        assert row.from_state is None or row.to_state in TRANSITIONS[row.from_state]
        prev = row.to_state
    return prev


HAPPY = [S.SEEN, S.VALIDATED, S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED, S.FINALIZED, S.PAID]
PATHS = {
    "paid": HAPPY,
    "dispute won": HAPPY[:7] + [S.DISPUTED, S.FINALIZED, S.PAID],
    "challenge cleared": HAPPY[:7] + [S.DISPUTED, S.SUBMITTED, S.FINALIZED, S.PAID],
    "dispute lost": HAPPY[:7] + [S.DISPUTED, S.SLASHED],
    "slashed while down": HAPPY[:7] + [S.SLASHED],
    "rejected on sight": [S.SEEN, S.REJECTED],
    "rejected before claim": [S.SEEN, S.VALIDATED, S.REJECTED],
    "offer lapsed": [S.SEEN, S.EXPIRED],
    "taken by another provider": [S.SEEN, S.VALIDATED, S.EXPIRED],
    "claim expired": HAPPY[:3] + [S.EXPIRED],
    "fetch failed": HAPPY[:4] + [S.FAILED, S.EXPIRED],
    "run failed": HAPPY[:5] + [S.FAILED, S.EXPIRED],
    "run too slow": HAPPY[:5] + [S.EXPIRED],
    "submit too late": HAPPY[:6] + [S.EXPIRED],
    "submit failed": HAPPY[:6] + [S.FAILED, S.EXPIRED],
    "device lost": HAPPY[:3] + [S.FAILED, S.EXPIRED],
}


@pytest.mark.parametrize("name", PATHS)
def test_legal_paths_are_accepted_and_recorded(journal, name):
    states = PATHS[name]
    job = see(journal, 1)
    drive(journal, job, states[1:])
    rec = journal.get(job)
    assert rec.state is states[-1] and rec.terminal
    history = journal.history(job)
    assert [h.to_state for h in history] == states
    assert assert_chain(history) is states[-1]
    assert journal.open_jobs() == []


def test_every_pair_is_accepted_exactly_when_the_table_allows_it(journal):
    n = 0
    for a in JobState:
        n += 1
        probe = see(journal, n)
        drive(journal, probe, path_to(a)[1:])
        before, before_history = journal.get(probe), journal.history(probe)
        for b in JobState:
            if b is a:
                continue
            if b in TRANSITIONS[a]:
                n += 1
                job = see(journal, n)
                drive(journal, job, path_to(a)[1:])
                count = len(journal.history(job))
                rec = journal.transition(job, b, reason="probe", code="probe", **ENTRY_FIELDS.get(b, {}))
                assert rec.state is b and journal.get(job).state is b
                last = journal.history(job)
                assert len(last) == count + 1 and (last[-1].from_state, last[-1].to_state) == (a, b)
            else:
                with pytest.raises(IllegalTransition) as err:
                    journal.transition(probe, b, reason="probe", **ENTRY_FIELDS.get(b, {}))
                assert (err.value.from_state, err.value.to_state) == (a, b)
                assert journal.get(probe) == before
                assert journal.history(probe) == before_history


def test_terminal_jobs_refuse_every_move(journal):
    for n, end in enumerate(sorted(TERMINAL), start=1):
        job = see(journal, n)
        drive(journal, job, path_to(end)[1:])
        for b in JobState:
            if b is not end:
                with pytest.raises(IllegalTransition, match="terminal"):
                    journal.transition(job, b, reason="late", **ENTRY_FIELDS.get(b, {}))
        assert journal.get(job).state is end


def test_record_seen_is_idempotent(journal):
    job = see(journal, 1)
    journal.transition(job, S.VALIDATED, reason="ok")
    again = journal.record_seen(jid(1), requester=REQUESTER, provider=PROVIDER, workload="other", payment=1, bond=1,
                                expiry=1, offer_json="{}", source="direct")
    assert again is False
    rec = journal.get(job)
    assert rec.state is S.VALIDATED and rec.workload == "matmul-int8/v1" and rec.source is JobSource.CHAIN
    assert [h.to_state for h in journal.history(job)] == [S.SEEN, S.VALIDATED]


def test_seen_record_round_trips(journal):
    big = 2**256 - 1
    key = bytes(range(32))
    assert journal.record_seen(key, requester=REQUESTER, provider="0x" + "11" * 20, workload=b"\x01" * 32,
                               payment=big, bond=0, expiry=123, offer_json={"a": 1}, source=JobSource.DIRECT)
    rec = journal.get("0x" + key.hex().upper())
    assert rec.job_id == "0x" + key.hex() == job_key(key)
    assert rec.payment == big and rec.bond == 0 and isinstance(rec.payment, int)
    assert rec.requester == REQUESTER.lower() and rec.workload == "0x" + "01" * 32
    assert json.loads(rec.offer_json) == {"a": 1} and rec.source is JobSource.DIRECT
    assert rec.deadline is None and rec.result_root is None and rec.reason == "direct offer received"
    assert journal.history(key)[0].reason == "direct offer received"


def test_same_state_is_a_no_op(journal, clock):
    job = see(journal, 1)
    drive(journal, job, [S.VALIDATED, S.CLAIMED])
    rec = journal.get(job)
    rows = journal.history(job)
    again = journal.transition(job, S.CLAIMED, reason="retry", deadline=DEADLINE)
    assert again == rec and journal.get(job) == rec
    assert journal.history(job) == rows
    with pytest.raises(ValueError, match="different deadline"):
        journal.transition(job, S.CLAIMED, reason="retry", deadline=DEADLINE + 1)
    assert journal.get(job) == rec


def test_compare_and_set(journal):
    job = see(journal, 1)
    journal.transition(job, S.VALIDATED, reason="ok", expect=S.SEEN)
    with pytest.raises(StaleState) as err:
        journal.transition(job, S.CLAIMED, reason="claim", expect=S.SEEN, deadline=DEADLINE)
    assert (err.value.expected, err.value.actual) == (S.SEEN, S.VALIDATED)
    assert journal.get(job).state is S.VALIDATED
    journal.transition(job, S.CLAIMED, reason="claim", expect="validated", deadline=DEADLINE)
    with pytest.raises(StaleState):  # compare-and-set is strict: a second racer loses even though it is there
        journal.transition(job, S.CLAIMED, reason="claim", expect=S.VALIDATED, deadline=DEADLINE)
    assert len(journal.history(job)) == 3


def test_history_has_time_reason_and_order(journal, clock):
    job = see(journal, 1, reason="OfferPosted in block 7")
    journal.transition(job, S.VALIDATED, reason="policy ok")
    journal.transition(job, S.CLAIMED, reason="claim confirmed", code="claim_ok", deadline=DEADLINE,
                       device="cuda:0")
    journal.transition(job, S.FAILED, reason="device lost", code="device_lost")
    history = journal.history(job)
    assert [h.reason for h in history] == ["OfferPosted in block 7", "policy ok", "claim confirmed", "device lost"]
    assert [h.code for h in history] == [None, None, "claim_ok", "device_lost"]
    assert all(h.at > 1_700_000_000 for h in history)
    assert [h.at for h in history] == sorted(h.at for h in history) and len({h.at for h in history}) == 4
    assert [h.id for h in history] == sorted(h.id for h in history)
    rec = journal.get(job)
    assert (rec.reason, rec.code, rec.device, rec.updated) == ("device lost", "device_lost", "cuda:0", history[-1].at)
    assert rec.created == history[0].at


def test_moves_need_a_reason_and_the_right_fields(journal):
    job = see(journal, 1)
    with pytest.raises(ValueError, match="reason"):
        journal.transition(job, S.VALIDATED, reason="  ")
    journal.transition(job, S.VALIDATED, reason="ok")
    with pytest.raises(ValueError, match="needs deadline"):
        journal.transition(job, S.CLAIMED, reason="claim")
    with pytest.raises(ValueError, match="cannot set state"):
        journal.transition(job, S.CLAIMED, reason="claim", deadline=DEADLINE, state="paid")
    with pytest.raises(ValueError, match="deadline"):
        journal.transition(job, S.CLAIMED, reason="claim", deadline=-1)
    with pytest.raises(ValueError, match="code"):
        journal.transition(job, S.CLAIMED, reason="claim", deadline=DEADLINE, code="has space")
    journal.transition(job, S.CLAIMED, reason="claim", deadline=DEADLINE)
    drive(journal, job, [S.FETCHING, S.RUNNING])
    with pytest.raises(ValueError, match="needs result_root"):
        journal.transition(job, S.COMMITTED, reason="done")
    with pytest.raises(ValueError, match="result_root"):
        journal.transition(job, S.COMMITTED, reason="done", result_root="0x12")
    assert journal.get(job).state is S.RUNNING and len(journal.history(job)) == 5
    with pytest.raises(UnknownJob):
        journal.transition(jid(99), S.VALIDATED, reason="ok")
    with pytest.raises(ValueError):
        journal.transition(job, "bogus", reason="ok")


@pytest.mark.parametrize("bad", [
    {"job_id": "0x1234"}, {"job_id": "ab" * 32}, {"job_id": b"\x00" * 31}, {"source": "carrier-pigeon"},
    {"requester": "0x1234"}, {"provider": None}, {"payment": -1}, {"bond": 2**256}, {"payment": True},
    {"expiry": 1.5}, {"offer_json": "not json"}, {"offer_json": "[1, 2]"}, {"workload": ""},
])
def test_record_seen_validates_its_input(journal, bad):
    args = dict(job_id=jid(1), requester=REQUESTER, provider=PROVIDER, workload="w", payment=1, bond=1, expiry=1,
                offer_json="{}", source="chain")
    args.update(bad)
    with pytest.raises(ValueError):
        journal.record_seen(args.pop("job_id"), **args)
    assert journal.jobs() == []


def test_reopening_the_file_resumes_the_same_jobs(tmp_path, clock):
    path = tmp_path / "node.sqlite"
    first = Journal(path, clock=clock)
    for n, end in enumerate([S.SEEN, S.VALIDATED, S.RUNNING, S.PAID, S.SUBMITTED, S.REJECTED, S.FAILED], 1):
        drive(first, see(first, n), path_to(end)[1:])
    open_before = first.open_jobs()
    histories = {r.job_id: first.history(r.job_id) for r in first.jobs()}
    counts = first.by_state()
    first.close()

    second = Journal(path, clock=clock)
    try:
        assert second.open_jobs() == open_before
        assert [r.state for r in open_before] == [S.SEEN, S.VALIDATED, S.RUNNING, S.SUBMITTED, S.FAILED]
        assert {r.job_id: second.history(r.job_id) for r in second.jobs()} == histories
        assert second.by_state() == counts
        second.transition(jid(3), S.COMMITTED, reason="resumed", result_root=ROOT)
        assert second.history(jid(3))[-1].from_state is S.RUNNING
    finally:
        second.close()


_KILLED_WRITER = """
import os, sys
from node.jobs.journal import Journal
j = Journal(sys.argv[1])
job = "0x" + "42" * 32
j.record_seen(job, requester="0x" + "ab" * 20, provider="0x" + "00" * 20, workload="w", payment=7, bond=1,
              expiry=10, offer_json="{}", source="chain")
j.transition(job, "validated", reason="policy ok")
j.transition(job, "claimed", reason="claim confirmed", deadline=1234)
print("committed", flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_move_survives_sigkill_right_after_it_committed(tmp_path):
    path = tmp_path / "node.sqlite"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, capture_output=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "committed"
    journal = Journal(path)
    try:
        rec = journal.get("0x" + "42" * 32)
        assert rec is not None and rec.state is S.CLAIMED and rec.deadline == 1234 and rec.payment == 7
        assert [h.to_state for h in journal.history(rec.job_id)] == [S.SEEN, S.VALIDATED, S.CLAIMED]
        assert journal.overdue(now=1235) == [rec]
    finally:
        journal.close()


def test_overdue_lists_claims_past_their_deadline(journal):
    late = see(journal, 1)
    drive(journal, late, [S.VALIDATED])
    journal.transition(late, S.CLAIMED, reason="claim", deadline=100)
    running = see(journal, 2)
    drive(journal, running, [S.VALIDATED])
    journal.transition(running, S.CLAIMED, reason="claim", deadline=200)
    drive(journal, running, [S.FETCHING, S.RUNNING])
    on_time = see(journal, 3)
    drive(journal, on_time, [S.VALIDATED])
    journal.transition(on_time, S.CLAIMED, reason="claim", deadline=1000)
    submitted = see(journal, 4)
    drive(journal, submitted, [S.VALIDATED])
    journal.transition(submitted, S.CLAIMED, reason="claim", deadline=50)
    drive(journal, submitted, [S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED])  # done: not overdue
    see(journal, 5)  # not claimed: no deadline of ours

    assert journal.overdue(now=100) == []  # a submit at the deadline second still lands
    assert [r.job_id for r in journal.overdue(now=101)] == [late]
    assert [r.job_id for r in journal.overdue(now=500)] == [late, running]
    assert [r.job_id for r in journal.overdue(now=500, margin=600)] == [late, running, on_time]
    journal.transition(late, S.EXPIRED, reason="deadline passed")
    assert [r.job_id for r in journal.overdue(now=500)] == [running]


def test_listing_and_counts(journal):
    for n in range(1, 6):
        see(journal, n)
    drive(journal, jid(2), [S.VALIDATED])
    drive(journal, jid(4), [S.REJECTED])
    assert [r.job_id for r in journal.jobs()] == [jid(n) for n in (5, 4, 3, 2, 1)]
    assert [r.job_id for r in journal.jobs(limit=2)] == [jid(5), jid(4)]
    assert [r.job_id for r in journal.jobs(state="seen")] == [jid(5), jid(3), jid(1)]
    counts = journal.by_state()
    assert set(counts) == {s.value for s in JobState}
    assert (counts["seen"], counts["validated"], counts["rejected"], counts["paid"]) == (3, 1, 1, 0)
    assert [r.job_id for r in journal.open_jobs()] == [jid(1), jid(2), jid(3), jid(5)]


def run_threads(fn, n: int) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_racing_claimers_only_one_wins(tmp_path):
    path = tmp_path / "node.sqlite"
    journals = [Journal(path), Journal(path)]  # two connections: SQLite's own locking is exercised too
    job = see(journals[0], 1)
    journals[0].transition(job, S.VALIDATED, reason="ok")
    wins, stale, barrier = [], [], threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        try:
            journals[i % 2].transition(job, S.CLAIMED, reason=f"claimer {i}", expect=S.VALIDATED, deadline=DEADLINE)
            wins.append(i)
        except StaleState:
            stale.append(i)

    run_threads(claim, 8)
    try:
        assert len(wins) == 1 and len(stale) == 7
        history = journals[1].history(job)
        assert [h.to_state for h in history] == [S.SEEN, S.VALIDATED, S.CLAIMED]
        assert history[-1].reason == f"claimer {wins[0]}"
    finally:
        for j in journals:
            j.close()


def test_concurrent_random_moves_never_corrupt_a_job(tmp_path):
    path = tmp_path / "node.sqlite"
    journals = [Journal(path), Journal(path)]
    jobs = [see(journals[0], n) for n in range(1, 5)]
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(60):
                job, to = rng.choice(jobs), rng.choice(list(JobState))
                try:
                    journals[i % 2].transition(job, to, reason=f"thread {i}", **ENTRY_FIELDS.get(to, {}))
                except IllegalTransition:
                    pass
        except BaseException as exc:  # anything else (a lock error, a broken row) fails the test
            errors.append(exc)

    run_threads(churn, 6)
    try:
        assert errors == []
        for job in jobs:
            history = journals[0].history(job)
            assert history[0].to_state is S.SEEN
            assert assert_chain(history) is journals[1].get(job).state
            assert len(history) == len({h.id for h in history})
        assert sum(len(journals[0].history(j)) for j in jobs) > len(jobs)  # some moves did happen
    finally:
        for j in journals:
            j.close()
