"""The daemon end to end: `gpunode run` as a real subprocess against its own anvil (1 s blocks, so every
stage lasts long enough to be interrupted), the real contracts, real torch workers and the HTTP API.

Each test uses its own operator key, so providers never share stake or nonces."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eth_account import Account
from web3 import Web3

from node.api.auth import sign_result_request
from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.protocol import Protocol
from node.compute.commitment import commit_bytes
from scripts.devnet import start_devnet
from scripts.localnode import TOKEN, envelope, job_id, offer, provision

FEE_BPS = 250
WINDOW = 120
DONE = {"submitted", "finalized", "paid"}


class Net:
    def __init__(self, anvil: Anvil, proto: Protocol, keys: list[str], deployments, bench) -> None:
        self.anvil, self.proto, self.keys, self.deployments, self.bench = anvil, proto, keys, deployments, bench
        self.nonce = 0
        self.payouts: dict[int, str] = {}

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce

    def advance(self, seconds: int) -> None:
        self.proto.w3.provider.make_request("evm_increaseTime", [seconds])
        self.proto.w3.provider.make_request("evm_mine", [])

    def node(self, tmp_path, operator: int, **settings):
        payout = self.payouts.setdefault(operator, Account.create().address)  # registered once per operator
        return provision(self.proto, self.anvil.url, self.deployments, self.keys[operator], payout,
                         tmp_path / f"node{operator}", bench=self.bench, settings=settings)

    def events(self, name: str, job: str) -> list:
        event = getattr(self.proto.market.events, name)
        return [e for e in event().get_logs(from_block=0) if "0x" + e["args"]["jobId"].hex() == job]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    with Anvil(block_time=1) as anvil:
        dep, keys = start_devnet(anvil, 8, 1_000_000, ProtocolParams(fee_bps=FEE_BPS, challenge_window_s=WINDOW),
                                 deployments_dir=root, log=lambda *_: None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url)), dep)
        proto.approve(keys[1], dep.market, 2**256 - 1)
        yield Net(anvil, proto, keys, root / f"{dep.chain_id}.json", root / "bench.json")


def _post(net: Net, params: bytes, **kw) -> str:
    o, sig = offer(net.proto, net.keys[1], params, nonce=net.next_nonce(), **kw)
    net.proto.post(net.keys[1], o, params, sig)
    return job_id(net.proto, o)


def _matmul(size: int, seed: int) -> bytes:
    return json.dumps({"m": size, "k": size, "n": size, "seed": seed}, separators=(",", ":")).encode()


def test_jobs_run_to_payment_bad_offers_are_rejected_and_the_api_tells(net, tmp_path):
    node = net.node(tmp_path, 2).start()
    try:
        good = [_post(net, _matmul(96 + 32 * i, i)) for i in range(3)]
        cheap = _post(net, _matmul(64, 9), payment=10**9)
        o, sig = offer(net.proto, net.keys[1], _matmul(80, 3), nonce=net.next_nonce(), provider=node.address)
        status, body, _ = node.request("/offers", body=envelope(net.proto, o, _matmul(80, 3), sig))
        assert status == 202, body
        direct = json.loads(body)["job_id"]
        assert direct == job_id(net.proto, o)
        forged_offer, _ = offer(net.proto, net.keys[1], _matmul(80, 4), nonce=net.next_nonce())
        forged_sig = net.proto.sign(net.keys[5], forged_offer)  # signed by someone else than the requester
        status, body, _ = node.request("/offers", body=envelope(net.proto, forged_offer, _matmul(80, 4), forged_sig))
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


class _SlowInput(BaseHTTPRequestHandler):
    body = b"x" * 1024
    delay = 4.0

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_input():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowInput)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.bin"
    server.shutdown()


def test_interrupted_in_every_stage_each_job_resumes_without_a_second_transaction(net, tmp_path, slow_input):
    """kill -9 while the claim is in flight, while fetching, while committing and once submitted; SIGTERM
    (no grace) while running. Each time the next start finishes the job, and the chain shows exactly one
    claim and one submit for it."""
    node = net.node(tmp_path, 3, node={"shutdown_grace_s": 0.0}).start()
    jobs = []
    try:
        for stage in ("validated", "fetching", "running", "committed", "submitted"):
            kw = {}
            if stage == "fetching":  # matmul ignores an input, but the node still fetches and checks it first
                kw = {"input_uri": slow_input, "input_hash": hashlib.sha256(_SlowInput.body).digest()}
            job = _post(net, _matmul(1280 if stage == "running" else 64, len(jobs)), **kw)
            jobs.append(job)
            node.wait(lambda j=job, s=stage: node.jobs().get(j, {}).get("state") == s, 120, f"job in {stage}",
                      poll=0.05)
            if stage == "running":
                assert node.stop(signal.SIGTERM) == 0, node.tail()
                db = sqlite3.connect(node.data_dir / "journal.db")
                (state,) = db.execute("SELECT state FROM job_jobs WHERE job_id = ?", (job,)).fetchone()
                db.close()
                assert state == "running"  # cut short and persisted, not written off
            else:
                node.kill()
            node.start()
            node.wait_states([job], DONE, timeout=240)
        net.advance(WINDOW + 1)
        node.wait_states(jobs, {"paid"}, timeout=180)
        for job in jobs:
            assert len(net.events("JobClaimed", job)) == 1, job
            assert len(net.events("ResultSubmitted", job)) == 1, job
    finally:
        node.stop()


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
        job = await asyncio.to_thread(_post, net, _matmul(64, 77))
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
        await service.stop()


async def _is(value, states: set[str]) -> bool:
    return (await value) in states
