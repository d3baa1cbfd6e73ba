"""What keeps a payout run from sending when it must not: the gas ceiling (exit 3), its own transactions still in
flight (exit 4), another run holding the lock (exit 4, also two real processes started together: exactly one
sends), and a key that cannot pay for gas (exit 5); the ETH sweep never touches the reserve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eth_account import Account

from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import create_keystore
from node.payout.lock import RunLock
from tests.conftest import FEE_BPS
from tests.payout.conftest import PAY, Scene, events, rpc

NET = PAY - PAY * FEE_BPS // 10_000
SUBMITTED, FINALIZED = 3, 6
RESERVE = 5 * 10**16
REPO = Path(__file__).resolve().parents[2]


def test_base_fee_above_the_ceiling_defers_without_sending(scene: Scene) -> None:
    due = scene.due(1)
    normal = int(scene.w3.eth.fee_history(1, "latest", [50])["baseFeePerGas"][-1])
    try:
        rpc(scene.w3, "anvil_setNextBlockBaseFeePerGas", [hex(1000 * GWEI)])  # ceiling: payout.max_gas_gwei = 100
        rpc(scene.w3, "evm_mine", [])

        code, lines = scene.run("--wait", "0.5")

        assert code == 3, lines
        [deferred] = events(lines, "deferred")
        assert float(deferred["base_fee_gwei"]) > 100 and deferred["ceiling_gwei"] == "100"
        assert deferred["waited_s"] >= 0.5  # --wait polled before giving up
        assert scene.nonce() == 0 and scene.state(due[0]) == SUBMITTED
        assert lines[-1]["event"] == "summary" and lines[-1]["outcome"] == "deferred"

        code, lines = scene.run("--dry-run")  # the plan still shows, with the verdict the real run would have
        assert code == 3 and [e["event"] for e in lines][:2] == ["deferred", "finalize"]
    finally:
        rpc(scene.w3, "anvil_setNextBlockBaseFeePerGas", [hex(normal)])


def test_own_transaction_in_flight_means_busy_and_nothing_sent(scene: Scene) -> None:
    due = scene.due(1)
    try:
        rpc(scene.w3, "evm_setAutomine", [False])
        tx = {"to": scene.hot.address, "value": 0, "gas": 21000, "maxFeePerGas": 50 * GWEI,
              "maxPriorityFeePerGas": GWEI, "nonce": 0, "chainId": 31337}
        scene.w3.eth.send_raw_transaction(scene.hot.sign_transaction(tx).raw_transaction)

        code, lines = scene.run()

        assert code == 4, lines
        assert [e["event"] for e in lines] == ["pending", "summary"] and lines[0]["in_flight"] == 1
        assert scene.w3.eth.get_transaction_count(scene.hot.address, "pending") == 1  # nothing added to the pool
    finally:
        rpc(scene.w3, "evm_setAutomine", [True])
        rpc(scene.w3, "evm_mine", [])
    assert scene.state(due[0]) == SUBMITTED and scene.nonce() == 1  # only the test's own transaction went in


def test_a_held_lock_means_busy_and_nothing_sent(scene: Scene) -> None:
    scene.due(1)
    with RunLock(scene.tmp / "data"):
        code, lines = scene.run()
    assert code == 4 and [e["event"] for e in lines] == ["locked", "summary"] and scene.nonce() == 0
    code, _ = scene.run()  # released: the next run goes ahead
    assert code == 0 and scene.nonce() == 4


def test_two_runs_started_together_send_everything_exactly_once(scene: Scene) -> None:
    due = scene.due(3)
    start = scene.w3.eth.block_number
    cmd = [sys.executable, "-m", "scripts.payout", "--config", str(scene.config), "--batch", "2"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()

    runs = [(code, [json.loads(line) for line in out.splitlines()]) for code, out, _ in results]
    sent = sorted(lines[-1]["sent"] for _, lines in runs)
    assert sent == [0, 5], results  # one run did everything, the other nothing
    assert scene.nonce() == 5
    idle_code, idle_lines = next(r for r in runs if r[1][-1]["sent"] == 0)
    assert idle_code in (0, 4) and not any("tx" in e for e in idle_lines)
    if idle_code == 4:
        assert idle_lines[0]["event"] in ("locked", "pending")
    finalized = scene.chain.proto.market.events.JobFinalized().get_logs(from_block=start + 1)
    assert sorted("0x" + bytes(e["args"]["jobId"]).hex() for e in finalized) == sorted(due)  # each exactly once
    assert scene.chain.proto.balance(scene.cold) == 3 * NET


def test_the_eth_sweep_never_touches_the_reserve(scene: Scene) -> None:
    policy = FeePolicy(ceiling=100 * GWEI, min_tip=GWEI)  # payout.max_gas_gwei, chain.priority_fee_gwei
    cost = int(21000 * 1.2) * policy.market(scene.w3.eth.fee_history(5, "latest", [50])).max_fee
    scene.set_eth(RESERVE + cost - 1)  # one wei short of paying for the sweep out of the surplus

    code, lines = scene.run()

    assert code == 0 and [e["event"] for e in lines] == ["summary"], lines
    assert scene.eth() == RESERVE + cost - 1 and scene.nonce() == 0
    assert lines[-1]["below_reserve"] is False

    scene.set_eth(RESERVE + cost + 12345)
    code, lines = scene.run()
    assert code == 0 and events(lines, "sweep_eth")[0]["amount_wei"] == "12345"
    assert scene.eth(scene.cold) == 12345 and scene.eth() >= RESERVE


def test_a_key_that_cannot_pay_gas_skips_the_step_and_exits_needs_funds(scene: Scene) -> None:
    due = scene.due(1)
    scene.set_eth(10**9)  # far below a finalizeMany's gas

    code, lines = scene.run()

    assert code == 5, lines
    [skip] = events(lines, "skip")
    assert skip["step"] == "finalize" and skip["needs_funds"] is True and skip["jobs"] == 1
    assert scene.nonce() == 0 and scene.state(due[0]) == SUBMITTED
    assert lines[-1]["outcome"] == "needs_funds" and lines[-1]["below_reserve"] is True

    scene.set_eth(RESERVE // 2)  # below the reserve but enough for gas: the reserve is there to be spent on it
    code, lines = scene.run()
    assert code == 0 and scene.state(due[0]) == FINALIZED and scene.nonce() == 3
    assert not events(lines, "sweep_eth")


def test_a_fresh_key_can_be_the_sender_without_being_the_payout_address(scene: Scene) -> None:
    """A hot key that is not the registered payout address settles and withdraws but cannot sweep."""
    other = Account.create()
    create_keystore(scene.tmp / "other.json", "pw2", private_key=other.key, kdf="pbkdf2", iterations=1000)
    scene.set_eth(10**18, other.address)
    scene.write_config(keystore=str(scene.tmp / "other.json"), password_env="OTHER_PAYOUT_PW")
    os.environ["OTHER_PAYOUT_PW"] = "pw2"
    try:
        due = scene.due(1)
        code, lines = scene.run()
    finally:
        del os.environ["OTHER_PAYOUT_PW"]
    assert code == 0, lines
    assert [e["event"] for e in lines] == ["finalize", "withdraw", "skip", "summary"]
    assert "not the payout address" in events(lines, "skip")[0]["reason"]
    assert scene.state(due[0]) == FINALIZED and scene.chain.proto.balance(scene.hot.address) == NET
