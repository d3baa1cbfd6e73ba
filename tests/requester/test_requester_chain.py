"""The requester tools against real anvil and the real contracts, with a hand-rolled provider: the test plays
the provider (register, claim, compute with the real workload, commit, submit) and serves the result through
the node's real API routes and signature checks (node.api.server over a journal, as in tests/api)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from eth_account import Account
from eth_utils import keccak

from node.api.auth import sign_result_request
from node.api.server import create_app
from node.chain.deployments import save_deployment
from node.chain.keys import Signer
from node.chain.protocol import Capacity
from node.compute.commitment import commit_file
from node.compute.workloads.matmul_int8 import MatmulInt8
from node.jobs.journal import JobSource
from node.jobs.state import JobState
from node.requester.cli import main
from node.requester.client import Requester
from node.requester.download import download_result
from node.requester.errors import RequesterError, ResultMismatch
from tests.api.fakes import FakeNode
from tests.conftest import FEE_BPS, TOKEN, Chain

PARAMS = {"m": 24, "k": 32, "n": 16, "seed": 11}
PARAMS_BYTES = json.dumps(PARAMS).encode()
REQUESTER, OPERATOR = 2, 3


class ProviderApi:
    """The node's HTTP API (real routes, auth and replay cache) in a thread, over a FakeNode's journal."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(create_app(self.node), access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ProviderApi:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


class Provider:
    """The test as a provider: registered with the API's URL as its endpoint, claims and submits by hand."""

    def __init__(self, chain: Chain, api: ProviderApi, tmp: Path) -> None:
        self.chain, self.api, self.tmp = chain, api, tmp
        self.key, self.address = chain.keys[OPERATOR], chain.addr(OPERATOR)
        self.payout = Account.create().address
        cap = Capacity("cpu (test)", 1, 0, 0, 0, keccak(text="bench"))
        chain.proto.register(self.key, self.payout, cap, price_floor=1, endpoint=api.url)
        chain.proto.stake(self.key, 100 * TOKEN)
        api.node.provider, api.node.chain_id = self.address, chain.deployment.chain_id

    def claim_and_compute(self, job_id: str, name: str) -> Path:
        self.chain.proto.claim(self.key, bytes.fromhex(job_id[2:]))
        out = self.tmp / name
        MatmulInt8().run(dict(PARAMS), None, str(out), "cpu")
        return out

    def submit(self, job_id: str, committed: Path) -> bytes:
        c = commit_file(committed)
        self.chain.proto.submit(self.key, bytes.fromhex(job_id[2:]), c.root, c.size, f"{self.api.url}/results")
        return c.root

    def record(self, job_id: str) -> None:
        """The job in the node's journal, running: the API knows it but has no result for it yet."""
        journal = self.api.node.journal
        if journal.get(job_id) is None:
            journal.record_seen(job_id, requester=self.chain.addr(REQUESTER), provider=self.address,
                                workload="matmul-int8/v1", payment=TOKEN, bond=0, expiry=2_000_000_000,
                                offer_json={}, source=JobSource.CHAIN)
            for state, fields in ((JobState.VALIDATED, {}), (JobState.CLAIMED, {"deadline": 2_000_000_000}),
                                  (JobState.FETCHING, {"device": "cpu"}), (JobState.RUNNING, {})):
                journal.transition(job_id, state, reason="test", **fields)

    def serve(self, job_id: str, content: Path, root: bytes) -> None:
        """Makes ``content`` the job's stored result in the node's journal (the API serves what is there)."""
        stored = self.tmp / f"stored-{job_id}.bin"
        stored.write_bytes(content.read_bytes())
        self.record(job_id)
        self.api.node.journal.transition(job_id, JobState.COMMITTED, reason="test", result_root="0x" + root.hex(),
                                         result_path=stored)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ProviderApi]:
    (tmp_path / "api").mkdir()
    node = FakeNode(tmp_path / "api")
    try:
        with ProviderApi(node) as server:
            yield server
    finally:
        node.journal.close()


@pytest.fixture
def cli(chain: Chain, tmp_path: Path):  # type: ignore[no-untyped-def]
    """main(COMMAND, ...) with the chain, the requester's key file, a state dir and --json; the exit code."""
    deployments = tmp_path / "deployments.json"
    save_deployment(chain.deployment, deployments)
    key = tmp_path / "requester.key"
    key.write_text(chain.keys[REQUESTER] + "\n")
    base = ["--rpc", chain.anvil.url, "--deployments", str(deployments), "--key-file", str(key),
            "--state-dir", str(tmp_path / "state")]

    def run(command: str, *args: str, human: bool = False) -> int:
        return main([command, *base, *([] if human else ["--json"]), *args])

    return run


