"""matmul-int8 fraud proofs from the requester's side against real anvil and the real contracts (the
MatmulInt8Verifier deployed by deploy_protocol): a located wrong element slashes the provider in one
transaction; a right one leaves the job alone and pays the bond to the provider; an audit or a demand left
unanswered slashes at the deadline, one answered with the committed chunk is judged on it; the `run`
pipeline challenges a wrong result and audits a withheld one. The test plays the provider by hand (as in
test_requester_chain) with the node's API serving what it chooses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from eth_utils import keccak

from node.chain import fraud
from node.compute.commitment import commit_file
from node.compute.workloads import save_safetensors
from node.compute.workloads.matmul_int8 import MatmulInt8
from node.requester.cli import main
from node.requester.client import Requester
from node.requester.errors import RequesterError
from node.requester.pipeline import JobSpec, run_job
from node.requester.state import JobRecord
from tests.api.fakes import FakeNode
from tests.conftest import TOKEN, Chain
from tests.requester.test_requester_chain import Provider as ApiProvider
from tests.requester.test_requester_chain import ProviderApi, requester

SEED = {"m": 24, "k": 40, "n": 16, "seed": 5}
PAYMENT, BOND = 2 * TOKEN, 4 * TOKEN


@pytest.fixture
def provider_api(tmp_path: Path) -> Iterator[ProviderApi]:
    (tmp_path / "api").mkdir()
    node = FakeNode(tmp_path / "api")
    try:
        with ProviderApi(node) as server:
            yield server
    finally:
        node.journal.close()


class Provider(ApiProvider):
    """Claims, computes with the real workload (optionally corrupting C), commits, submits, reveals."""

    def work(self, job_id: str, record: JobRecord, *, edits: dict[int, int] | None = None) -> Path:
        self.chain.proto.claim(self.key, bytes.fromhex(job_id[2:]))
        p = fraud.MatmulParams.from_params(record.params)
        plain = {"m": p.m, "k": p.k, "n": p.n, **({"input": "safetensors"} if p.supplied else {"seed": p.seed})}
        out = self.tmp / f"c-{job_id[2:10]}.bin"
        MatmulInt8().run(plain, record.input_path, str(out), "cpu")
        if edits:
            c = np.fromfile(out, dtype="<i4")
            for index, delta in edits.items():
                c[index] += delta
            c.tofile(out)
        self.submit(job_id, out)
        return out

    def reveal(self, verifier, record: JobRecord, result: Path) -> None:  # type: ignore[no-untyped-def]
        demand = verifier.functions.demands(bytes.fromhex(record.job_id[2:])).call()
        i, j = demand[2], demand[3]
        index, _ = fraud.MatmulParams.from_params(record.params).element_chunk(i, j)
        chunk, proof = fraud.chunk_proof(result, index)
        self.chain.proto.send(self.key, verifier.functions.reveal(record.signed.offer.as_struct(), chunk, proof))


def post(req: Requester, params: dict, input_path: Path | None = None) -> JobRecord:
    req.ensure_allowance(PAYMENT)
    job_id, _ = req.post(req.build_offer("matmul-int8/v1", json.dumps(params).encode(), payment=PAYMENT, bond=BOND,
                                         max_duration=600, expires_in=600, input_path=input_path,
                                         input_uri="http://127.0.0.1:1/ab" if input_path else ""))
    return req.store.load(job_id)


def state(chain: Chain, job_id: str) -> int:
    return chain.proto.job(bytes.fromhex(job_id[2:]))["state"]


SLASHED, CHALLENGED, SUBMITTED = 9, 5, 3


def test_a_located_wrong_element_slashes_the_provider(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    record = post(req, SEED)
    result = provider.work(record.job_id, record, edits={9 * 16 + 4: 3})
    bond = req.proofs.bond()
    assert bond == 10 * TOKEN  # ProtocolParams' default challenge bond
    tokens_before = req.balances()["tokens"]
    outcome = req.proofs.challenge(record.job_id, result)
    assert (outcome.i, outcome.j, outcome.fraud, outcome.state) == (9, 4, True, "Slashed")
    assert outcome.committed - outcome.expected == 3
    assert [s.name for s in outcome.steps] == ["approve bond", "challenge"]
    assert state(chain, record.job_id) == SLASHED
    # the bond came back in the same transaction; the payment and half the provider's bond are credited
    assert req.balances()["tokens"] == tokens_before
    assert req.balances()["credit"] == PAYMENT + BOND // 2
    print(f"challenge gas (k={SEED['k']}): {outcome.gas_used:,}")
    assert 0 < outcome.gas_used < 1_000_000
    assert req.store.load(record.job_id).notes["proofs"][-1]["fraud"] is True
    with pytest.raises(RequesterError, match="Slashed, not Submitted"):
        req.proofs.challenge(record.job_id, result)


def test_an_honest_result_survives_and_the_bond_pays_the_provider(chain: Chain, tmp_path: Path,
                                                                   provider_api) -> None:  # type: ignore[no-untyped-def]
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    record = post(req, SEED)
    result = provider.work(record.job_id, record)
    with pytest.raises(RequesterError, match="nothing to challenge"):
        req.proofs.challenge(record.job_id, result)
    with pytest.raises(RequesterError, match=r"C\[2, 3\] = .* is right"):
        req.proofs.challenge(record.job_id, result, (2, 3))
    other = tmp_path / "other.bin"
    other.write_bytes(result.read_bytes()[::-1])
    with pytest.raises(RequesterError, match="not the result committed"):
        req.proofs.challenge(record.job_id, other, (2, 3))
    payout_before, mine = chain.proto.balance(provider.payout), req.balances()["tokens"]
    outcome = req.proofs.challenge(record.job_id, result, (2, 3), force=True)
    assert (outcome.fraud, outcome.state) == (False, "Submitted")
    assert chain.proto.balance(provider.payout) == payout_before + req.proofs.bond()
    assert req.balances()["tokens"] == mine - req.proofs.bond()
    assert state(chain, record.job_id) == SUBMITTED


def test_an_unanswered_audit_slashes_at_the_deadline(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    record = post(req, SEED)
    assert record.audit_secret is not None
    provider.work(record.job_id, record)  # committed, then never served or revealed
    secret = bytes.fromhex(record.audit_secret[2:])
    root = bytes.fromhex(req.job(record.job_id)["resultRoot"][2:])
    outcome = req.proofs.audit(record.job_id)
    p = fraud.MatmulParams.from_params(record.params)
    assert (outcome.i, outcome.j) == fraud.audit_position(p, secret, root)
    assert outcome.state == "Challenged" and outcome.deadline > req.now()
    assert outcome.expected == fraud.expected_element(p, outcome.i, outcome.j)
    print(f"audit gas: {outcome.gas_used:,}")
    with pytest.raises(RequesterError, match="may still reveal"):
        req.proofs.reveal_timeout(record.job_id)
    chain.advance(outcome.deadline - req.now() + 1)
    tokens = req.balances()["tokens"]
    timed_out = req.proofs.reveal_timeout(record.job_id)
    assert (timed_out.fraud, timed_out.state) == (True, "Slashed")
    assert req.balances()["tokens"] == tokens + req.proofs.bond()  # the bond back
    print(f"revealTimeout gas: {timed_out.gas_used:,}")


def test_a_demand_is_judged_on_the_revealed_chunk(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    verifier = req.proofs.verifier
    honest = post(req, SEED)
    result = provider.work(honest.job_id, honest)
    demanded = req.proofs.demand(honest.job_id, (20, 15))
    assert (demanded.i, demanded.j, demanded.state) == (20, 15, "Challenged")
    provider.reveal(verifier, honest, result)
    verdict = req.proofs.wait_reveal(honest.job_id, timeout=10)
    assert (verdict.fraud, verdict.state) == (False, "Submitted")
    assert verdict.committed == verdict.expected

    cheat = post(req, SEED)
    wrong = provider.work(cheat.job_id, cheat, edits={20 * 16 + 15: -1})
    req.proofs.demand(cheat.job_id, (20, 15))
    provider.reveal(verifier, cheat, wrong)
    verdict = req.proofs.wait_reveal(cheat.job_id, timeout=10)
    assert (verdict.fraud, verdict.state) == (True, "Slashed")
    with pytest.raises(RequesterError, match="outside C"):
        req.proofs.demand(honest.job_id, (24, 0))  # back to Submitted after the right reveal


def test_supplied_inputs_are_proven_against_ab_root(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(8)
    path = tmp_path / "ab.safetensors"
    save_safetensors({"A": torch.randint(-128, 128, (18, 33), generator=gen, dtype=torch.int8),
                      "B": torch.randint(-128, 128, (33, 10), generator=gen, dtype=torch.int8)}, str(path))
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    record = post(req, {"m": 18, "k": 33, "n": 10, "input": "safetensors"}, path)
    assert fraud.MatmulParams.from_params(record.params).supplied
    result = provider.work(record.job_id, record, edits={17 * 10 + 9: 1 << 12})
    outcome = req.proofs.challenge(record.job_id, result)
    assert (outcome.i, outcome.j, outcome.fraud, outcome.state) == (17, 9, True, "Slashed")


def test_the_commands(chain: Chain, tmp_path: Path, provider_api, capsys) -> None:  # type: ignore[no-untyped-def]
    from node.chain.deployments import save_deployment

    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    deployments = tmp_path / "deployments.json"
    save_deployment(chain.deployment, deployments)
    key = tmp_path / "requester.key"
    key.write_text(chain.keys[2] + "\n")
    base = ["--rpc", chain.anvil.url, "--deployments", str(deployments), "--key-file", str(key),
            "--state-dir", str(tmp_path / "state"), "--json"]
    record = post(req, SEED)
    result = provider.work(record.job_id, record, edits={0: 1})
    assert main(["status", record.job_id, *base]) == 0
    assert record.audit_secret not in capsys.readouterr().out  # never shown unless asked
    assert main(["status", record.job_id, "--show-secret", *base]) == 0
    assert json.loads(capsys.readouterr().out)["local"]["audit_secret"] == record.audit_secret
    assert main(["challenge", record.job_id, "--result", str(result), "--element", "0,1", *base]) == 1
    assert "is right" in capsys.readouterr().err
    assert main(["challenge", record.job_id, "--result", str(result), *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["i"], out["j"], out["fraud"], out["state"]) == (0, 0, True, "Slashed") and out["gas_used"] > 0

    record = post(req, SEED)
    provider.work(record.job_id, record)
    assert main(["audit", record.job_id, *base]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit["state"] == "Challenged" and audit["deadline"] > 0
    assert main(["reveal-timeout", record.job_id, *base]) == 1
    assert "may still reveal" in capsys.readouterr().err
    chain.advance(audit["deadline"] - req.now() + 1)
    assert main(["reveal-timeout", record.job_id, *base]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "Slashed"
    assert main(["demand", record.job_id, "--element", "1,x", *base]) == 2


def _pipeline(chain: Chain, tmp_path: Path, provider_api, act) -> tuple:  # type: ignore[no-untyped-def]
    """run_job with the provider acting (``act(provider, req, job_id)``) as soon as the offer is posted."""
    provider, req = Provider(chain, provider_api, tmp_path), requester(chain, tmp_path)
    events: list[tuple[str, dict]] = []

    def emit(event: str, message: str, fields: dict) -> None:
        events.append((event, fields))
        if event == "posted":
            act(provider, req, next(f for e, f in events if e == "signed")["job_id"])
        if event in ("audit", "demand"):  # nobody reveals: let the deadline pass
            chain.advance(fields["deadline"] - req.now() + 1)

    spec = JobSpec("matmul-int8/v1", json.dumps(SEED).encode(), PAYMENT, BOND, max_duration=600, expires_in=600)
    outcome = run_job(req, spec, timeout=4, emit=emit)
    return outcome, [e for e, _ in events]


def test_run_challenges_a_wrong_result(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    def cheat(provider: Provider, req: Requester, job_id: str) -> None:
        result = provider.work(job_id, req.store.load(job_id), edits={100: 7})
        provider.serve(job_id, result, commit_file(result).root)

    outcome, names = _pipeline(chain, tmp_path, provider_api, cheat)
    assert names[-3:] == ["fetched", "verified", "challenged"], names
    assert outcome.wrong and outcome.fraud is True and outcome.state == "Slashed"


def test_run_audits_a_withheld_result(chain: Chain, tmp_path: Path, provider_api) -> None:  # type: ignore[no-untyped-def]
    def withhold(provider: Provider, req: Requester, job_id: str) -> None:
        provider.work(job_id, req.store.load(job_id))
        provider.record(job_id)  # the node knows the job but never serves a result

    outcome, names = _pipeline(chain, tmp_path, provider_api, withhold)
    assert names[-3:] == ["unfetched", "audit", "slashed"], names
    assert outcome.wrong and outcome.fraud is True and outcome.state == "Slashed" and outcome.report is None


def test_the_verifier_address_is_the_deployed_one(chain: Chain, tmp_path: Path) -> None:
    req = requester(chain, tmp_path)
    assert req.proofs.verifier.functions.workload().call() == keccak(text="matmul-int8/v1")
