"""A node killed with SIGKILL in the middle of a send: after restart the effect happens exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from eth_account import Account

from node.chain.contracts import REPO_ROOT
from node.chain.devnet import Anvil
from node.chain.txstore import TxState, TxStore
from tests.chain.txkit import balance, nonce, raw, tx_env


@pytest.fixture(scope="module")
def own_anvil():
    with Anvil(accounts=1) as node:
        yield node


@pytest.mark.parametrize("point", ["after_intent", "after_persist", "after_broadcast"])
async def test_killed_mid_send_then_restarted_sends_once(own_anvil, tmp_path, point):
    db = tmp_path / "tx.sqlite"
    sender, to = Account.create(), Account.create().address
    async with tx_env(own_anvil.url, db, signer=sender, run=False) as env:
        await raw(env.rpc, "anvil_setBalance", [sender.address, hex(10**18)])
    proc = subprocess.run([sys.executable, "-m", "tests.chain.crash_sender", own_anvil.url, str(db),
                           sender.key.to_0x_hex(), to, "29", point], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    store = TxStore(db)
    before = store.get("crash:1")
    signed_before = [a.hash for a in store.attempts("crash:1")]
    store.close()
    assert before is not None  # the intent was stored before anything else happened
    assert before.state is (TxState.QUEUED if point == "after_intent" else TxState.PENDING)

    async with tx_env(own_anvil.url, db, signer=sender) as env:  # the restarted node
        out = await env.txm.send("crash:1", to, value=29, timeout=60)
        assert out.ok
        if signed_before:  # bytes signed before the crash are what got mined: nothing was re-signed
            assert out.tx_hash == signed_before[0] and len(env.store.attempts("crash:1")) == 1
        assert await balance(env.rpc, to) == 29
        assert await nonce(env.rpc, sender.address) == 1
