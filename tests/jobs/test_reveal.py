"""The node's automatic answer to reveal demands, on the conftest anvil with the real verifier, a real
TxManager, Journal and EventFollower: a demand on our honest result is answered within its window and the
challenger's bond comes to us; a redelivered event sends nothing; a second demand on the same chunk is
answered under its own key; a demand whose event was never seen is answered from the chain on restart;
and a result we no longer hold is reported, not "answered", and ends in a timeout slash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from eth_account import Account
from web3.logs import DISCARD

from node.chain import fraud
from node.chain.follower import ChainEvent, EventFollower
from node.chain.fraud import EMPTY_INPUTS, MatmulParams
from node.jobs.journal import JobSource, Journal
from node.jobs.reveal import Demand, Revealer, read_demand
from node.jobs.state import JobState
from node.jobs.watch import Watcher
from node.metrics import Metrics
from tests.chain import fraudkit as kit
from tests.chain.txkit import tx_env
from tests.conftest import Chain

S = JobState
P = MatmulParams(30, 40, 50, seed=11, audit=fraud.audit_commitment(b"\x07" * 32))
ROW, COL = 21, 33  # byte 4 * (21 * 50 + 33) = 4332: chunk 1 of 2
CHUNK = 1
SUBMITTED, SLASHED = 3, 9
ZERO = "0x" + "00" * 20


class Node:
    """The node's pieces that take part: journal, tx manager, watcher, revealer, and a follower of the market
    and the verifier dispatching like NodeService._on_events."""

    def __init__(self, chain: Chain, journal: Journal, env, operator: str, tmp_path: Path) -> None:
        self.chain, self.journal, self.env = chain, journal, env
        self.metrics = Metrics()
        v = kit.verifier(chain)
        self.revealer = Revealer(journal, env.txm, env.rpc, v.address, operator, self.metrics,
                                 chain_time=self.now, recheck_s=3600)
        self.watcher = Watcher(journal, operator, self.metrics, None)
        self.follower = EventFollower(env.rpc, tmp_path / "events.db",
                                      {"market": chain.deployment.market, "verifier": v.address}, self.on_events,
                                      start_block=chain.w3.eth.block_number + 1, reorg_depth=2)
        self.events: list[ChainEvent] = []

    def now(self) -> int:
        return self.chain.w3.eth.get_block("latest")["timestamp"]

    async def on_events(self, events: list[ChainEvent]) -> None:
        for ev in events:
            self.events.append(ev)
            if ev.contract == "verifier":
                await self.revealer.on_event(ev)
            else:
                self.watcher.apply(ev)


def record(journal: Journal, job: kit.MatmulJob, path: Path, root: bytes, state: JobState = S.SUBMITTED) -> None:
    """The job as the node's journal holds it after submitting (or, with DISPUTED, after the challenge)."""
    o = job.offer
    journal.record_seen(job.job_id, requester=o.requester, provider=o.provider, workload=o.workload,
                        payment=o.payment, bond=o.providerBond, expiry=o.expiry, offer_json=job.signed.to_json(),
                        source=JobSource.CHAIN)
    deadline = int(job.chain.proto.job(job.raw_id)["due"]) if state is S.SUBMITTED else o.expiry
    steps = [S.VALIDATED, S.CLAIMED, S.FETCHING, S.RUNNING, S.COMMITTED, S.SUBMITTED]
    for step in steps + ([S.DISPUTED] if state is S.DISPUTED else []):
        fields = ({"deadline": deadline} if step is S.CLAIMED else
                  {"result_root": "0x" + root.hex(), "result_path": str(path)} if step is S.COMMITTED else {})
        journal.transition(job.job_id, step, reason=f"test: {step}", **fields)


