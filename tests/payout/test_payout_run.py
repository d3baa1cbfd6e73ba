"""One payout pass against the real contracts: due jobs finalized in batches, earnings withdrawn and swept to
the cold address with exact amounts, the gas reserve kept, a rerun sending nothing, jobs still in their
window remembered for a later run, the dry run's plan matching what the real run then does, and the fallback
to the operator key (which settles but never sweeps)."""

from __future__ import annotations

import json

from tests.conftest import FEE_BPS, WINDOW
from tests.payout.conftest import HOT_ETH, PAY, Scene, events

NET = PAY - PAY * FEE_BPS // 10_000
SUBMITTED, FINALIZED = 3, 6
RESERVE = 5 * 10**16  # the scene's payout.gas_reserve_eth = "0.05"


def token(scene: Scene, who: str) -> int:
    return scene.chain.proto.balance(who)


def test_a_run_finalizes_in_batches_withdraws_and_sweeps_then_a_rerun_sends_nothing(scene: Scene) -> None:
    due = scene.due(3)
    waiting = scene.submitted(1)  # its window opens after the jump: not due in this run
    cold_eth = scene.eth(scene.cold)

    code, lines = scene.run("--batch", "2")

    assert code == 0, lines
    finals = events(lines, "finalize")
    assert [f["count"] for f in finals] == [2, 1]  # batch size 2, three due jobs: two finalizeMany transactions
    assert sorted(j for f in finals for j in f["jobs"]) == sorted(due)
    assert all(scene.state(j) == FINALIZED for j in due) and scene.state(waiting[0]) == SUBMITTED
    [withdraw] = events(lines, "withdraw")
    [sweep_token] = events(lines, "sweep_token")
    [sweep_eth] = events(lines, "sweep_eth")
    assert withdraw["amount"] == sweep_token["amount"] == str(3 * NET) and withdraw["amount_tokens"] == "11.7"
    assert token(scene, scene.cold) == 3 * NET and token(scene, scene.hot.address) == 0
    assert scene.chain.proto.withdrawable(scene.hot.address) == 0
    swept = int(sweep_eth["amount_wei"])
    assert scene.eth(scene.cold) - cold_eth == swept
    fees = sum(int(e["fee_wei"]) for e in lines if "tx" in e)
    assert scene.eth() == HOT_ETH - fees - swept  # every wei accounted for ...
    assert RESERVE <= scene.eth() < RESERVE + 10**15  # ... and the reserve (plus unspent fee headroom) stays
    [summary] = events(lines, "summary")
    assert summary["sent"] == 5 == scene.nonce() and summary["finalized"] == 3 and summary["watching"] == 1
    assert summary["outcome"] == "ok" and summary["payout"] == scene.hot.address
    state = json.loads((scene.tmp / "data" / "payout-state.json").read_text())
    assert list(state["candidates"]) == waiting  # the finalized ones are forgotten, the open one remembered

    code, lines = scene.run("--batch", "2")
    assert code == 0 and scene.nonce() == 5  # nothing left to do, nothing sent
    assert [e["event"] for e in lines] == ["summary"] and lines[-1]["sent"] == 0

    scene.chain.advance(WINDOW + 1)
    code, lines = scene.run()
    assert code == 0 and [f["jobs"] for f in events(lines, "finalize")] == [waiting]
    assert token(scene, scene.cold) == 4 * NET


def test_dry_run_lists_the_plan_and_sends_nothing(scene: Scene) -> None:
    due = scene.due(3)
    before = (scene.nonce(), scene.eth(), scene.eth(scene.cold), token(scene, scene.cold))

    code, lines = scene.run("--dry-run", "--batch", "2")

    assert code == 0, lines
    assert all(e["dry_run"] is True for e in lines)
    plan = [e["event"] for e in lines]
    assert plan == ["finalize", "finalize", "withdraw", "sweep_token", "sweep_eth", "summary"]
    planned = [j for f in events(lines, "finalize") for j in f["jobs"]]
    assert sorted(planned) == sorted(due)
    assert events(lines, "withdraw")[0]["amount"] == events(lines, "sweep_token")[0]["amount"] == str(3 * NET)
    assert not any("tx" in e for e in lines)
    assert (scene.nonce(), scene.eth(), scene.eth(scene.cold), token(scene, scene.cold)) == before
    assert all(scene.state(j) == SUBMITTED for j in due)
    assert not (scene.tmp / "data" / "payout-state.json").exists()  # a dry run writes nothing
    planned_eth = int(events(lines, "sweep_eth")[0]["amount_wei"])
    assert 0 < planned_eth < scene.eth() - RESERVE

    code, lines = scene.run("--batch", "2")  # the real run does what the plan said
    assert code == 0 and [f["jobs"] for f in events(lines, "finalize")] == [planned[:2], planned[2:]]


def test_without_a_payout_keystore_the_operator_key_settles_and_nothing_is_swept(scene: Scene, monkeypatch) -> None:
    due = scene.due(2)
    scene.write_config(keystore=None)  # payout.keystore unset: fall back to the wallet key
    monkeypatch.setenv("GPUNODE_WALLET_PASSWORD", "unused")
    operator_nonce = scene.nonce(scene.operator)

    code, lines = scene.run()

    assert code == 0, lines
    assert [e["event"] for e in lines] == ["finalize", "withdraw", "skip", "summary"]
    assert events(lines, "skip")[0]["step"] == "sweep" and "payout.keystore" in events(lines, "skip")[0]["reason"]
    assert all(scene.state(j) == FINALIZED for j in due)
    assert scene.nonce(scene.operator) == operator_nonce + 2 and scene.nonce() == 0
    assert token(scene, scene.hot.address) == 2 * NET and token(scene, scene.cold) == 0
    assert lines[-1]["hot_key"] is False and lines[-1]["sender"] == scene.operator


def test_without_a_payout_keystore_a_running_node_keeps_the_operator_key_to_itself(scene: Scene, monkeypatch) -> None:
    """The fallback signs with the operator key: while the node holds its data directory, the pass sends
    nothing (the two would race for that key's nonces) and says why; once the node is gone it goes ahead."""
    from node.datadir import DataDir

    due = scene.due(1)
    scene.write_config(keystore=None)
    monkeypatch.setenv("GPUNODE_WALLET_PASSWORD", "unused")
    before = scene.nonce(scene.operator)
    node = DataDir(scene.tmp / "data")
    node.lock()  # what a running `gpunode run` holds
    try:
        code, lines = scene.run()
    finally:
        node.unlock()
    assert code == 4 and [e["event"] for e in lines] == ["locked", "summary"], lines
    assert "node is running" in lines[0]["note"] and lines[0]["lock"].endswith("node.lock")
    assert scene.nonce(scene.operator) == before and scene.state(due[0]) == SUBMITTED

    code, _ = scene.run()
    assert code == 0 and scene.state(due[0]) == FINALIZED