def requester(chain: Chain, tmp_path: Path, index: int = REQUESTER) -> Requester:
    deployments = tmp_path / "deployments.json"
    save_deployment(chain.deployment, deployments)
    signer = Signer(Account.from_key(chain.keys[index]))
    req = Requester.connect(chain.anvil.url, deployments, signer, chain_id=chain.deployment.chain_id,
                            state_dir=tmp_path / "state")
    req.poll_s = 0.1
    return req


def nonce_slot(chain: Chain, owner: str, word: int) -> int:
    """Storage slot of JobMarket.nonceBitmap[owner][word], found by probing after a known invalidation."""
    market = chain.deployment.market
    pad = lambda v: int(v, 16).to_bytes(32, "big") if isinstance(v, str) else v.to_bytes(32, "big")  # noqa: E731
    for base in range(64):
        inner = keccak(pad(owner) + pad(base))
        if chain.w3.eth.get_storage_at(market, keccak(pad(0) + inner)) != bytes(32):
            return int.from_bytes(keccak(pad(word) + inner), "big")
    raise AssertionError("nonceBitmap slot not found")


def test_next_nonce_skips_used_and_recorded_nonces(chain: Chain, tmp_path: Path) -> None:
    req = requester(chain, tmp_path)
    assert req.next_nonce() == 0
    chain.proto.send(chain.keys[REQUESTER], chain.proto.market.functions.invalidateNonce(0))
    assert req.next_nonce() == 1
    # words are read 256 nonces at a time: fill word 0 and the first 3 nonces of word 1
    for word, bits in ((0, 2**256 - 1), (1, 0b111)):
        slot = nonce_slot(chain, req.address, word)
        chain.w3.provider.make_request("anvil_setStorageAt", [req.market, hex(slot), f"0x{bits:064x}"])
    assert req.next_nonce() == 259
    signed = req.build_offer("matmul-int8/v1", PARAMS_BYTES, payment=TOKEN, bond=0, max_duration=600,
                             expires_in=30)
    assert signed.offer.nonce == 259  # recorded, not posted: the next one must not reuse it
    assert req.next_nonce() == 260
    assert requester(chain, tmp_path, 4).next_nonce() == 0  # another requester's records reserve nothing
    chain.advance(31)
    assert req.next_nonce() == 259  # the recorded offer expired unposted: its nonce is free again
    with pytest.raises(RequesterError, match="nonce 258 .* already used"):
        req.build_offer("matmul-int8/v1", PARAMS_BYTES, payment=TOKEN, bond=0, max_duration=600, expires_in=60,
                        nonce=258)


def test_approve_and_permit(chain: Chain, tmp_path: Path) -> None:
    token = chain.proto.token.functions
    req = requester(chain, tmp_path)
    step = req.ensure_allowance(5 * TOKEN)
    assert step is not None and step.name == "approve"
    assert token.allowance(req.address, req.market).call() == 5 * TOKEN
    assert req.ensure_allowance(5 * TOKEN) is None  # covered: nothing sent
    assert req.ensure_allowance(3 * TOKEN, permit=True) is None

    other = requester(chain, tmp_path, 4)
    assert token.nonces(other.address).call() == 0
    step = other.ensure_allowance(7 * TOKEN, permit=True)
    assert step is not None and step.name == "permit"
    tx = chain.w3.eth.get_transaction(step.tx_hash)
    assert tx["to"] == chain.deployment.token and bytes(tx["input"][:4]) == keccak(
        text="permit(address,address,uint256,uint256,uint8,bytes32,bytes32)")[:4]  # no approve was sent
    assert token.allowance(other.address, req.market).call() == 7 * TOKEN
    assert token.nonces(other.address).call() == 1


