"""One real provider daemon on a local chain, shared by the node-level figures (idle memory, event-to-claim
latency, gas per step): the report starts anvil, deploys and provisions once and measures all three on the
same node, side by side, instead of paying the start-up three times.

Built from the pieces the end-to-end tests use (``tests.e2e.nodenet.Net``, ``scripts.localnode``), so the
figures come from the daemon exactly as an operator runs it: ``gpunode run`` in its own process, a keystore,
a config file, anvil with 1 s blocks. The node logs JSON lines so per-job figures can be read back from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.protocol import Protocol
from scripts.devnet import start_devnet
from scripts.localnode import TOKEN, LocalNode, envelope, job_id, offer
from tests.e2e.nodenet import Net, matmul

FEE_BPS = 250
WINDOW_S = 60  # challenge window: short, the chain clock is jumped past it anyway
REQUESTER, OPERATOR = 1, 2  # dev account indexes
PAST_CLAIM = {"claimed", "fetching", "running", "committed", "submitted", "finalized", "paid"}
SLOT_FREE = {"committed", "submitted", "finalized", "paid"}  # the device slot is released at commit
FAILED = {"rejected", "failed", "expired"}


@dataclass
class DevNode:
    net: Net
    node: LocalNode

    @property
    def proto(self) -> Protocol:
        return self.net.proto

    def post(self, size: int = 32, seed: int = 0) -> str:
        """Posts a small matmul-int8 offer on chain (waits for its receipt); returns the job id."""
        params = matmul(size, seed)
        o, sig = offer(self.proto, self.net.keys[REQUESTER], params, nonce=self.net.next_nonce(), payment=2 * TOKEN)
        self.proto.post(self.net.keys[REQUESTER], o, params, sig)
        return job_id(self.proto, o)

    def direct(self, size: int = 32, seed: int = 0) -> str:
        """Sends a small matmul-int8 offer addressed to this node to POST /offers; returns the job id."""
        params = matmul(size, seed)
        o, sig = offer(self.proto, self.net.keys[REQUESTER], params, nonce=self.net.next_nonce(), payment=2 * TOKEN,
                       provider=self.node.address)
        status, body, _ = self.node.request("/offers", body=envelope(self.proto, o, params, sig))
        if status >= 300:
            raise RuntimeError(f"direct offer refused: HTTP {status} {body[:300]!r}")
        return job_id(self.proto, o)

    def wait_jobs(self, job_ids: list[str], states: set[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        """Waits until every job is in one of ``states``; a job that ends rejected/failed/expired is an error
        (the figures would silently describe fewer jobs)."""
        def check() -> dict[str, dict[str, Any]] | None:
            jobs = self.node.jobs()
            bad = {j: jobs[j] for j in job_ids if jobs.get(j, {}).get("state") in FAILED}
            if bad:
                raise RuntimeError(f"jobs went wrong: {bad}; node log:\n{self.node.tail()}")
            return jobs if all(jobs.get(j, {}).get("state") in states for j in job_ids) else None

        return self.node.wait(check, timeout, f"{len(job_ids)} job(s) to reach {sorted(states)}", poll=0.1)

    def log_records(self, key: str) -> list[dict[str, Any]]:
        """The node's JSON log lines that carry ``key`` (an ``extra=`` field)."""
        out = []
        for line in self.node.log_path.read_text(errors="replace").splitlines():
            if key in line and line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if key in rec:
                    out.append(rec)
        return out

    def metrics_text(self) -> str:
        status, body, _ = self.node.request("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return body.decode()


@contextmanager
def devnode(work: Path, log: Callable[[str], None] = print, **settings: dict[str, Any]) -> Iterator[DevNode]:
    """Anvil (1 s blocks) with the contracts, a funded requester, and a started daemon; all stopped on exit.
    ``settings``: config sections for the node, e.g. ``hardware={"worker_idle_s": 30}``."""
    work.mkdir(parents=True, exist_ok=True)
    with Anvil(block_time=1) as anvil:
        dep, keys = start_devnet(anvil, 4, 1_000_000, ProtocolParams(fee_bps=FEE_BPS, challenge_window_s=WINDOW_S),
                                 deployments_dir=work, log=lambda *_: None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url)), dep)
        proto.approve(keys[REQUESTER], dep.market, 2**256 - 1)
        net = Net(anvil, proto, keys, work / f"{dep.chain_id}.json", work / "bench-quick.json")
        node = net.node(work, OPERATOR, **{"node": {"log_json": True}, **settings})
        log(f"  daemon: starting gpunode run (data dir {node.data_dir})")
        node.start()
        try:
            yield DevNode(net, node)
        finally:
            node.stop()
