"""The end-to-end tests' own chain: an anvil with 1 s blocks (so every stage lasts long enough to be
interrupted), the contracts deployed with a 120 s challenge window, a funded requester, and providers
provisioned as real daemons (scripts/localnode.py). Each test file gets its own chain (module scope), so
the files can run in parallel; each test uses its own operator key."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from web3 import Web3

from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.protocol import Protocol
from scripts.devnet import start_devnet
from scripts.localnode import job_id, offer, provision

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


def start_net(tmp_path_factory):
    """A generator for a module-scoped fixture: `net = pytest.fixture(scope="module")(start_net)`."""
    root = tmp_path_factory.mktemp("net")
    with Anvil(block_time=1) as anvil:
        dep, keys = start_devnet(anvil, 8, 1_000_000, ProtocolParams(fee_bps=FEE_BPS, challenge_window_s=WINDOW),
                                 deployments_dir=root, log=lambda *_: None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url)), dep)
        proto.approve(keys[1], dep.market, 2**256 - 1)
        yield Net(anvil, proto, keys, root / f"{dep.chain_id}.json", shared_bench(tmp_path_factory))


def shared_bench(tmp_path_factory) -> Path:
    """One quick benchmark per test run, shared by every module and xdist worker (ensure_bench locks it)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "bench-quick.json"


def post(net: Net, params: bytes, **kw) -> str:
    o, sig = offer(net.proto, net.keys[1], params, nonce=net.next_nonce(), **kw)
    net.proto.post(net.keys[1], o, params, sig)
    return job_id(net.proto, o)


def matmul(size: int, seed: int) -> bytes:
    return json.dumps({"m": size, "k": size, "n": size, "seed": seed}, separators=(",", ":")).encode()


