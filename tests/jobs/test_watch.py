"""The event watcher: each market event moves only the journal states it may, replays and late events do
nothing, payments are counted once; and the real EventFollower on the conftest anvil delivering a requester's
dispute and the arbiter's ruling, alongside the settler finalizing on its own."""

from __future__ import annotations

import logging

import pytest
from eth_account import Account

from node.chain.follower import ChainEvent, EventFollower
from node.chain.rpc import RpcClient
from node.jobs.state import JobState
from node.jobs.watch import Watcher
from node.metrics import Metrics
from tests.chain.txkit import tx_env
from tests.conftest import WINDOW
from tests.jobs.test_chainstate import DUE, ROOT, drive
from tests.jobs.test_settler import NET, Scene, chain_time, sample, settler_for

S = JobState
ME = Account.create().address
OTHER = Account.create().address
PAYOUT = Account.create().address
JID = "0x" + "5a" * 32
EARNINGS = "gpunode_earnings_token_units_total"
_blocks = iter(range(100, 10_000))


def event(name: str, contract: str = "market", removed: bool = False, **args) -> ChainEvent:
    block = next(_blocks)
    return ChainEvent(contract, name, {"jobId": bytes.fromhex(JID[2:]), **args}, block, block.to_bytes(32, "big"),
                      b"\x01" * 32, 0, removed)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def watcher(journal, metrics) -> Watcher:
    return Watcher(journal, ME, metrics, PAYOUT)


def finalized(amount: int = 7, payout: str = PAYOUT) -> ChainEvent:
    return event("JobFinalized", providerId=1, payout=payout, amount=amount, fee=1)


# (journal state before, event, journal state after)
TABLE = [
    (S.VALIDATED, lambda: event("JobClaimed", provider=ME, deadline=DUE + 5), S.CLAIMED),
    (S.VALIDATED, lambda: event("JobClaimed", provider=OTHER, deadline=DUE), S.EXPIRED),
    (S.SEEN, lambda: event("JobClaimed", provider=OTHER, deadline=DUE), S.EXPIRED),
    (S.SEEN, lambda: event("JobClaimed", provider=ME, deadline=DUE), S.SEEN),  # intake validates it first
    (S.RUNNING, lambda: event("JobClaimed", provider=ME, deadline=DUE), S.RUNNING),  # a replay of our claim
    (S.VALIDATED, lambda: event("OfferCancelled"), S.EXPIRED),
    (S.CLAIMED, lambda: event("OfferCancelled"), S.CLAIMED),
    (S.SEEN, lambda: event("JobExpired", refund=5, slashed=0), S.EXPIRED),
    (S.RUNNING, lambda: event("JobExpired", refund=5, slashed=1), S.EXPIRED),
    (S.FAILED, lambda: event("JobExpired", refund=5, slashed=1), S.EXPIRED),
    (S.SUBMITTED, lambda: event("JobExpired", refund=5, slashed=1), S.SUBMITTED),  # cannot be: ignored
    (S.COMMITTED, lambda: event("ResultSubmitted", provider=ME, resultRoot=bytes.fromhex(ROOT[2:]), resultSize=9,
                                resultURI="u", challengeWindowEnd=DUE + WINDOW), S.SUBMITTED),
    (S.COMMITTED, lambda: event("ResultSubmitted", provider=ME, resultRoot=b"\x01" * 32, resultSize=9,
                                resultURI="u", challengeWindowEnd=DUE + WINDOW), S.COMMITTED),  # not our root
    (S.COMMITTED, lambda: event("ResultSubmitted", provider=OTHER, resultRoot=bytes.fromhex(ROOT[2:]),
                                resultSize=9, resultURI="u", challengeWindowEnd=DUE), S.COMMITTED),
    (S.SUBMITTED, finalized, S.FINALIZED),
    (S.DISPUTED, finalized, S.FINALIZED),
    (S.FINALIZED, finalized, S.FINALIZED),  # the settler recorded it first
    (S.SUBMITTED, lambda: event("JobDisputed", requester=OTHER, disputeBond=0), S.DISPUTED),
    (S.SUBMITTED, lambda: event("ChallengeOpened", verifier=OTHER), S.DISPUTED),
    (S.FINALIZED, lambda: event("JobDisputed", requester=OTHER, disputeBond=0), S.FINALIZED),  # late, ignored
    (S.DISPUTED, lambda: event("DisputeResolved", providerWasRight=True), S.DISPUTED),  # JobFinalized follows
    (S.DISPUTED, lambda: event("DisputeResolved", providerWasRight=False), S.SLASHED),
    (S.DISPUTED, lambda: event("ChallengeClosed", fraud=False, challenger=OTHER), S.SUBMITTED),
    (S.DISPUTED, lambda: event("ChallengeClosed", fraud=True, challenger=OTHER), S.SLASHED),
    (S.DISPUTED, lambda: event("ProviderSlashed", providerId=1, amount=3), S.SLASHED),
    (S.CLAIMED, lambda: event("ProviderSlashed", providerId=1, amount=3), S.CLAIMED),  # expire's: JobExpired follows
    (S.SUBMITTED, lambda: event("Staked", contract="registry", operator=ME, amount=1), S.SUBMITTED),
    (S.SUBMITTED, lambda: event("FeeSet", feeBps=1), S.SUBMITTED),
]