def test_post_then_cancel_and_withdraw(chain: Chain, tmp_path: Path, cli, capsys) -> None:  # type: ignore[no-untyped-def]
    req = requester(chain, tmp_path)
    before = req.balances()["tokens"]
    code = cli("offer", "--m", "8", "--k", "8", "--n", "8", "--seed", "1", "--payment", "2.5", "--post")
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    job_id = out["job_id"]
    assert out["allowance"]["name"] == "approve" and out["posted"]["tx"].startswith("0x")
    job = req.job(job_id)
    assert job["state"] == "Open" and job["payment"] == 25 * TOKEN // 10 and job["requester"] == req.address
    assert req.balances()["tokens"] == before - 25 * TOKEN // 10
    assert cli("cancel", job_id) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "Cancelled"
    # the chain can come from a gpunode config's [chain] section instead (read-only: no key needed)
    config = tmp_path / "config.toml"
    config.write_text(f'[chain]\nchain_id = {chain.deployment.chain_id}\nrpc_urls = ["{chain.anvil.url}"]\n'
                      f'deployments = "{tmp_path / "deployments.json"}"\n')
    assert main(["status", job_id, "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["job"]["state"] == "Cancelled"
    assert main(["status", job_id, "--config", str(config), "--rpc", chain.anvil.url]) == 1
    assert "do not combine" in capsys.readouterr().err
    assert cli("withdraw") == 0
    assert json.loads(capsys.readouterr().out)["amount"] == str(25 * TOKEN // 10)
    assert req.balances()["tokens"] == before
    assert cli("accept", job_id) == 1  # a cancelled job cannot be accepted: the revert is named, nothing sent
    assert "accept would revert: InvalidState" in capsys.readouterr().err


def test_tampered_result_is_disputed(chain: Chain, tmp_path: Path, api: ProviderApi, cli, capsys) -> None:  # type: ignore[no-untyped-def]
    provider = Provider(chain, api, tmp_path)
    req = requester(chain, tmp_path)
    req.ensure_allowance(TOKEN)
    job_id, _ = req.post(req.build_offer("matmul-int8/v1", PARAMS_BYTES, payment=TOKEN, bond=TOKEN,
                                         max_duration=600, expires_in=600))
    honest = provider.claim_and_compute(job_id, "honest.bin")
    tampered = tmp_path / "tampered.bin"
    c = np.fromfile(honest, dtype="<i4")
    c[37] += 1
    c.tofile(tampered)
    root = provider.submit(job_id, tampered)  # commits the wrong C

    # until the node has the file it answers 404 no_result: retried, then a clear timeout
    provider.record(job_id)
    with pytest.raises(RequesterError, match="no result yet"):
        req.fetch(job_id, tmp_path / "early.bin", timeout=1.5)
    # serving something else than the committed root: refused and kept as evidence
    provider.serve(job_id, honest, root)
    out = tmp_path / "result.bin"
    with pytest.raises(ResultMismatch, match="committed 0x" + root.hex()) as err:
        req.fetch(job_id, out, timeout=10)
    assert err.value.path == tmp_path / "result.bin.mismatch" and err.value.path.read_bytes() == honest.read_bytes()
    assert not out.exists()

    provider.serve(job_id, tampered, root)
    assert cli("fetch", job_id, "--out", str(out)) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == 24 * 16 * 4
    assert cli("verify", job_id) == 3
    report = json.loads(capsys.readouterr().out)["report"]
    assert not report["ok"] and report["metrics"]["check"] == "freivalds"
    assert report["metrics"]["first_wrong"]["row"] == 37 // 16 and report["metrics"]["committed_on_chain"] is True
    assert cli("dispute", job_id) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "Disputed"
    assert req.job(job_id)["state"] == "Disputed"


def test_honest_result_is_accepted_and_paid(chain: Chain, tmp_path: Path, api: ProviderApi, cli, capsys) -> None:  # type: ignore[no-untyped-def]
    provider = Provider(chain, api, tmp_path)
    req = requester(chain, tmp_path)
    code = cli("offer", "--params", PARAMS_BYTES.decode(), "--payment", "3", "--duration", "10m", "--permit",
               "--send", api.url)
    # the fake node behind the API does not take offers: its refusal is reported, nothing is posted
    assert code == 1 and "refused the offer: malformed" in capsys.readouterr().err
    job_id, _ = req.post(req.build_offer("matmul-int8/v1", PARAMS_BYTES, payment=3 * TOKEN, bond=0,
                                         max_duration=600, expires_in=600))
    result = provider.claim_and_compute(job_id, "c.bin")
    provider.serve(job_id, result, provider.submit(job_id, result))
    assert cli("fetch", job_id) == 0
    saved = Path(json.loads(capsys.readouterr().out)["path"])
    assert saved.read_bytes() == result.read_bytes()
    # two downloads signed in the same second carry the same signature: the second is re-signed, not refused
    later = int(time.time()) + 5  # ahead of the fetch above (the node accepts its window either side of now)
    stamps = iter([later, later, later + 1])

    def headers() -> dict[str, str]:
        return sign_result_request(chain.keys[REQUESTER], job_id, provider.address, chain.deployment.chain_id,
                                   next(stamps))

    root = commit_file(result).root
    for name in ("again.bin", "twice.bin"):
        assert download_result(api.url, job_id, headers, root, tmp_path / name, timeout=10).read_bytes() == \
            result.read_bytes()
    assert cli("verify", job_id) == 0
    assert json.loads(capsys.readouterr().out)["report"]["ok"] is True
    assert cli("accept", job_id) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "Finalized"
    assert chain.proto.withdrawable(provider.payout) == 3 * TOKEN - 3 * TOKEN * FEE_BPS // 10_000
    assert cli("follow", job_id) == 0  # already final: returns at once
    assert json.loads(capsys.readouterr().out)["job"]["state"] == "Finalized"
    assert cli("status", job_id) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["job"]["state"] == "Finalized" and "accept_tx" in status["local"]["notes"]
    assert cli("verify", job_id, human=True) == 0
    assert cli("status", job_id, human=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("RIGHT: C = A @ B (24x32 @ 32x16): 16 Freivalds trials passed")
    assert lines[1] == f"job {job_id}: Finalized" and "payment 3, bond 0 tokens" in lines[3]
