"""The daemon end to end: `gpunode run` as a real subprocess against anvil, the real contracts, real torch
workers and the HTTP API; jobs are run to payment, bad offers rejected, the API answers."""

from __future__ import annotations

import json

import pytest

from node.api.auth import sign_result_request
from node.compute.commitment import commit_bytes
from scripts.localnode import TOKEN, envelope, job_id, offer
from tests.e2e.nodenet import DONE, FEE_BPS, WINDOW, matmul, post, start_net

net = pytest.fixture(scope="module")(start_net)


def test_jobs_run_to_payment_bad_offers_are_rejected_and_the_api_tells(net, tmp_path):
    node = net.node(tmp_path, 2).start()
    try:
        good = [post(net, matmul(96 + 32 * i, i)) for i in range(3)]
        cheap = post(net, matmul(64, 9), payment=10**9)
        o, sig = offer(net.proto, net.keys[1], matmul(80, 3), nonce=net.next_nonce(), provider=node.address)
        status, body, _ = node.request("/offers", body=envelope(net.proto, o, matmul(80, 3), sig))
        assert status == 202, body
        direct = json.loads(body)["job_id"]
        assert direct == job_id(net.proto, o)
        forged_offer, _ = offer(net.proto, net.keys[1], matmul(80, 4), nonce=net.next_nonce())
        forged_sig = net.proto.sign(net.keys[5], forged_offer)  # signed by someone else than the requester
        status, body, _ = node.request("/offers", body=envelope(net.proto, forged_offer, matmul(80, 4), forged_sig))
        assert status == 422 and json.loads(body)["code"] == "signer_mismatch", body

        jobs = node.wait_states(good + [direct, cheap], DONE | {"rejected"}, timeout=240)
        assert jobs[cheap]["state"] == "rejected" and jobs[cheap]["code"] == "below_price_floor"
        assert all(jobs[j]["state"] in DONE for j in good + [direct])

        # One slot (the CPU): the node never held two claims it was not yet done with.
        spans = []
        for j in good + [direct]:
            hist = node.job(j)["history"]
            at = {h["to"]: h["at"] for h in hist}
            spans.append((at["claimed"], at["committed"]))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans

        # The requester downloads a result with a signed request; it matches the root on chain.
        headers = sign_result_request(net.keys[1], good[0], node.address, net.proto.deployment.chain_id)
        status, result, resp_headers = node.request(f"/results/{good[0]}", headers=headers)
        assert status == 200
        onchain = net.proto.job(bytes.fromhex(good[0][2:]))["resultRoot"]
        assert commit_bytes(result).root == onchain
        assert len(result) == 96 * 96 * 4
        stranger = sign_result_request(net.keys[5], good[0], node.address, net.proto.deployment.chain_id)
        assert node.request(f"/results/{good[0]}", headers=stranger)[0] == 403
        assert node.request(f"/results/{good[0]}", headers=headers)[0] == 403  # replayed

        before = net.proto.balance(node.payout)
        net.advance(WINDOW + 1)
        node.wait_states(good + [direct], {"paid"}, timeout=120)
        expected = sum(p - p * FEE_BPS // 10_000 for p in [TOKEN] * 4)
        assert net.proto.balance(node.payout) - before == expected
        for j in good + [direct]:
            assert len(net.events("JobClaimed", j)) == 1 and len(net.events("ResultSubmitted", j)) == 1

        _, metrics, _ = node.request("/metrics")
        text = metrics.decode()
        for series in ("gpunode_offers_seen_total", 'gpunode_offers_rejected_total{reason="below_price_floor"}',
                       'gpunode_offers_rejected_total{reason="signer_mismatch"}', 'gpunode_jobs{state="paid"} 4.0',
                       "gpunode_job_duration_seconds_count", "gpunode_stage_duration_seconds_bucket",
                       'gpunode_gas_used_total{step="claim"}', "gpunode_earnings_token_units_total",
                       "gpunode_tx_attempts_total", "gpunode_task_restarts_total"):
            assert series in text, series
        status = node.get("/status")
        assert status["jobs"]["by_state"]["paid"] == 4
        assert int(status["earnings"]["withdrawn_units"]) == expected
    finally:
        assert node.stop() == 0, node.tail()


async def test_idle_only_claims_nothing_while_a_foreign_process_uses_the_gpu(net, tmp_path):
    """The daemon in-process with a fake NVML (the one mocked part) whose GPU stands for the worker's
    device: the owner's process on it holds back claims; once it is gone and the GPU stayed quiet for
    idle_seconds, the job is claimed and run."""
    import asyncio

    from node.chain.keys import load_signer
    from node.config import load_settings
    from node.service import NodeService
    from scripts.localnode import DEV_PASSWORD
    from tests.compute.test_idle import OTHER, FakeNvml

    node = net.node(tmp_path, 4, hardware={"idle_only": True, "idle_seconds": 1, "idle_utilization_pct": 10},
                    api={"enabled": False})
    settings = load_settings(node.config)
    fake = FakeNvml()
    fake.pids[0] = [OTHER]  # the owner's program is on the GPU
    service = NodeService(settings, load_signer(settings.wallet.keystore, DEV_PASSWORD), nvml=fake,
                          idle_keys={"cpu": 0})
    await service.start()

    async def state_of(job: str) -> str | None:
        rec = await asyncio.to_thread(service.journal.get, job)
        return rec.state.value if rec else None

    async def until(pred, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not await pred():
                await asyncio.sleep(0.1)

    try:
        job = await asyncio.to_thread(post, net, matmul(64, 77))
        await until(lambda: _is(state_of(job), {"validated"}), 60)
        for _ in range(3):  # several blocks and passes: still not claimed
            await asyncio.sleep(2)
            assert await state_of(job) == "validated"
            assert not service.idle.idle("cpu")
        assert service.status()["devices"][0]["foreign_pids"] == [OTHER]
        fake.pids[0] = []  # the owner is done
        await until(lambda: _is(state_of(job), DONE), 120)
        history = [t.to_state.value for t in service.journal.history(job)]
        assert history[:3] == ["seen", "validated", "claimed"]
    finally:
        async with asyncio.timeout(180):  # a stop that hangs fails here, with its stack, instead of stalling
            await service.stop()


async def _is(value, states: set[str]) -> bool:
    return (await value) in states
