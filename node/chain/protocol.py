"""Synchronous, one-call-per-step access to the protocol contracts for scripts, the demo and tests.

The node itself goes through the async transaction manager (idempotency keys, fee bumping, reorg
handling); this module is for operator tools where a human watches each step and a plain
sign-send-wait is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from node.chain.contracts import load_abi
from node.chain.deploy import send
from node.chain.deployments import Deployment
from node.chain.offers import JobOffer, offer_digest, sign_offer


@dataclass(frozen=True)
class Capacity:
    gpu_model: str
    device_count: int
    vram_mib: int
    int8_tops_milli: int
    bf16_tflops_milli: int
    benchmark_hash: bytes

    def as_struct(self) -> tuple:
        return (self.gpu_model, self.device_count, self.vram_mib, self.int8_tops_milli,
                self.bf16_tflops_milli, self.benchmark_hash)


class Protocol:
    """The deployed token, registry and market on one chain."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.token = w3.eth.contract(address=deployment.token, abi=load_abi("GpuToken"))
        self.registry = w3.eth.contract(address=deployment.registry, abi=load_abi("ProviderRegistry"))
        self.market = w3.eth.contract(address=deployment.market, abi=load_abi("JobMarket"))

    @staticmethod
    def account(key: str | bytes) -> LocalAccount:
        return Account.from_key(key)

    def send(self, key: str | bytes, call: Any) -> Any:
        return send(self.w3, self.account(key), call)

    # -- token
    def mint(self, owner_key: str | bytes, to: str, amount: int) -> Any:
        return self.send(owner_key, self.token.functions.mint(to, amount))

    def approve(self, key: str | bytes, spender: str, amount: int) -> Any:
        return self.send(key, self.token.functions.approve(spender, amount))

    def balance(self, who: str) -> int:
        return self.token.functions.balanceOf(who).call()

    # -- provider
    def register(self, operator_key: str | bytes, payout: str, capacity: Capacity, price_floor: int,
                 endpoint: str, metadata_uri: str = "") -> Any:
        call = self.registry.functions.register(payout, capacity.as_struct(), price_floor, endpoint, metadata_uri)
        return self.send(operator_key, call)

    def stake(self, operator_key: str | bytes, amount: int) -> Any:
        self.approve(operator_key, self.registry.address, amount)
        return self.send(operator_key, self.registry.functions.stake(amount))

    # -- jobs
    def job_id(self, offer: JobOffer) -> bytes:
        return offer_digest(offer, self.deployment.chain_id, self.market.address)

    def sign(self, requester_key: str | bytes, offer: JobOffer) -> bytes:
        return sign_offer(offer, requester_key, self.deployment.chain_id, self.market.address)

    def post(self, sender_key: str | bytes, offer: JobOffer, params: bytes, signature: bytes) -> Any:
        return self.send(sender_key, self.market.functions.postOffer(offer.as_struct(), params, signature))

    def claim(self, operator_key: str | bytes, job_id: bytes) -> Any:
        return self.send(operator_key, self.market.functions.claim(job_id))

    def claim_signed(self, operator_key: str | bytes, offer: JobOffer, params: bytes, signature: bytes) -> Any:
        return self.send(operator_key, self.market.functions.claimSigned(offer.as_struct(), params, signature))

    def submit(self, operator_key: str | bytes, job_id: bytes, root: bytes, size: int, uri: str) -> Any:
        return self.send(operator_key, self.market.functions.submitResult(job_id, root, size, uri))

    def finalize(self, key: str | bytes, job_id: bytes) -> Any:
        return self.send(key, self.market.functions.finalize(job_id))

    def withdraw(self, key: str | bytes) -> Any:
        return self.send(key, self.market.functions.withdraw())

    def job(self, job_id: bytes) -> dict[str, Any]:
        """getJob as a dict keyed by the Job struct's field names."""
        call = self.market.functions.getJob(job_id)
        names = [o["name"] for o in call.abi["outputs"][0]["components"]]
        return dict(zip(names, call.call(), strict=True))

    def withdrawable(self, who: str) -> int:
        return self.market.functions.balanceOf(who).call()