@pytest.mark.parametrize(("start", "make", "end"), TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(TABLE)])
def test_event_moves(journal, watcher, metrics, start, make, end):
    drive(journal, JID, start)
    ev = make()
    watcher.apply(ev)
    rec = journal.get(JID)
    assert rec.state is end
    if end is not start:
        assert rec.code == f"event:{ev.name}" and rec.reason
    rows = len(journal.history(JID))
    watcher.apply(ev)  # delivered again after a crash: nothing changes
    assert len(journal.history(JID)) == rows
    counted = ev.name == "JobFinalized" and start is not S.FINALIZED
    assert sample(metrics, EARNINGS) == (ev.args["amount"] if counted else 0)


def test_our_claim_records_the_deadline(journal, watcher):
    drive(journal, JID, S.VALIDATED)
    watcher.apply(event("JobClaimed", provider=ME.lower(), deadline=DUE + 42))
    assert journal.get(JID).deadline == DUE + 42


def test_a_dispute_is_logged_as_a_warning_with_the_job_id(journal, watcher, caplog):
    drive(journal, JID, S.SUBMITTED)
    with caplog.at_level(logging.WARNING, logger="node.jobs.watch"):
        watcher.apply(event("JobDisputed", requester=OTHER, disputeBond=5))
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert JID in warning.getMessage() and warning.job_id == JID


def test_removed_event_is_only_logged(journal, watcher, caplog):
    drive(journal, JID, S.SUBMITTED)
    with caplog.at_level(logging.WARNING, logger="node.jobs.watch"):
        watcher.apply(event("JobDisputed", removed=True, requester=OTHER, disputeBond=0))
    assert journal.get(JID).state is S.SUBMITTED
    assert "reorganised away" in caplog.text


def test_payment_to_another_address_is_counted_and_flagged(journal, watcher, metrics, caplog):
    drive(journal, JID, S.SUBMITTED)
    with caplog.at_level(logging.WARNING, logger="node.jobs.watch"):
        watcher.apply(finalized(amount=11, payout=OTHER))
    assert journal.get(JID).state is S.FINALIZED and sample(metrics, EARNINGS) == 11
    assert "not the configured payout address" in caplog.text


def test_unknown_jobs_and_malformed_events_are_ignored(journal, watcher, caplog):
    watcher.apply(event("JobDisputed", requester=OTHER, disputeBond=0))  # not in the journal
    drive(journal, JID, S.SUBMITTED)
    bad = ChainEvent("market", "JobDisputed", {"jobId": b"short"}, 1, b"\x00" * 32, b"\x00" * 32, 0)
    watcher.apply(bad)
    watcher.apply(event("JobFinalized", payout=PAYOUT))  # no amount
    assert journal.get(JID).state is S.SUBMITTED and watcher.applied == 0


async def test_handle_applies_a_batch_in_order(journal, watcher):
    drive(journal, JID, S.SUBMITTED)
    await watcher.handle([event("ChallengeOpened", verifier=OTHER), event("ChallengeClosed", fraud=False,
                                                                           challenger=OTHER), finalized(9)])
    assert [t.to_state for t in journal.history(JID)][-3:] == [S.DISPUTED, S.SUBMITTED, S.FINALIZED]


# -- the real follower on the conftest chain ---------------------------------------------------------------


async def test_dispute_and_ruling_reach_the_journal_through_the_follower(chain, journal, tmp_path, caplog):
    scene = Scene.create(chain)
    job_id = scene.submitted(journal)
    start = chain.w3.eth.block_number + 1
    metrics = Metrics()
    watcher = Watcher(journal, scene.operator, metrics, scene.payout)
    raw = bytes.fromhex(job_id[2:])
    async with RpcClient([chain.anvil.url], timeout=5, poll_interval=0.05) as rpc:
        follower = EventFollower(rpc, tmp_path / "events.db", {"market": chain.deployment.market,
                                 "registry": chain.deployment.registry}, watcher.handle, start_block=start,
                                 reorg_depth=2)
        try:
            scene.send(scene.requester_key, "dispute", raw)
            with caplog.at_level(logging.WARNING, logger="node.jobs.watch"):
                assert await follower.sync() >= 1
            assert journal.get(job_id).state is S.DISPUTED
            assert any(job_id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

            scene.send(chain.keys[0], "resolve", raw, True)  # the arbiter (the deployer) rules for us
            await follower.sync()
            assert journal.get(job_id).state is S.FINALIZED
            assert sample(metrics, EARNINGS) == NET
        finally:
            follower.close()

        # A fresh follower replays everything from the start: the journal and the earnings stay as they are.
        rows = len(journal.history(job_id))
        replay = EventFollower(rpc, tmp_path / "replay.db", {"market": chain.deployment.market}, watcher.handle,
                               start_block=start, reorg_depth=2)
        try:
            await replay.sync()
        finally:
            replay.close()
        assert len(journal.history(job_id)) == rows and sample(metrics, EARNINGS) == NET


async def test_settler_and_watcher_count_a_payment_once(chain, journal, tmp_path):
    scene = Scene.create(chain)
    job_id = scene.submitted(journal)
    chain.advance(WINDOW + 1)
    start = chain.w3.eth.block_number + 1
    metrics = Metrics()
    watcher = Watcher(journal, scene.operator, metrics, scene.payout)
    async with tx_env(chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics, threshold=10**30)
        await settler.settle_once(await chain_time(env))
        assert journal.get(job_id).state is S.FINALIZED
        follower = EventFollower(env.rpc, tmp_path / "events.db", {"market": chain.deployment.market},
                                 watcher.handle, start_block=start, reorg_depth=2)
        try:
            assert await follower.sync() >= 1  # delivers the JobFinalized of the settler's own batch
        finally:
            follower.close()
    assert sample(metrics, EARNINGS) == NET and watcher.applied == 0
