"""A provider with earnings to collect, built by hand on the conftest anvil: operator key 2 registered with a
fresh hot payout key (its own keystore, funded with ETH) as the payout address, requester key 1 posting
offers that the operator claims and submits, and a config file that points `gpunode payout` at all of it."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from node.chain.deployments import save_deployment
from node.chain.keys import create_keystore
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity
from node.payout import cli
from tests.conftest import TOKEN, WINDOW, Chain

PAY = 4 * TOKEN
BOND = TOKEN
PASSWORD_ENV = "PAYOUT_TEST_PASSWORD"
PASSWORD = "hot-key-test-password"
HOT_ETH = 10**18  # what the hot payout key starts with
_nonces = itertools.count(5000)


@dataclass
class Scene:
    chain: Chain
    tmp: Path
    hot: LocalAccount  # the payout key: registered payout address, sends every payout transaction
    cold: str  # payout.sweep_to

    @property
    def w3(self) -> Any:
        return self.chain.w3

    @property
    def operator(self) -> str:
        return self.chain.addr(2)

    @property
    def config(self) -> Path:
        return self.tmp / "config.toml"

    def write_config(self, **payout: Any) -> Path:
        """config.toml for this chain; `payout` overrides keys of the [payout] section ("" removes one)."""
        section = {"keystore": str(self.tmp / "hot.json"), "password_env": PASSWORD_ENV, "sweep_to": self.cold,
                   "gas_reserve_eth": "0.05", "max_gas_gwei": 100.0}
        section.update(payout)
        lines = ["[node]", f"data_dir = {json.dumps(str(self.tmp / 'data'))}",
                 "[chain]", "chain_id = 31337", f"rpc_urls = [{json.dumps(self.chain.anvil.url)}]",
                 f"deployments = {json.dumps(str(self.tmp / 'deployments.json'))}", "poll_interval_s = 0.2",
                 "[wallet]", f"keystore = {json.dumps(str(self.tmp / 'operator.json'))}", "[payout]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items() if v is not None]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def submitted(self, count: int) -> list[str]:
        """`count` jobs posted, claimed and submitted; their windows start now."""
        proto, requester = self.chain.proto, self.chain.keys[1]
        ids = []
        for _ in range(count):
            offer = JobOffer(requester=self.chain.addr(1), provider=ZERO_ADDRESS,
                             workload=workload_id("matmul-int8/v1"), paramsHash=keccak(b"p"), inputHash=keccak(b"i"),
                             inputURI="https://x.example/in", payment=PAY, providerBond=BOND, maxDuration=600,
                             expiry=self.now() + 7 * 24 * 3600, nonce=next(_nonces))
            proto.post(requester, offer, b"p", proto.sign(requester, offer))
            job_id = proto.job_id(offer)
            proto.claim(self.chain.keys[2], job_id)
            proto.submit(self.chain.keys[2], job_id, keccak(job_id), 4096, "https://r/x")
            ids.append("0x" + job_id.hex())
        return ids

    def due(self, count: int) -> list[str]:
        """`count` submitted jobs whose challenge window is over."""
        ids = self.submitted(count)
        self.chain.advance(WINDOW + 1)
        return ids

    def state(self, job_id: str) -> int:
        return self.chain.proto.job(bytes.fromhex(job_id[2:]))["state"]

    def nonce(self, who: str | None = None) -> int:
        return self.w3.eth.get_transaction_count(who or self.hot.address, "latest")

    def eth(self, who: str | None = None) -> int:
        return self.w3.eth.get_balance(who or self.hot.address)

    def set_eth(self, wei: int, who: str | None = None) -> None:
        rpc(self.w3, "anvil_setBalance", [who or self.hot.address, hex(wei)])

    def run(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        """`gpunode payout --config <ours> ARGS` in this process; the exit code and the parsed JSON lines."""
        out = io.StringIO()
        code = cli.main(["--config", str(self.config), *args], out=out)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]


def rpc(w3: Any, method: str, params: list[Any]) -> Any:
    reply = w3.provider.make_request(method, params)
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == name]


@pytest.fixture
def scene(chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    hot = Account.create()
    s = Scene(chain, tmp_path, hot, Account.create().address)
    create_keystore(tmp_path / "hot.json", PASSWORD, private_key=hot.key, kdf="pbkdf2", iterations=1000)
    create_keystore(tmp_path / "operator.json", "unused", private_key=bytes.fromhex(chain.keys[2][2:]),
                    kdf="pbkdf2", iterations=1000)
    save_deployment(chain.deployment, tmp_path / "deployments.json")
    s.set_eth(HOT_ETH)
    cap = Capacity("test-gpu", 1, 81920, 1000, 2000, keccak(text="bench"))
    chain.proto.register(chain.keys[2], hot.address, cap, 1, "https://node.example")
    chain.proto.stake(chain.keys[2], 50 * BOND)
    chain.proto.approve(chain.keys[1], chain.deployment.market, 1000 * PAY)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv("GPUNODE_CONFIG", raising=False)
    s.write_config()
    yield s
