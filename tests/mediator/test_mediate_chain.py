"""Mediators against real anvil and the real contracts: a MediatorSet (2 of 3) as the market's arbiter, a real
torch-export job disputed on chain, `gpunode mediate check` re-running the bundle and signing, and
`gpunode mediate submit` resolving. The contract's own checks are exercised directly too: one signature,
unsorted signatures and a non-mediator's signature are all refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from eth_utils import keccak
from safetensors.torch import load_file, save_file
from web3 import Web3

from node.chain.deploy import DeployError, ProtocolParams, deploy_protocol
from node.chain.deployments import Deployment, save_deployment
from node.chain.offers import JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from node.compute.commitment import commit_file
from node.compute.workloads.torch_export import TorchExport, make_bundle
from node.mediator.cli import main
from node.mediator.ruling import Ruling, ruling_digest
from node.requester.terms import file_sha256
from tests.conftest import TOKEN

REQUESTER, OPERATOR, MEDIATORS, OUTSIDER = 2, 3, (6, 7, 8), 9


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@dataclass
class World:
    w3: Web3
    dep: Deployment
    proto: Protocol
    keys: list[str]
    tmp: Path
    bundle: Path
    params: bytes
    honest: Path
    wrong: Path

    def addr(self, i: int) -> str:
        return Protocol.account(self.keys[i]).address

    @property
    def mset(self):  # noqa: ANN201 - a web3 contract
        from node.chain.contracts import load_abi

        return self.w3.eth.contract(address=self.dep.mediator_set, abi=load_abi("MediatorSet"))

    def key_file(self, i: int) -> Path:
        path = self.tmp / f"key{i}.hex"
        path.write_text(self.keys[i] + "\n")
        return path

    def cli(self, i: int, *argv: str) -> int:
        return main(["--rpc", self.w3.provider.endpoint_uri, "--deployments", str(self.tmp / "dep.json"),
                     "--key-file", str(self.key_file(i)), *argv])


@pytest.fixture(scope="module")
def world(anvil, deployed, tmp_path_factory: pytest.TempPathFactory) -> World:  # noqa: ANN001 - conftest fixtures
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    _, keys = deployed
    mediators = tuple(Protocol.account(keys[i]).address for i in MEDIATORS)
    dep = deploy_protocol(w3, keys[0], ProtocolParams(challenge_window_s=3600, mediators=mediators,
                                                      mediator_threshold=2))
    proto = Protocol(w3, dep)
    for i in (REQUESTER, OPERATOR):
        proto.mint(keys[0], proto.account(keys[i]).address, 1000 * TOKEN)
    cap = Capacity("cpu (test)", 1, 0, 0, 0, keccak(text="bench"))
    proto.register(keys[OPERATOR], proto.account(keys[5]).address, cap, price_floor=1, endpoint="http://x")
    proto.stake(keys[OPERATOR], 100 * TOKEN)
    tmp = tmp_path_factory.mktemp("mediate")
    save_deployment(dep, tmp / "dep.json")
    torch.manual_seed(0)
    bundle = tmp / "bundle.safetensors"
    names = make_bundle(Net(), (torch.randn(4, 16),), str(bundle))
    params = {"inputs": names}
    honest, wrong = tmp / "honest.safetensors", tmp / "wrong.safetensors"
    TorchExport().run(params, str(bundle), str(honest), "cpu")
    tensors = load_file(str(honest))
    tensors["out0"][1, 2] += 0.5  # one output value off by far more than any rounding
    save_file(tensors, str(wrong))
    return World(w3, dep, proto, keys, tmp, bundle, json.dumps(params).encode(), honest, wrong)


@pytest.fixture
def snap(world: World) -> Iterator[World]:
    snapshot = world.w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield world
    finally:
        assert world.w3.provider.make_request("evm_revert", [snapshot])["result"] is True


def disputed_job(world: World, committed: Path, nonce: int = 1) -> str:
    """A torch-export job posted, claimed, committed to `committed` and disputed by its requester."""
    proto, me = world.proto, world.addr(REQUESTER)
    now = world.w3.eth.get_block("latest")["timestamp"]
    offer = JobOffer(requester=me, provider="0x" + "00" * 20, workload=workload_id("torch-export/v1"),
                     paramsHash=keccak(world.params), inputHash=file_sha256(world.bundle),
                     inputURI="http://127.0.0.1:9/bundle", payment=5 * TOKEN, providerBond=20 * TOKEN,
                     maxDuration=3600, expiry=now + 3600, nonce=nonce)
    proto.approve(world.keys[REQUESTER], proto.market.address, offer.payment)
    proto.post(world.keys[REQUESTER], offer, world.params, proto.sign(world.keys[REQUESTER], offer))
    job_id = proto.job_id(offer)
    proto.claim(world.keys[OPERATOR], job_id)
    c = commit_file(committed)
    proto.submit(world.keys[OPERATOR], job_id, c.root, c.size, "http://x/results")
    proto.send(world.keys[REQUESTER], proto.market.functions.dispute(job_id))
    return "0x" + job_id.hex()


def check(world: World, mediator: int, job: str, *extra: str) -> tuple[int, Ruling]:
    out = world.tmp / f"ruling-{job[2:10]}-{mediator}.json"
    code = world.cli(mediator, "check", job, "--bundle", str(world.bundle), "--out", str(out), *extra)
    return code, Ruling.from_json(json.loads(out.read_text())) if out.exists() else None


def test_digest_and_domain_match_the_contract(world: World) -> None:
    mset, chain_id = world.mset, world.dep.chain_id
    for job in (bytes(32), keccak(text="job")):
        for verdict in (True, False):
            assert bytes(mset.functions.rulingDigest(job, verdict).call()) == \
                ruling_digest(chain_id, mset.address, job, verdict)
    assert world.proto.market.functions.arbiter().call() == mset.address


def test_two_of_three_rule_a_wrong_result_and_the_provider_is_slashed(snap: World, capsys) -> None:  # noqa: ANN001
    world = snap
    job = disputed_job(world, world.wrong)
    rulings = []
    for m in MEDIATORS[:2]:
        code, ruling = check(world, m, job, "--result", str(world.wrong))
        assert code == 3 and ruling.provider_was_right is False and ruling.signer == world.addr(m)
        assert "out0: 1 of 32 values" in ruling.reason
        assert ruling.evidence["report"]["metrics"]["outputs"]["out0"]["mismatched"] == 1
        rulings.append(world.tmp / f"ruling-{job[2:10]}-{m}.json")
    capsys.readouterr()
    before = world.proto.withdrawable(world.addr(REQUESTER))
    assert world.cli(OUTSIDER, "submit", job, *map(str, rulings)) == 0  # anyone may send it
    assert "resolved: provider wrong" in capsys.readouterr().out
    got = world.proto.job(bytes.fromhex(job[2:]))
    assert got["state"] == 9  # Slashed
    assert world.proto.withdrawable(world.addr(REQUESTER)) - before == 5 * TOKEN + 20 * TOKEN  # payment + bond


def test_an_honest_result_is_upheld_and_the_provider_paid(snap: World, capsys) -> None:  # noqa: ANN001
    world = snap
    job = disputed_job(world, world.honest)
    files = []
    for m in (MEDIATORS[2], MEDIATORS[0]):
        code, ruling = check(world, m, job, "--result", str(world.honest))
        assert code == 0 and ruling.provider_was_right
        files.append(str(world.tmp / f"ruling-{job[2:10]}-{m}.json"))
    assert world.cli(OUTSIDER, "--json", "submit", job, *files, "--dry-run") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["dry_run"] is True
    assert world.cli(OUTSIDER, "submit", job, *files) == 0
    assert world.proto.job(bytes.fromhex(job[2:]))["state"] == 6  # Finalized


def test_no_or_a_mismatching_result_rules_against_the_provider(snap: World) -> None:
    world = snap
    job = disputed_job(world, world.honest)
    code, ruling = check(world, MEDIATORS[0], job, "--no-result")
    assert code == 3 and ruling.reason == "the provider's committed result could not be obtained"
    code, ruling = check(world, MEDIATORS[1], job, "--result", str(world.wrong))  # not the committed file
    assert code == 3 and ruling.reason == "the result file does not match the provider's committed root"


def test_check_refuses_outsiders_wrong_bundles_and_undisputed_jobs(snap: World, capsys) -> None:  # noqa: ANN001
    world = snap
    job = disputed_job(world, world.honest)
    assert world.cli(OUTSIDER, "check", job, "--result", str(world.honest), "--bundle", str(world.bundle)) == 1
    assert "is not a mediator" in capsys.readouterr().err
    assert check(world, MEDIATORS[0], job, "--result", str(world.honest))[0] == 0
    code = world.cli(MEDIATORS[0], "check", job, "--result", str(world.honest), "--bundle", str(world.honest))
    assert code == 1 and "is not this job's input" in capsys.readouterr().err
    assert world.cli(MEDIATORS[0], "check", "0x" + "ab" * 32, "--no-result") == 1
    assert "no job" in capsys.readouterr().err


def test_the_contract_refuses_one_unsorted_or_outsider_signatures(snap: World, capsys) -> None:  # noqa: ANN001
    world = snap
    job = disputed_job(world, world.wrong)
    job_id, mset = bytes.fromhex(job[2:]), world.mset
    paths = []
    for m in MEDIATORS:
        check(world, m, job, "--result", str(world.wrong))
        paths.append(str(world.tmp / f"ruling-{job[2:10]}-{m}.json"))
    capsys.readouterr()
    assert world.cli(OUTSIDER, "submit", job, paths[0]) == 1
    assert "not enough signatures: 0 say the provider was right, 1 wrong; 2 needed" in capsys.readouterr().err

    def sig(i: int) -> tuple[str, bytes]:
        r = Ruling.sign(_signer(world, i), world.dep.chain_id, mset.address, job_id, False)
        return r.signer, r.signature

    signed = sorted((sig(i) for i in MEDIATORS), key=lambda s: int(s[0], 16))
    resolve = mset.functions.resolve
    for bad, error in (([signed[0][1]], "NotEnoughSignatures"),
                       ([signed[1][1], signed[0][1]], "SignersNotAscending"),
                       ([s for _, s in sorted([*signed[:1], sig(OUTSIDER)], key=lambda s: int(s[0], 16))],
                        "NotMediator")):
        with pytest.raises(DeployError, match=error):
            world.proto.send(world.keys[OUTSIDER], resolve(job_id, False, bad))
    # the market accepts resolve only from its arbiter, the MediatorSet
    with pytest.raises(DeployError, match="NotArbiter"):
        world.proto.send(world.keys[0], world.proto.market.functions.resolve(job_id, False))
    world.proto.send(world.keys[OUTSIDER], resolve(job_id, False, [s for _, s in signed[:2]]))
    assert world.proto.job(job_id)["state"] == 9


def _signer(world: World, i: int):  # noqa: ANN202
    from eth_account import Account

    from node.chain.keys import Signer

    return Signer(Account.from_key(world.keys[i]))
