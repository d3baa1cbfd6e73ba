"""The transaction manager against a real anvil: concurrency, idempotency, simulation, fee bumps, dropped
transactions, reorgs. Crash tests live in test_txmanager_crash.py."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from eth_account import Account
from web3 import Web3

from node.chain.contracts import forge_artifact
from node.chain.devnet import Anvil
from node.chain.fees import GWEI
from node.chain.txmanager import IdempotencyConflict
from node.chain.txstore import TxState
from tests.chain.txkit import balance, manual_mining, nonce, raw, tx_env, until


@pytest.fixture(scope="module")
def own_anvil():
    """A chain of our own: these tests switch automine off, spike base fees and reorganise blocks."""
    with Anvil(accounts=1) as node:
        yield node


def _rpc(url: str, method: str, params: list) -> object:
    """Plain JSON-RPC with a timeout, so a stuck chain fails the fixture instead of hanging the run."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return json.loads(reply.read())["result"]


@pytest.fixture
def url(own_anvil):
    snap = _rpc(own_anvil.url, "evm_snapshot", [])
    yield own_anvil.url
    _rpc(own_anvil.url, "evm_setAutomine", [True])
    assert _rpc(own_anvil.url, "evm_revert", [snap]) is True


async def test_fifty_concurrent_sends_one_nonce_each(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite") as env:
        to = Account.create().address
        keys = [f"pay:{i}" for i in range(50)]
        # Each key is asked for twice, at the same moment: one transaction per key all the same.
        calls = [env.txm.send(k, to, value=i + 1, timeout=240) for i, k in enumerate(keys)]
        calls += [env.txm.send(k, to, value=i + 1, timeout=240) for i, k in enumerate(keys[:10])]
        async with manual_mining(env.rpc, interval=0.2):  # many sends per block: the chain's count lags
            outcomes = await asyncio.gather(*calls)
        assert all(o.state is TxState.CONFIRMED for o in outcomes), {o.state for o in outcomes}
        by_key = {}
        for o in outcomes:
            assert by_key.setdefault(o.key, o.tx_hash) == o.tx_hash  # asking twice gave the same transaction
        assert sorted(o.nonce for o in outcomes[:50]) == list(range(50))  # contiguous, none reused
        assert await nonce(env.rpc, env.signer.address) == 50
        assert await balance(env.rpc, to) == sum(range(1, 51))  # every effect once


async def test_same_key_for_a_different_call_is_refused(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite") as env:
        to = Account.create().address
        assert (await env.txm.send("k", to, value=5, timeout=30)).ok
        with pytest.raises(IdempotencyConflict):
            await env.txm.send("k", to, value=6, timeout=30)
        again = await env.txm.send("k", to, value=5, timeout=30)
        assert again.ok and await balance(env.rpc, to) == 5


async def _deploy_token(env) -> str:
    art = forge_artifact("GpuToken")
    ctor = Web3().eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(env.signer.address)
    out = await env.txm.send("deploy:token", None, bytes.fromhex(ctor.data_in_transaction[2:]), timeout=30)
    assert out.ok
    return Web3.to_checksum_address(out.receipt["contractAddress"])


def _transfer(to: str, amount: int) -> bytes:
    art = forge_artifact("GpuToken")
    return bytes.fromhex(Web3().eth.contract(abi=art["abi"]).encode_abi("transfer", [to, amount])[2:])


async def test_a_call_that_would_revert_is_reported_and_not_sent(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite") as env:
        token = await _deploy_token(env)
        sent_before = await nonce(env.rpc, env.signer.address)
        out = await env.txm.send("xfer", token, _transfer(Account.create().address, 10**18), timeout=30)
        assert out.state is TxState.REJECTED and out.tx_hash is None
        assert out.reason.startswith("would revert: ERC20InsufficientBalance(")
        assert await nonce(env.rpc, env.signer.address) == sent_before  # nothing was sent
        assert env.store.attempts("xfer") == []


async def test_a_mined_revert_is_decoded(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite") as env:
        token = await _deploy_token(env)
        mint = Web3().eth.contract(abi=forge_artifact("GpuToken")["abi"]).encode_abi("mint", [env.signer.address, 100])
        assert (await env.txm.send("mint", token, bytes.fromhex(mint[2:]), timeout=30)).ok
        async with manual_mining(env.rpc, interval=None):  # both simulate fine; only one can succeed
            a = await env.txm.submit("a", token, _transfer(Account.create().address, 100))
            b = await env.txm.submit("b", token, _transfer(Account.create().address, 100))
            assert a.state is b.state is TxState.PENDING
            await raw(env.rpc, "evm_mine", [])
            first, second = await env.txm.wait("a", 30), await env.txm.wait("b", 30)
        assert first.ok
        assert second.state is TxState.REVERTED and second.reason.startswith("ERC20InsufficientBalance(")


async def test_stuck_transaction_is_replaced_by_bumping(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite", bump_after=2) as env:
        to = Account.create().address
        async with manual_mining(env.rpc, interval=None):
            await env.txm.submit("stuck", to, value=7)
            base = (await env.rpc.head()).base_fee
            await raw(env.rpc, "anvil_setNextBlockBaseFeePerGas", [hex(base * 50)])
            first = env.store.attempts("stuck")[0]
            assert first.max_fee < base * 50  # cannot be included at the spiked base fee
            async with manual_mining(env.rpc, interval=0.1):
                out = await env.txm.wait("stuck", 60)
        attempts = env.store.attempts("stuck")
        assert out.ok and len(attempts) >= 2
        assert out.tx_hash != first.hash  # a replacement got in, not the underpriced original
        pairs = zip(attempts, attempts[1:], strict=False)
        assert all(b.max_fee * 8 >= a.max_fee * 9 and b.tip * 8 >= a.tip * 9 for a, b in pairs)  # +12.5 % each
        assert {a.nonce for a in attempts} == {0}  # replacements reuse the nonce: one effect at most
        assert await balance(env.rpc, to) == 7


async def test_bumping_stops_at_the_fee_ceiling(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite", ceiling_gwei=5, bump_after=1) as env:
        to = Account.create().address
        async with manual_mining(env.rpc, interval=None):
            await env.txm.submit("capped", to, value=3)
            base = (await env.rpc.head()).base_fee
            await raw(env.rpc, "anvil_setNextBlockBaseFeePerGas", [hex(max(base, GWEI) * 50)])
            async with manual_mining(env.rpc, interval=0.1):
                await until(lambda: _reason_has(env, "capped", "fee ceiling"))
                out = await env.txm.wait("capped", 60)  # waits for the base fee to fall back under the ceiling
        attempts = env.store.attempts("capped")
        assert out.ok
        assert max(a.max_fee for a in attempts) == 5 * GWEI  # reached the ceiling, never above it
        assert await balance(env.rpc, to) == 3


async def _reason_has(env, key: str, text: str) -> bool:
    intent = env.store.get(key)
    return text in intent.reason


async def test_dropped_transaction_is_rebroadcast(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite", bump_after=1000) as env:
        to = Account.create().address
        async with manual_mining(env.rpc, interval=None):
            await env.txm.submit("dropped", to, value=11)
            tx_hash = env.store.attempts("dropped")[0].hash
            await raw(env.rpc, "anvil_dropTransaction", [tx_hash])
            assert await raw(env.rpc, "eth_getTransactionByHash", [tx_hash]) is None
            async with manual_mining(env.rpc, interval=0.1):
                out = await env.txm.wait("dropped", 60)
        assert out.ok and out.tx_hash == tx_hash  # the same signed bytes, not a new transaction
        assert await balance(env.rpc, to) == 11


async def test_reorg_removing_a_confirmed_receipt_gets_it_confirmed_again(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite") as env:
        to = Account.create().address
        out = await env.txm.send("reorged", to, value=13, timeout=30)
        assert out.ok
        first_block = out.receipt["blockHash"]
        await raw(env.rpc, "anvil_reorg", [1, []])  # replaces the block that held it with an empty one
        assert await raw(env.rpc, "eth_getTransactionReceipt", [out.tx_hash]) is None

        async def reconfirmed() -> bool:
            intent = env.store.get("reorged")
            return intent.state is TxState.CONFIRMED and intent.block_hash != first_block

        await until(reconfirmed)
        again = await env.txm.outcome("reorged")
        assert again.tx_hash == out.tx_hash  # rebroadcast, not re-signed
        assert await balance(env.rpc, to) == 13 and await nonce(env.rpc, env.signer.address) == 1


async def test_insufficient_funds_is_reported_and_retried(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite", signer=Account.create()) as env:
        to = Account.create().address
        await env.txm.submit("poor", to, value=1, gas=21000)
        await until(lambda: _reason_has(env, "poor", "insufficient funds"))
        await raw(env.rpc, "anvil_setBalance", [env.signer.address, hex(10**18)])
        out = await env.txm.wait("poor", 60)
        assert out.ok and await balance(env.rpc, to) == 1


async def test_restart_reuses_the_record(url, tmp_path):
    """A second manager on the same database knows the key: asking again sends nothing new."""
    db = tmp_path / "tx.sqlite"
    signer = None
    to = Account.create().address
    async with tx_env(url, db) as env:
        signer = env.signer
        first = await env.txm.send("once", to, value=17, timeout=30)
    async with tx_env(url, db, signer=signer) as env:
        second = await env.txm.send("once", to, value=17, timeout=30)
        assert second.tx_hash == first.tx_hash
        assert await balance(env.rpc, to) == 17 and await nonce(env.rpc, signer.address) == 1


async def test_nonce_used_elsewhere_fails_the_intent(url, tmp_path):
    async with tx_env(url, tmp_path / "tx.sqlite", bump_after=1000) as env:
        to = Account.create().address
        async with manual_mining(env.rpc, interval=None):
            await env.txm.submit("raced", to, value=19)
            ours = env.store.attempts("raced")[0].hash
            await raw(env.rpc, "anvil_dropTransaction", [ours])
            # Another tool signs with the same key at the same nonce and gets in first.
            other = env.signer.sign_transaction({"to": to, "value": 1, "gas": 21000, "nonce": 0, "chainId": 31337,
                                                 "maxFeePerGas": 10 * GWEI, "maxPriorityFeePerGas": GWEI})
            await env.rpc.call(lambda w3: w3.eth.send_raw_transaction(other.raw_transaction), "send")
            async with manual_mining(env.rpc, interval=0.1):
                out = await env.txm.wait("raced", 60)
        assert out.state is TxState.FAILED and "did not send" in out.reason
        assert await balance(env.rpc, to) == 1  # only the other transaction's effect


async def test_first_rpc_down_work_continues_on_the_second(url, tmp_path):
    from node.chain.devnet import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    async with tx_env([dead, url], tmp_path / "tx.sqlite") as env:
        to = Account.create().address
        out = await env.txm.send("failover", to, value=23, timeout=30)
        assert out.ok and await balance(env.rpc, to) == 23
        status = env.rpc.status()["endpoints"]
        assert status[0]["failed"] >= 1 and not status[0]["healthy"] and status[1]["healthy"]