def setup_job(chain: Chain, tmp_path: Path, *, honest: bool = True) -> tuple[kit.MatmulJob, str, Path, bytes]:
    """A posted, claimed and submitted job of operator key 2 (payout returned); the file on disk is the
    honest result, the committed root is the honest one or (dishonest) that of a one-element cheat."""
    operator, requester = chain.keys[2], chain.keys[1]
    payout = kit.provider(chain, operator)
    job = kit.post(chain, P, requester, operator)
    job.claim()
    c = kit.product(P)
    path = tmp_path / "result.out"
    committed = kit.result_bytes(c) if honest else kit.result_bytes(c, flip=(ROW, COL))
    root = job.submit(committed)
    path.write_bytes(kit.result_bytes(c))
    return job, payout, path, root


def demand(chain: Chain, job: kit.MatmulJob, key: str | None = None) -> None:
    key = key or chain.keys[3]
    v = kit.verifier(chain)
    chain.proto.approve(key, v.address, v.functions.challengeBond().call())
    kit.send_raw(chain, key, v.address, fraud.demand_calldata(job.offer, P, ROW, COL, EMPTY_INPUTS))


def notes(journal: Journal, job_id: str) -> list[str]:
    return [t.code for t in journal.history(job_id) if t.from_state is t.to_state]


