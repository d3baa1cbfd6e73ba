"""Real matmul-int8 jobs on the conftest anvil for the fraud-proof tests: canonical params, a posted and
claimed offer, the honest result (torch) or a wrong one, and the deployed MatmulInt8Verifier."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from eth_account import Account
from eth_utils import keccak

from node.chain.contracts import load_abi
from node.chain.fraud import VERIFIER, WORKLOAD, MatmulParams
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity
from node.chain.verify import SignedOffer
from node.compute.commitment import commit_bytes
from node.compute.workloads.generator import generate_ab
from node.compute.workloads.matmul_int8 import matmul_exact
from tests.conftest import TOKEN, Chain

PAY = 4 * TOKEN
BOND = 2 * TOKEN
_nonces = itertools.count(50_000)


def verifier(chain: Chain) -> Any:
    address = getattr(chain.deployment, "verifier", None)
    assert address, "deploy_protocol did not deploy MatmulInt8Verifier"
    return chain.w3.eth.contract(address=address, abi=load_abi(VERIFIER))


def product(p: MatmulParams, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """C for the params: from the seed, or from the given supplied matrices."""
    if a is None or b is None:
        a, b = generate_ab(p.seed, p.m, p.k, p.n)
    return matmul_exact(a, b)[0]


def result_bytes(c: torch.Tensor, flip: tuple[int, int] | None = None) -> bytes:
    """C as the worker writes it (int32 LE row-major); ``flip`` adds 1 to one element (a one-element cheat)."""
    c = c.clone()
    if flip is not None:
        c[flip] += 1
    return c.contiguous().numpy().astype("<i4").tobytes()


@dataclass
class MatmulJob:
    chain: Chain
    params: MatmulParams
    signed: SignedOffer
    operator_key: str
    requester_key: str

    @property
    def offer(self) -> JobOffer:
        return self.signed.offer

    @property
    def job_id(self) -> str:
        return "0x" + self.signed.job_id.hex()

    @property
    def raw_id(self) -> bytes:
        return self.signed.job_id

    def claim(self) -> None:
        self.chain.proto.claim(self.operator_key, self.raw_id)

    def submit(self, result: bytes, path: Path | None = None) -> bytes:
        """Submits the root of ``result`` (written to ``path`` when given); returns the root."""
        if path is not None:
            path.write_bytes(result)
        root = commit_bytes(result).root
        self.chain.proto.submit(self.operator_key, self.raw_id, root, len(result), "https://r.example/x")
        return root

    def state(self) -> int:
        return int(self.chain.proto.job(self.raw_id)["state"])


def provider(chain: Chain, operator_key: str, payout: str | None = None) -> str:
    """Registers and stakes an operator; returns its payout address."""
    payout = payout or Account.create().address
    cap = Capacity("test-gpu", 1, 81920, 1000, 2000, keccak(text="bench"))
    chain.proto.register(operator_key, payout, cap, 1, "https://node.example")
    chain.proto.stake(operator_key, 100 * BOND)
    return payout


def post(chain: Chain, p: MatmulParams, requester_key: str, operator_key: str, *,
         input_uri: str = "", input_hash: bytes = b"\x00" * 32) -> MatmulJob:
    """Posts an open matmul offer with the params' canonical bytes."""
    now = chain.w3.eth.get_block("latest")["timestamp"]
    offer = JobOffer(requester=Account.from_key(requester_key).address, provider=ZERO_ADDRESS,
                     workload=workload_id(WORKLOAD), paramsHash=p.params_hash, inputHash=input_hash,
                     inputURI=input_uri, payment=PAY, providerBond=BOND, maxDuration=3600,
                     expiry=now + 7 * 24 * 3600, nonce=next(_nonces))
    chain.proto.approve(requester_key, chain.deployment.market, PAY)
    signature = chain.proto.sign(requester_key, offer)
    chain.proto.post(requester_key, offer, p.canonical(), signature)
    signed = SignedOffer(offer, signature, chain.deployment.chain_id, chain.deployment.market, p.canonical())
    return MatmulJob(chain, p, signed, operator_key, requester_key)


def send_raw(chain: Chain, key: str, to: str, data: bytes) -> Any:
    """A signed transaction with raw call data (what the requester tools and the node send); the receipt."""
    from node.chain.deploy import send

    return send(chain.w3, Account.from_key(key), {"to": to, "data": data, "gasPrice": chain.w3.eth.gas_price})
