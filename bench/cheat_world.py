"""The cheat simulation's world: one anvil with the real contracts (market, MatmulInt8Verifier, a 2-of-3
MediatorSet as arbiter), a requester using gpunode's own requester tools, and providers that are
registered, staked operator keys driven with gpunode's chain library.

Why a world of its own rather than the e2e node network: the cheaters are providers that deliberately
deviate from the node (commit one thing, serve another, never answer), which a real node refuses to do,
so each provider here is only the parts of a node the protocol sees: its claim and submitResult
transactions (node.chain.protocol), its result download endpoint (a stand-in HTTP server answering
``GET /results/<job>`` the way the node's API does, without the signed-request check) and, for providers
that answer reveal demands, the node's own reveal logic (node.jobs.reveal.Revealer with a real Journal and
TxManager on the operator's key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from node.chain.deploy import ProtocolParams, deploy_protocol
from node.chain.devnet import Anvil, dev_keys
from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import Signer
from node.chain.protocol import Capacity, Protocol
from node.chain.provider import OperatorChain

TOKEN = 10**18
STAKE = 100_000 * TOKEN
FUNDS = 10_000_000 * TOKEN
CHALLENGE_WINDOW_S = 6 * 3600  # long enough for a demand, its reveal window and a timeout, in chain time
REVEAL_WINDOW_S = 600
MEDIATORS = 3
THRESHOLD = 2


class ResultServer:
    """Stand-in for the providers' result APIs: ``GET /p/<provider>/results/<job id>`` serves the file the
    provider chose to serve for that job, or 404 ``no_result`` (the node's answer while it has none)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], Path] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = self.path.strip("/").split("/")
                path = None
                if len(parts) == 4 and parts[0] == "p" and parts[2] == "results":
                    path = server.files.get((parts[1], parts[3].lower()))
                if path is None or not path.is_file():
                    body = json.dumps({"error": "no_result", "detail": "no result for this job"}).encode()
                    self.send_response(HTTPStatus.NOT_FOUND)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = path.read_bytes()
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="result-server")
        self.thread.start()

    def endpoint(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/p/{provider}"

    def serve(self, provider: str, job_id: str, path: Path | None) -> None:
        if path is not None:
            self.files[(provider, job_id.lower())] = path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class AsyncRunner:
    """One event loop in a thread for the providers' async node parts (TxManager, Revealer)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="provider-nodes")
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.stack.aclose(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Provider:
    """One registered, staked operator. ``revealer`` is the node's reveal logic when it answers demands."""

    name: str
    key: str
    payout: str
    endpoint: str
    journal: Any = None
    revealer: Any = None

    @property
    def address(self) -> str:
        return Account.from_key(self.key).address


@dataclass
class World:
    anvil: Anvil
    w3: Web3
    proto: Protocol
    deployment: Any
    keys: list[str]
    root: Path
    server: ResultServer
    runner: AsyncRunner
    mediator_keys: list[str]
    providers: dict[str, Provider] = field(default_factory=dict)
    _next_key: int = 0

    # -- chain time ----------------------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def gas_of(self, tx_hash: Any) -> int:
        return int(self.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])

    # -- accounts ------------------------------------------------------------------------------------------
    def fresh_key(self) -> str:
        """A new funded key (ETH from anvil, tokens minted by the deployer)."""
        account = Account.create()
        self.w3.provider.make_request("anvil_setBalance", [account.address, hex(1000 * 10**18)])
        self.proto.mint(self.keys[0], account.address, FUNDS)
        return account.key.to_0x_hex()

    def requester(self, name: str) -> Any:
        """A node.requester Requester on a fresh funded key, state under the world's directory."""
        from node.requester.client import Requester

        chain = OperatorChain(self.w3, self.deployment, FeePolicy(int(500 * GWEI), int(0.1 * GWEI)))
        req = Requester(chain, Signer(Account.from_key(self.fresh_key())), state_dir=self.root / f"req-{name}",
                        poll_s=0.05)
        req.ensure_allowance(2**200)
        return req

    def provider(self, name: str, *, answers: bool) -> Provider:
        """Registers and stakes a provider; ``answers``: it runs the node's Revealer on its own key."""
        key = self.fresh_key()
        payout = Account.create().address
        cap = Capacity("sim-gpu", 1, 81920, 1000, 2000, keccak(text="bench"))
        endpoint = self.server.endpoint(name)
        self.proto.register(key, payout, cap, 1, endpoint)
        self.proto.stake(key, STAKE)
        prov = Provider(name, key, payout, endpoint)
        if answers:
            self.runner.run(self._start_revealer(prov))
        self.providers[name] = prov
        return prov

    async def _start_revealer(self, prov: Provider) -> None:
        from node.chain.rpc import RpcClient
        from node.chain.txmanager import TxManager
        from node.chain.txstore import TxStore
        from node.jobs.journal import Journal
        from node.jobs.reveal import Revealer

        folder = self.root / f"node-{prov.name}"
        folder.mkdir(parents=True, exist_ok=True)
        stack = self.runner.stack
        rpc = RpcClient([self.anvil.url], timeout=10, poll_interval=0.05)
        stack.push_async_callback(rpc.close)
        store = TxStore(folder / "tx.db")
        stack.callback(store.close)
        txm = TxManager(rpc, store, Signer(Account.from_key(prov.key)), self.deployment.chain_id,
                        FeePolicy(int(500 * GWEI), int(0.1 * GWEI)), confirmations=1, bump_after_blocks=2,
                        reorg_depth=16)
        await stack.enter_async_context(txm)
        prov.journal = Journal(folder / "node.db")
        stack.callback(prov.journal.close)
        prov.revealer = Revealer(prov.journal, txm, rpc, self.deployment.verifier, prov.address, None,
                                 chain_time=self.now, recheck_s=3600)

    def close(self) -> None:
        self.runner.close()
        self.server.close()


@contextlib.contextmanager
def world(root: Path):
    """Starts anvil (automine: chain time moves only when told), deploys everything, yields the World."""
    root.mkdir(parents=True, exist_ok=True)
    with Anvil(accounts=6) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        keys = dev_keys(6)
        mediator_keys = sorted((Account.create().key.to_0x_hex() for _ in range(MEDIATORS)),
                               key=lambda k: Account.from_key(k).address.lower())
        params = ProtocolParams(fee_bps=250, challenge_window_s=CHALLENGE_WINDOW_S, challenge_bond=10 * TOKEN,
                                reveal_window_s=REVEAL_WINDOW_S,
                                mediators=tuple(Account.from_key(k).address for k in mediator_keys),
                                mediator_threshold=THRESHOLD)
        dep = deploy_protocol(w3, keys[0], params)
        if not getattr(dep, "verifier", None) or not getattr(dep, "mediator_set", None):
            raise RuntimeError("deploy_protocol did not deploy MatmulInt8Verifier and MediatorSet")
        for k in mediator_keys:
            w3.provider.make_request("anvil_setBalance", [Account.from_key(k).address, hex(100 * 10**18)])
        w = World(anvil, w3, Protocol(w3, dep), dep, keys, root, ResultServer(), AsyncRunner(), mediator_keys)
        try:
            yield w
        finally:
            w.close()


def wait_until(check: Any, timeout: float = 30.0, poll: float = 0.05) -> Any:
    """Polls ``check()`` until it returns something truthy; that value, or None after ``timeout``."""
    give_up = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= give_up:
            return value
        time.sleep(poll)
