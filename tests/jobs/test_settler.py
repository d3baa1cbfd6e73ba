"""The settler against the conftest anvil with a real, running TxManager and a real Journal: due jobs finalized
in one batch, the rest left alone, earnings withdrawn to the payout address, nothing sent twice, failed claims
expired, the chain's word recorded when someone else acted first, and one bad job never stopping the pass."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
from eth_account import Account
from eth_utils import keccak
from web3.logs import DISCARD

from node.chain.contracts import calldata
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity
from node.chain.rpc import RpcClient
from node.chain.txmanager import TxManager
from node.chain.txstore import TxStore
from node.jobs.chainstate import ChainJobState
from node.jobs.journal import Journal
from node.jobs.settler import Settler, batch_key
from node.jobs.state import JobState
from node.metrics import Metrics
from tests.chain.txkit import manual_mining, nonce, raw, tx_env, until
from tests.conftest import FEE_BPS, TOKEN, WINDOW, Chain
from tests.jobs.test_chainstate import drive

S = JobState
PAY = 4 * TOKEN
BOND = TOKEN
NET = PAY - PAY * FEE_BPS // 10_000
_nonces = itertools.count(1000)


@dataclass
class Scene:
    """One registered, staked provider (operator key 2, a fresh payout address) and a requester (key 1)."""

    chain: Chain
    operator_key: str
    payout: str
    requester_key: str
    roots: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, chain: Chain) -> Scene:
        scene = cls(chain, chain.keys[2], Account.create().address, chain.keys[1])
        cap = Capacity("test-gpu", 1, 81920, 1000, 2000, keccak(text="bench"))
        chain.proto.register(scene.operator_key, scene.payout, cap, 1, "https://node.example")
        chain.proto.stake(scene.operator_key, 50 * BOND)
        chain.proto.approve(scene.requester_key, chain.deployment.market, 1000 * PAY)
        return scene

    @property
    def operator(self) -> str:
        return Account.from_key(self.operator_key).address

    def now(self) -> int:
        return self.chain.w3.eth.get_block("latest")["timestamp"]

    def post(self, max_duration: int = 600) -> str:
        offer = JobOffer(requester=Account.from_key(self.requester_key).address, provider=ZERO_ADDRESS,
                         workload=workload_id("matmul-int8/v1"), paramsHash=keccak(b"p"), inputHash=keccak(b"i"),
                         inputURI="https://x.example/in", payment=PAY, providerBond=BOND, maxDuration=max_duration,
                         expiry=self.now() + 7 * 24 * 3600, nonce=next(_nonces))
        self.chain.proto.post(self.requester_key, offer, b"p", self.chain.proto.sign(self.requester_key, offer))
        return "0x" + self.chain.proto.job_id(offer).hex()

    def claimed(self, journal: Journal, state: JobState = S.CLAIMED, max_duration: int = 600) -> str:
        """Posted and claimed on chain; recorded in the journal up to ``state`` (claimed, ... failed)."""
        job_id = self.post(max_duration)
        self.chain.proto.claim(self.operator_key, bytes.fromhex(job_id[2:]))
        drive(journal, job_id, state, deadline=self.job(job_id)["due"], root=self.root(job_id),
              payment=PAY, bond=BOND)
        return job_id

    def submitted(self, journal: Journal) -> str:
        """Posted, claimed and submitted on chain; submitted in the journal. The window starts now."""
        job_id = self.post()
        raw = bytes.fromhex(job_id[2:])
        self.chain.proto.claim(self.operator_key, raw)
        deadline = self.job(job_id)["due"]
        self.chain.proto.submit(self.operator_key, raw, bytes.fromhex(self.root(job_id)[2:]), 4096, "https://r/x")
        drive(journal, job_id, S.SUBMITTED, deadline=deadline, root=self.root(job_id), payment=PAY, bond=BOND)
        return job_id

    def root(self, job_id: str) -> str:
        return self.roots.setdefault(job_id, "0x" + keccak(text=f"result of {job_id}").hex())

    def job(self, job_id: str) -> dict:
        return self.chain.proto.job(bytes.fromhex(job_id[2:]))

    def send(self, key: str, fn: str, *args) -> None:
        self.chain.proto.send(key, getattr(self.chain.proto.market.functions, fn)(*args))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def scene(chain: Chain) -> Scene:
    return Scene.create(chain)


def settler_for(env, scene: Scene, journal: Journal, metrics: Metrics, *, threshold: int = 1, batch: int = 50):
    return Settler(journal, env.txm, env.rpc, scene.chain.deployment.market, scene.payout,
                   withdraw_threshold=threshold, metrics=metrics, batch=batch, tx_timeout=60)


async def chain_time(env) -> int:
    return (await env.rpc.head()).timestamp


def history_len(journal: Journal, ids) -> list[int]:
    return [len(journal.history(j)) for j in ids]


async def test_due_jobs_finalized_in_one_batch_then_withdrawn(scene, journal, tmp_path):
    due = [scene.submitted(journal), scene.submitted(journal)]
    scene.chain.advance(WINDOW + 1)
    later = scene.submitted(journal)  # its window has just begun
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics)
        sent = await nonce(env.rpc, scene.operator)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 2  # one finalizeMany, one withdrawFor

        finalize = env.store.get(batch_key("finalize", due))
        receipt = scene.chain.w3.eth.get_transaction_receipt(finalize.tx_hash)
        events = scene.chain.proto.market.events.JobFinalized().process_receipt(receipt, errors=DISCARD)
        assert sorted("0x" + e["args"]["jobId"].hex() for e in events) == sorted(due)
        assert all(e["args"]["amount"] == NET and e["args"]["payout"] == scene.payout for e in events)
        for job_id in due:
            assert scene.job(job_id)["state"] == ChainJobState.FINALIZED
            assert journal.get(job_id).state is S.PAID
            assert [t.to_state for t in journal.history(job_id)][-2:] == [S.FINALIZED, S.PAID]
        assert journal.get(later).state is S.SUBMITTED
        assert scene.job(later)["state"] == ChainJobState.SUBMITTED

        assert scene.chain.proto.balance(scene.payout) == 2 * NET  # the credit reached the payout wallet
        assert scene.chain.proto.withdrawable(scene.payout) == 0
        assert sample(metrics, "gpunode_earnings_token_units_total") == 2 * NET
        assert sample(metrics, "gpunode_withdrawn_token_units_total") == 2 * NET
        assert sample(metrics, "gpunode_tx_attempts_total", step="finalize", outcome="confirmed") == 1
        assert sample(metrics, "gpunode_tx_attempts_total", step="withdraw", outcome="confirmed") == 1
        assert sample(metrics, "gpunode_gas_used_total", step="finalize") == receipt["gasUsed"]
        assert sample(metrics, "gpunode_gas_spent_wei_total", step="finalize") == (
            receipt["gasUsed"] * receipt["effectiveGasPrice"])

        # Again, nothing new is due: nothing is sent and the journal does not move.
        rows = history_len(journal, [*due, later])
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 2
        assert history_len(journal, [*due, later]) == rows
        assert settler.errors == 0

        # Once its window passes, the later job goes the same way.
        scene.chain.advance(WINDOW + 1)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 4
        assert journal.get(later).state is S.PAID
        assert scene.chain.proto.balance(scene.payout) == 3 * NET
        assert sample(metrics, "gpunode_earnings_token_units_total") == 3 * NET


async def test_batches_are_split_by_size(scene, journal, tmp_path):
    due = sorted(scene.submitted(journal) for _ in range(3))
    scene.chain.advance(WINDOW + 1)
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, Metrics(), threshold=10**30, batch=2)
        sent = await nonce(env.rpc, scene.operator)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 2  # two finalizeMany, no withdraw below threshold
        assert env.store.get(batch_key("finalize", due[:2])).state == "confirmed"
        assert env.store.get(batch_key("finalize", due[2:])).state == "confirmed"
        assert {journal.get(j).state for j in due} == {S.FINALIZED}
        assert scene.chain.proto.withdrawable(scene.payout) == 3 * NET


async def test_a_batch_still_in_flight_is_not_sent_again(scene, journal, tmp_path):
    """The pass stops waiting for an unmined finalizeMany; later passes neither resend its jobs nor block,
    and record them once it is mined."""
    due = [scene.submitted(journal), scene.submitted(journal)]
    scene.chain.advance(WINDOW + 1)
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = Settler(journal, env.txm, env.rpc, scene.chain.deployment.market, scene.payout,
                          withdraw_threshold=10**30, metrics=metrics, tx_timeout=0.5)
        now = await chain_time(env)
        async with manual_mining(env.rpc, interval=None):  # nothing is mined until the test says so
            await settler.settle_once(now)
            key = batch_key("finalize", due)
            assert env.store.get(key).state == "pending"
            assert sample(metrics, "gpunode_tx_attempts_total", step="finalize", outcome="timeout") == 1
            await settler.settle_once(now)  # still unmined: no new intent, no second wait
            assert sample(metrics, "gpunode_tx_attempts_total", step="finalize", outcome="timeout") == 1
            assert len(env.store.attempts(key)) == 1 and env.store.count_by_state() == {"pending": 1}
            await raw(env.rpc, "evm_mine", [])
            await until(lambda: _settled(env, key))
        await settler.settle_once(now)
        assert {journal.get(j).state for j in due} == {S.FINALIZED}
        assert sample(metrics, "gpunode_earnings_token_units_total") == 2 * NET
        assert sample(metrics, "gpunode_tx_attempts_total", step="finalize", outcome="confirmed") == 1
        assert sample(metrics, "gpunode_gas_used_total", step="finalize") > 0
        assert env.store.count_by_state() == {"confirmed": 1}  # one transaction in all


async def _settled(env, key: str) -> bool:
    return await env.txm.outcome(key) is not None


async def test_withdraw_waits_for_threshold_and_notices_a_withdraw_by_someone_else(scene, journal, tmp_path):
    job_id = scene.submitted(journal)
    scene.chain.advance(WINDOW + 1)
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics, threshold=2 * NET)
        sent = await nonce(env.rpc, scene.operator)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 1  # finalized, not withdrawn: below the threshold
        assert journal.get(job_id).state is S.FINALIZED
        assert scene.chain.proto.withdrawable(scene.payout) == NET

        # The operator ran `gpunode withdraw` (anyone may call withdrawFor): the credit is gone from the market.
        await asyncio.to_thread(scene.send, scene.requester_key, "withdrawFor", scene.payout)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 1
        assert journal.get(job_id).state is S.PAID
        assert "already withdrawn" in journal.get(job_id).reason
        assert sample(metrics, "gpunode_withdrawn_token_units_total") == 0  # not by us


async def test_a_finalization_undone_by_a_reorg_is_finalized_again_never_marked_paid(scene, journal, tmp_path):
    """The chaos run's case: a reorg removed the node's finalizeMany after the journal recorded the jobs
    finalized, and the re-sent transaction was mined before the window ended, so it finalized nothing. The
    market holds nothing for the payout address; that must not read as "already withdrawn"."""
    job_id = scene.submitted(journal)
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        first = batch_key("finalize", [job_id])
        outcome = await env.txm.send(first, scene.chain.deployment.market,
                                     calldata("JobMarket", "finalizeMany", [bytes.fromhex(job_id[2:])]), timeout=60)
        assert outcome.ok and scene.job(job_id)["state"] == ChainJobState.SUBMITTED  # mined, did nothing
        journal.transition(job_id, S.FINALIZED, reason="test: recorded before the reorg")
        settler = settler_for(env, scene, journal, metrics)

        await settler.settle_once(await chain_time(env))
        rec = journal.get(job_id)
        assert rec.state is S.SUBMITTED and "reorg" in rec.reason
        assert scene.chain.proto.balance(scene.payout) == 0

        scene.chain.advance(WINDOW + 1)
        await settler.settle_once(await chain_time(env))
        assert scene.job(job_id)["state"] == ChainJobState.FINALIZED
        assert env.store.get(f"{first}#2").state.value == "confirmed"  # a fresh key: the first one is spent
        assert journal.get(job_id).state is S.PAID
        assert scene.chain.proto.balance(scene.payout) == NET
        assert sample(metrics, "gpunode_earnings_token_units_total") == NET


async def test_a_finalization_reorganised_away_is_counted_once_in_the_earnings(scene, journal, tmp_path):
    """A real reorg (anvil_reorg) removes the block holding the node's finalizeMany after the journal recorded
    the job finalized and counted its earnings: the job goes back to submitted, is finalized again, and the
    earnings counter still holds one payment, not two."""
    job_id = scene.submitted(journal)
    scene.chain.advance(WINDOW + 1)
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics, threshold=100 * NET)  # no withdraw: keep it finalized
        await settler.settle_once(await chain_time(env))
        assert journal.get(job_id).state is S.FINALIZED
        assert sample(metrics, "gpunode_earnings_token_units_total") == NET

        reply = scene.chain.w3.provider.make_request("anvil_reorg", [1, []])  # the finalizeMany block is gone
        assert "error" not in reply, reply
        assert scene.job(job_id)["state"] == ChainJobState.SUBMITTED

        await settler.settle_once(await chain_time(env))  # reads the chain before any withdraw: back to submitted
        assert journal.get(job_id).state is S.SUBMITTED
        for _ in range(5):  # finalized again: the transaction manager's resend, or a fresh finalizeMany
            await settler.settle_once(await chain_time(env))
            if journal.get(job_id).state is S.FINALIZED:
                break
        assert journal.get(job_id).state is S.FINALIZED
        assert scene.job(job_id)["state"] == ChainJobState.FINALIZED
        assert sample(metrics, "gpunode_earnings_token_units_total") == NET


async def test_failed_claim_is_expired_after_its_deadline(scene, journal, tmp_path):
    job_id = scene.claimed(journal, S.FAILED, max_duration=600)
    stake_before = scene.chain.proto.registry.functions.getProvider(scene.operator).call()
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics)
        sent = await nonce(env.rpc, scene.operator)
        await settler.settle_once(await chain_time(env))  # the deadline has not passed: nothing to do yet
        assert await nonce(env.rpc, scene.operator) == sent
        assert journal.get(job_id).state is S.FAILED

        scene.chain.advance(601)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 1
        assert env.store.get(f"expire:{job_id}").state == "confirmed"
        assert scene.job(job_id)["state"] == ChainJobState.EXPIRED
        assert journal.get(job_id).state is S.EXPIRED
        assert sample(metrics, "gpunode_tx_attempts_total", step="expire", outcome="confirmed") == 1
        assert sample(metrics, "gpunode_gas_used_total", step="expire") > 0
        after = scene.chain.proto.registry.functions.getProvider(scene.operator).call()
        assert (after[0], after[1]) == (stake_before[0] - BOND, stake_before[1] - BOND)  # stake slashed, lock released

        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent + 1


async def test_failed_claim_expired_by_the_requester_is_recorded_without_a_transaction(scene, journal, tmp_path):
    job_id = scene.claimed(journal, S.FAILED, max_duration=600)
    scene.chain.advance(601)
    scene.send(scene.requester_key, "expire", bytes.fromhex(job_id[2:]))
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, Metrics())
        sent = await nonce(env.rpc, scene.operator)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent
        assert env.store.get(f"expire:{job_id}") is None
        assert journal.get(job_id).state is S.EXPIRED and journal.get(job_id).code == "chain_expired"


async def test_dispute_resolved_while_away_is_read_from_the_chain(scene, journal, tmp_path):
    """The node missed the dispute and the ruling (no watcher): the settler's backstop reads record
    disputed-then-finalized and count the earnings from the job's payment less the fee."""
    job_id = scene.submitted(journal)
    raw = bytes.fromhex(job_id[2:])
    scene.send(scene.requester_key, "dispute", raw)
    metrics = Metrics()
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, metrics, threshold=10**30)
        await settler.settle_once(await chain_time(env))
        assert journal.get(job_id).state is S.DISPUTED
        sent = await nonce(env.rpc, scene.operator)

        await asyncio.to_thread(scene.send, scene.chain.keys[0], "resolve", raw, True)  # the arbiter: deployer
        await settler.settle_once(await chain_time(env))
        assert journal.get(job_id).state is S.DISPUTED  # a disputed job is read again only every recheck_s

        await asyncio.to_thread(scene.chain.advance, settler.recheck_s)
        await settler.settle_once(await chain_time(env))
        assert await nonce(env.rpc, scene.operator) == sent  # nothing to send: the ruling paid us
        assert journal.get(job_id).state is S.FINALIZED
        assert sample(metrics, "gpunode_earnings_token_units_total") == NET