def count(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("gpunode_reveals_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def operator(chain: Chain) -> Account:
    return Account.from_key(chain.keys[2])


async def test_demand_answered_from_the_event(chain, journal, tmp_path, operator):
    job, payout, path, root = setup_job(chain, tmp_path)
    record(journal, job, path, root)
    v = kit.verifier(chain)
    bond = v.functions.challengeBond().call()
    async with tx_env(chain.anvil.url, tmp_path / "tx.db", signer=operator) as env:
        node = Node(chain, journal, env, operator.address, tmp_path)
        await node.follower.sync()
        before = chain.proto.balance(payout)
        demand(chain, job)
        assert (await read_demand(env.rpc, v.address, job.job_id)).open
        await node.follower.sync()  # ChallengeOpened -> disputed; RevealDemanded -> reveal sent
        key = f"reveal:{job.job_id}:{CHUNK}"
        outcome = await env.txm.wait(key, timeout=30)
        assert outcome.ok, outcome.reason
        receipt = chain.w3.eth.get_transaction_receipt(outcome.tx_hash)
        (revealed,) = v.events.ChunkRevealed().process_receipt(receipt, errors=DISCARD)
        assert revealed["args"]["fraud"] is False and revealed["args"]["chunkIndex"] == CHUNK
        assert revealed["args"]["chunk"] == path.read_bytes()[CHUNK * 4096:]
        assert not (await read_demand(env.rpc, v.address, job.job_id)).open
        assert job.state() == SUBMITTED
        assert chain.proto.balance(payout) == before + bond  # the challenger's bond is ours

        await node.follower.sync()  # ChunkRevealed and ChallengeClosed reach the journal
        assert journal.get(job.job_id).state is S.SUBMITTED
        assert notes(journal, job.job_id) == ["reveal_demanded", "reveal_sent", "chunk_revealed"]
        assert count(node.metrics, "sent") == 1

        # The same event again (a redelivery after a crash) sends nothing and notes nothing new.
        demanded = next(e for e in node.events if e.name == "RevealDemanded")
        await node.revealer.on_event(demanded)
        assert count(node.metrics, "sent") == 1
        assert len(notes(journal, job.job_id)) == 3

        # A second demand on the same chunk is a new demand: answered under its own key.
        demand(chain, job)
        await node.follower.sync()
        second = await env.txm.wait(f"{key}:2", timeout=30)
        assert second.ok, second.reason
        assert job.state() == SUBMITTED
        await node.revealer.reconcile()  # collects the settled reveals into the gas metrics
        assert node.metrics.registry.get_sample_value("gpunode_tx_attempts_total",
                                                      {"step": "reveal", "outcome": "confirmed"}) == 2
        assert node.revealer.errors == 0


async def test_demand_missed_while_down_is_answered_on_restart(chain, journal, tmp_path, operator):
    job, payout, path, root = setup_job(chain, tmp_path)
    demand(chain, job)  # the node is down: nobody hears the event
    record(journal, job, path, root, S.DISPUTED)  # what the settler's chain read records on restart
    async with tx_env(chain.anvil.url, tmp_path / "tx.db", signer=operator) as env:
        node = Node(chain, journal, env, operator.address, tmp_path)
        assert await node.revealer.reconcile() == 1
        outcome = await env.txm.wait(f"reveal:{job.job_id}:{CHUNK}", timeout=30)
        assert outcome.ok, outcome.reason
        assert job.state() == SUBMITTED
        assert await node.revealer.reconcile() == 0  # nothing open any more


async def test_unprovable_result_is_reported_and_times_out(chain, journal, tmp_path, operator):
    """A node whose stored file is not what it committed (here: a one-element cheat was committed) cannot
    reveal; it says so instead of sending a reveal that could only revert, and the timeout slashes it."""
    job, payout, path, root = setup_job(chain, tmp_path, honest=False)
    record(journal, job, path, root)
    v = kit.verifier(chain)
    async with tx_env(chain.anvil.url, tmp_path / "tx.db", signer=operator) as env:
        node = Node(chain, journal, env, operator.address, tmp_path)
        await node.follower.sync()
        demand(chain, job)
        await node.follower.sync()
        assert count(node.metrics, "no_result") == 1
        assert env.store.get(f"reveal:{job.job_id}:{CHUNK}") is None
        assert "reveal_impossible" in notes(journal, job.job_id)

        d: Demand = await read_demand(env.rpc, v.address, job.job_id)
        chain.advance(d.deadline - node.now() + 1)
        assert await node.revealer.answer(job.job_id) == "too_late"
        kit.send_raw(chain, chain.keys[4], v.address, fraud.reveal_timeout_calldata(job.offer))
        assert job.state() == SLASHED
        await node.follower.sync()
        assert journal.get(job.job_id).state is S.SLASHED
        assert "reveal_timed_out" in notes(journal, job.job_id)


# -- without a chain ------------------------------------------------------------------------------------


def test_journal_note_is_a_history_row_written_once(journal):
    job_id = "0x" + "42" * 32
    journal.record_seen(job_id, requester="0x" + "cc" * 20, provider="0x" + "00" * 20, workload="matmul-int8/v1",
                        payment=1, bond=1, expiry=10, offer_json="{}", source=JobSource.CHAIN)
    assert journal.note(job_id, reason="reveal of chunk 1 demanded", code="reveal_demanded") is True
    assert journal.note(job_id, reason="reveal of chunk 1 demanded", code="reveal_demanded") is False
    assert journal.note(job_id, reason="reveal of chunk 2 demanded", code="reveal_demanded") is True
    rows = journal.history(job_id)
    assert [(t.from_state, t.to_state, t.code) for t in rows[1:]] == [(S.SEEN, S.SEEN, "reveal_demanded")] * 2
    assert journal.get(job_id).state is S.SEEN and journal.get(job_id).reason != rows[-1].reason  # not a move


async def test_verifier_admin_events_are_ignored_without_an_error(journal, caplog):
    """Found by the chaos run: the events the verifier emits at deployment (and on every setting change) name
    no job; each used to log a KeyError traceback and count a revealer error on every start."""
    revealer = Revealer(journal, None, None, "0x" + "11" * 20, "0x" + "22" * 20, None, chain_time=lambda: 0)
    for name, args in (("OwnershipTransferred", {"previousOwner": ZERO, "newOwner": "0x" + "33" * 20}),
                       ("ChallengeBondSet", {"bond": 10}), ("RevealWindowSet", {"window": 600})):
        await revealer.on_event(ChainEvent("verifier", name, args, 5, b"\x01" * 32, b"\x02" * 32, 0))
    assert revealer.errors == 0 and revealer.last_error is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_demand_from_the_getter_in_either_shape():
    fields = ("0x" + "ab" * 20, 99, 1, 2, -5, 10)
    for value in (fields, [fields], list(fields)):
        d = Demand.from_call(value)
        assert d.open and (d.deadline, d.i, d.j, d.expected, d.bond) == (99, 1, 2, -5, 10)
    assert not Demand.from_call(("0x" + "00" * 20, 0, 0, 0, 0, 0)).open
