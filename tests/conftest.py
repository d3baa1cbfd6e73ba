"""Shared fixtures: a real anvil (from the npm package), the real compiled contracts deployed on it,
and funded dev accounts. Each test runs inside an EVM snapshot that is reverted afterwards, so tests
share one chain without seeing each other's state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web3 import Web3

from node.chain.deploy import ProtocolParams, deploy_protocol
from node.chain.deployments import Deployment
from node.chain.devnet import Anvil, dev_keys
from node.chain.protocol import Protocol

TOKEN = 10**18
FEE_BPS = 250
WINDOW = 3600


@dataclass
class Chain:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    proto: Protocol
    keys: list[str]

    def addr(self, i: int) -> str:
        return Protocol.account(self.keys[i]).address

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil(accounts=10) as node:
        yield node


@pytest.fixture(scope="session")
def deployed(anvil: Anvil) -> tuple[Deployment, list[str]]:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    keys = dev_keys(10)
    dep = deploy_protocol(w3, keys[0], ProtocolParams(fee_bps=FEE_BPS, challenge_window_s=WINDOW))
    proto = Protocol(w3, dep)
    for key in keys[1:6]:
        proto.mint(keys[0], proto.account(key).address, 1_000_000 * TOKEN)
    return dep, keys


@pytest.fixture
def chain(anvil: Anvil, deployed: tuple[Deployment, list[str]]) -> Iterator[Chain]:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    snap = w3.provider.make_request("evm_snapshot", [])["result"]
    dep, keys = deployed
    try:
        yield Chain(anvil, w3, dep, Protocol(w3, dep), keys)
    finally:
        assert w3.provider.make_request("evm_revert", [snap])["result"] is True