async def test_one_bad_job_does_not_stop_the_pass(scene, journal, tmp_path):
    good = scene.submitted(journal)
    ghost = "0x" + keccak(b"never posted").hex()
    drive(journal, ghost, S.SUBMITTED)  # the journal says submitted; the chain has never heard of it
    scene.chain.advance(WINDOW + 1)
    async with tx_env(scene.chain.anvil.url, tmp_path / "tx.db", signer=Account.from_key(scene.operator_key)) as env:
        settler = settler_for(env, scene, journal, Metrics())
        await settler.settle_once(await chain_time(env))
        assert journal.get(good).state is S.PAID
        assert journal.get(ghost).state is S.SUBMITTED  # nothing the chain implies; left for a human
        assert env.store.get(batch_key("finalize", [good])).state == "confirmed"


async def test_an_unreachable_chain_is_logged_not_raised(journal, tmp_path):
    drive(journal, "0x" + "22" * 32, S.SUBMITTED)
    drive(journal, "0x" + "33" * 32, S.FAILED, deadline=10)
    rpc = RpcClient(["http://127.0.0.1:9"], timeout=1, tries=1)
    store = TxStore(tmp_path / "tx.db")
    try:
        txm = TxManager(rpc, store, Account.create(), 31337, None)  # never started: nothing may be sent
        settler = Settler(journal, txm, rpc, "0x" + "44" * 20, Account.create().address, withdraw_threshold=1,
                          metrics=Metrics())
        await settler.settle_once(1_000)
        assert settler.errors == 2 and "no RPC endpoint answered" in settler.last_error
        assert journal.get("0x" + "22" * 32).state is S.SUBMITTED
    finally:
        await rpc.close()
        store.close()


def test_bad_settings_are_refused(journal, tmp_path):
    store = TxStore(tmp_path / "tx.db")
    txm = TxManager(RpcClient(["http://127.0.0.1:9"]), store, Account.create(), 31337, None)
    market, payout = "0x" + "44" * 20, Account.create().address
    try:
        with pytest.raises(ValueError, match="batch"):
            Settler(journal, txm, txm.rpc, market, payout, withdraw_threshold=1, metrics=Metrics(), batch=0)
        with pytest.raises(ValueError, match="withdraw_threshold"):
            Settler(journal, txm, txm.rpc, market, payout, withdraw_threshold=-1, metrics=Metrics())
    finally:
        store.close()


def test_batch_key_names_the_set_not_the_order():
    a, b = "0x" + "01" * 32, "0x" + "02" * 32
    assert batch_key("finalize", [a, b]) == batch_key("finalize", [b, a]) != batch_key("finalize", [a])
    assert batch_key("withdraw", [a]) == "withdraw:" + keccak(bytes.fromhex(a[2:]))[:8].hex()
