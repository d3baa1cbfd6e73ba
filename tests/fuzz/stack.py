"""The fuzz target: the real node stack on a real chain, in this process so both entry points can be reached.

``start_stack`` starts anvil (automine), deploys the contracts, funds a requester and a second provider,
posts a few genuine offers *before* the node's start block (so the node's follower never hears of them and
a direct replay can only be refused by asking the chain: ``already_posted``, ``nonce_used``), provisions
the node exactly as the end-to-end tests do (``scripts.localnode.provision``: keystore, quick benchmark,
registration, stake, config file) and then runs the real ``NodeService`` on its own event loop in a thread:
real follower, Intake, Journal (SQLite file), policy, RpcOfferView, dispatcher, worker pool and HTTP API.

Running it in-process rather than as ``gpunode run`` is what lets the chain-event fuzzing call the very
``Intake.on_event`` the follower feeds, and lets a test see an exception that escapes it. The HTTP side is
still a real TCP server, reached with a real client.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from node.chain.deploy import ProtocolParams
from node.chain.devnet import Anvil
from node.chain.keys import load_signer
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from node.config import load_settings
from node.jobs.state import JobState
from node.service import NodeService
from scripts.devnet import start_devnet
from scripts.localnode import DEV_PASSWORD, PASSWORD_ENV, TOKEN, ensure_bench, provision
from tests.fuzz.offers import Target

REQUESTER, OPERATOR, OTHER_PROVIDER = 1, 2, 3  # dev account indices
PARAMS = json.dumps({"m": 32, "k": 32, "n": 32, "seed": 7}, separators=(",", ":")).encode()
JSON = {"Content-Type": "application/json"}
TAKEN = frozenset({JobState.VALIDATED, JobState.CLAIMED, JobState.FETCHING, JobState.RUNNING, JobState.COMMITTED,
                   JobState.SUBMITTED, JobState.FINALIZED, JobState.PAID})


@dataclass(repr=False)  # a failing example prints its arguments: keep the stack's line short
class Stack:
    anvil: Anvil
    proto: Protocol
    keys: list[str]
    node: NodeService
    loop: asyncio.AbstractEventLoop
    api_host: str
    api_port: int
    head_time: int  # a chain time the node has certainly seen: anything expiring at or before it is expired
    replays: dict[str, tuple[JobOffer, bytes, bytes]] = field(default_factory=dict)  # name -> (offer, sig, params)
    used_nonces: list[int] = field(default_factory=list)
    controls: set[str] = field(default_factory=set)  # job ids of valid offers sent on purpose (may be taken)
    errors: Any = None  # the conftest's ErrorLog: what the node logged at ERROR while fuzzed
    _nonce: int = 1_000

    def __repr__(self) -> str:
        return f"Stack(node API http://{self.api_host}:{self.api_port}, anvil {self.anvil.url})"

    @property
    def chain_id(self) -> int:
        return self.proto.deployment.chain_id

    @property
    def market(self) -> str:
        return self.proto.deployment.market

    @property
    def requester_key(self) -> str:
        return self.keys[REQUESTER]

    @property
    def requester(self) -> str:
        return Account.from_key(self.keys[REQUESTER]).address

    @property
    def provider(self) -> str:
        return self.node.provider

    def next_nonce(self) -> int:
        self._nonce += 1
        return self._nonce

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Runs ``coro`` on the node's loop (where its tasks live) and returns its result or raises."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.api_host, self.api_port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read(), resp
        finally:
            conn.close()

    def alive(self) -> bool:
        status, body, _ = self.request("GET", "/healthz")
        return status == 200 and json.loads(body) == {"ok": True}

    def target(self) -> Target:
        """What the offer strategies need to know about this node (tests.fuzz.offers)."""
        return Target(self.chain_id, self.market, self.requester_key, self.head_time, self.replays,
                      tuple(self.used_nonces))

    def rejected_counts(self) -> Counter[str]:
        """gpunode_offers_rejected by reason label, as the node counts it."""
        return Counter({s.labels["reason"]: s.value for m in self.node.metrics.offers_rejected.collect()
                        for s in m.samples if s.name.endswith("_total")})

    def taken_jobs(self) -> list[Any]:
        """Journal rows the node took (validated or further): only controls may be among them."""
        return [r for r in self.node.journal.jobs(limit=100_000) if r.state in TAKEN]

    def offer(self, *, nonce: int | None = None, **terms: Any) -> JobOffer:
        """A policy-acceptable offer from the requester (what a mutation starts from), open to any provider."""
        fields: dict[str, Any] = dict(requester=self.requester, provider=ZERO_ADDRESS,
                                      workload=workload_id("matmul-int8/v1"), paramsHash=keccak(PARAMS),
                                      inputHash=b"\x00" * 32, inputURI="", payment=TOKEN, providerBond=TOKEN // 10,
                                      maxDuration=3600, expiry=self.head_time + 24 * 3600,
                                      nonce=self.next_nonce() if nonce is None else nonce)
        fields.update(terms)
        return JobOffer(**fields)


def _post_replay_corpus(proto: Protocol, keys: list[str], stack_nonce: int) -> tuple[dict, list[int]]:
    """Genuine offers on chain the node will not hear of: one left open, one claimed by another provider,
    and one nonce revoked without an offer. Replaying them directly can only be refused by the chain."""
    req, other = keys[REQUESTER], keys[OTHER_PROVIDER]
    now = proto.w3.eth.get_block("latest")["timestamp"]
    corpus: dict[str, tuple[JobOffer, bytes, bytes]] = {}
    for i, name in enumerate(("open", "claimed")):
        o = JobOffer(requester=proto.account(req).address, provider=ZERO_ADDRESS,
                     workload=workload_id("matmul-int8/v1"), paramsHash=keccak(PARAMS), inputHash=b"\x00" * 32,
                     inputURI="", payment=TOKEN, providerBond=TOKEN // 10, maxDuration=3600,
                     expiry=now + 30 * 24 * 3600, nonce=stack_nonce + i)
        sig = proto.sign(req, o)
        proto.post(req, o, PARAMS, sig)
        corpus[name] = (o, sig, PARAMS)
    proto.claim(other, proto.job_id(corpus["claimed"][0]))
    revoked = stack_nonce + 2
    proto.send(req, proto.market.functions.invalidateNonce(revoked))
    return corpus, [stack_nonce, stack_nonce + 1, revoked]


async def _cancel_leftovers() -> None:
    """Connection handlers aiohttp leaves behind after cleanup (a stalled client's), so the loop closes clean."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextmanager
def start_stack(root: Path, *, bench: Path) -> Iterator[Stack]:
    """The whole target, torn down (node drained and stopped, anvil stopped) on exit."""
    with Anvil() as anvil:
        dep, keys = start_devnet(anvil, 6, 1_000_000, ProtocolParams(fee_bps=250, challenge_window_s=3600),
                                 deployments_dir=root, log=lambda *_: None)
        proto = Protocol(Web3(Web3.HTTPProvider(anvil.url)), dep)
        proto.approve(keys[REQUESTER], dep.market, 2**256 - 1)
        attestation = ensure_bench(bench)
        cap = Capacity("cpu (fuzz)", 1, 0, 0, 0, bytes.fromhex(attestation["benchmark_hash"][2:]))
        proto.register(keys[OTHER_PROVIDER], Account.create().address, cap, price_floor=10**12,
                       endpoint="http://127.0.0.1:9")
        proto.stake(keys[OTHER_PROVIDER], 1000 * TOKEN)
        replays, used = _post_replay_corpus(proto, keys, 1)
        start = proto.w3.eth.block_number + 1  # the node follows from here on: the corpus stays unknown to it
        local = provision(proto, anvil.url, root / f"{dep.chain_id}.json", keys[OPERATOR],
                          Account.create().address, root / "node", bench=bench,
                          settings={"chain": {"start_block": start},
                                    "node": {"log_level": "warning"}})
        settings = load_settings(local.config, env={PASSWORD_ENV: DEV_PASSWORD})
        signer = load_signer(settings.wallet.keystore, DEV_PASSWORD)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fuzz-node", daemon=True)
        thread.start()

        async def build() -> NodeService:
            service = NodeService(settings, signer)
            await service.start()
            return service

        node = None
        try:
            node = asyncio.run_coroutine_threadsafe(build(), loop).result(180)
            host, port = node.api.addresses[0][:2]
            stack = Stack(anvil, proto, keys, node, loop, host, port,
                          head_time=proto.w3.eth.get_block("latest")["timestamp"], replays=replays,
                          used_nonces=used)
            yield stack
        finally:
            if node is not None:
                asyncio.run_coroutine_threadsafe(node.stop(), loop).result(180)
            asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()
