"""The event follower against a real anvil: exact delivery, restarts, reorgs (anvil_reorg), refused ranges.

Reorgs rewrite this chain's history, so the module runs its own anvil instead of the shared snapshot one.
A small JSON-RPC proxy in front of it records what the follower asks, refuses large eth_getLogs ranges
and can tamper with answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.datastructures import AttributeDict

from node.chain.deploy import ProtocolParams, deploy_protocol
from node.chain.deployments import Deployment
from node.chain.devnet import Anvil, dev_keys, free_port
from node.chain.follower import ChainEvent, EventDecoder, EventFollower
from node.chain.follower_store import FollowerStateError, RawLog
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from node.chain.rpc import RpcClient, RpcRangeError

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = 10**18
DEPTH = 6  # reorg window of the followers under test


def _fee_tx(net: Net, fee: int) -> dict[str, Any]:
    """setFee from the (unlocked) deployer, unsigned: anvil signs it, also inside anvil_reorg."""
    return {"from": net.proto.account(net.keys[0]).address, "to": net.dep.market, "gas": hex(100_000),
            "data": net.proto.market.encode_abi("setFee", [fee])}


@dataclass
class Net:
    anvil: Anvil
    w3: Web3
    dep: Deployment
    proto: Protocol
    keys: list[str]
    _fee: int = 0
    registered: set[int] = field(default_factory=set)

    @property
    def addresses(self) -> dict[str, str]:
        return {"market": self.dep.market, "registry": self.dep.registry}

    def head(self) -> int:
        return self.w3.eth.block_number

    def rpc(self, method: str, params: list[Any]) -> Any:
        reply = self.w3.provider.make_request(method, params)
        assert "error" not in reply, reply
        return reply.get("result")

    def mine(self, blocks: int) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def fee_event(self) -> None:
        """One FeeSet in a block of its own (anvil's dev accounts are unlocked: no signing, no estimate)."""
        self._fee = (self._fee + 1) % 1000
        tx_hash = self.rpc("eth_sendTransaction", [_fee_tx(self, self._fee)])
        self.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)  # automine is not synchronous

    def registry_events(self, who: int) -> None:
        """ProviderRegistered (a struct argument) the first time, then Staked."""
        key = self.keys[who]
        if who not in self.registered:
            cap = Capacity(f"gpu-{who}", 2, 81920, 1000, 2000, keccak(text=f"bench{who}"))
            self.proto.register(key, self.proto.account(self.keys[who + 3]).address, cap, 7, "https://n.example")
            self.registered.add(who)
        self.proto.stake(key, TOKEN)

    def offer_event(self, nonce: int) -> None:
        """OfferPosted: a nested struct, bytes and strings."""
        now = self.w3.eth.get_block("latest")["timestamp"]
        requester = self.keys[1]
        offer = JobOffer(requester=self.proto.account(requester).address, provider=ZERO_ADDRESS,
                         workload=workload_id("matmul-int8/v1"), paramsHash=keccak(b"p"), inputHash=keccak(b"i"),
                         inputURI="https://x.example/in", payment=TOKEN, providerBond=0, maxDuration=600,
                         expiry=now + 3600, nonce=nonce)
        self.proto.approve(requester, self.proto.market.address, TOKEN)
        self.proto.post(requester, offer, b"p", self.proto.sign(requester, offer))

    def reference(self, from_block: int, to_block: int | None = None) -> list[tuple]:
        """The chain's events decoded independently (web3's contract events), as comparable tuples."""
        by_topic = {}
        for contract, name in ((self.proto.market, "market"), (self.proto.registry, "registry")):
            for ev in contract.all_events():
                by_topic[(contract.address, bytes(HexBytes(ev.topic)))] = (name, ev)
        logs = self.w3.eth.get_logs({"address": [self.dep.market, self.dep.registry], "fromBlock": from_block,
                                     "toBlock": "latest" if to_block is None else to_block})
        out = []
        for lg in logs:
            name, ev = by_topic[(lg["address"], bytes(lg["topics"][0]))]
            data = ev.process_log(lg)
            out.append((name, data["event"], _plain(data["args"]), lg["blockNumber"], bytes(lg["blockHash"]),
                        bytes(lg["transactionHash"]), lg["logIndex"]))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, AttributeDict | dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, HexBytes):
        return bytes(value)
    return value


def key(e: ChainEvent) -> tuple:
    return (e.contract, e.name, e.args, e.block_number, e.block_hash, e.tx_hash, e.log_index)


class Recorder:
    """A handler that keeps every batch; ``fail_on`` makes the n-th call (1-based) raise."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[ChainEvent]] = []
        self.calls = 0
        self.fail_on = fail_on

    async def __call__(self, events: list[ChainEvent]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("handler crashed")
        self.batches.append(list(events))

    @property
    def events(self) -> list[ChainEvent]:
        return [e for b in self.batches for e in b]


def live(events: list[ChainEvent]) -> list[tuple]:
    """What a consumer believes after applying deliveries and removals in order."""
    state: dict[tuple, ChainEvent] = {}
    for e in events:
        if e.removed:
            assert state.pop(e.id) == ChainEvent(**{**e.__dict__, "removed": False})
        else:
            assert e.id not in state, f"delivered twice: {e}"
            state[e.id] = e
    return sorted((key(e) for e in state.values()), key=lambda t: (t[3], t[6]))


class Proxy:
    """Loopback JSON-RPC proxy: logs requests, refuses eth_getLogs spans above ``max_span``, and lets a
    test rewrite an answer through ``tamper(method, params, reply) -> reply``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.max_span: int | None = None
        self.requests: list[tuple[str, Any]] = []
        self.refused: list[int] = []
        self.tamper: Callable[[str, Any, dict], dict] | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        method, params = body.get("method"), body.get("params") or []
        self.requests.append((method, params))
        if method == "eth_getLogs" and self.max_span is not None and "fromBlock" in params[0]:
            span = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if span > self.max_span:
                self.refused.append(span)
                return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "error": {
                    "code": -32005, "message": "query returned more than 10000 results; block range too large"}})
        async with self.session.post(self.target, json=body) as resp:
            reply = await resp.json()
        if self.tamper is not None:
            reply = self.tamper(method, params, reply)
        return web.json_response(reply)

    def log_queries(self) -> list[dict]:
        return [p[0] for m, p in self.requests if m == "eth_getLogs"]

    async def __aenter__(self) -> Proxy:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with Anvil(accounts=10) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        keys = dev_keys(10)
        dep = deploy_protocol(w3, keys[0], ProtocolParams())
        proto = Protocol(w3, dep)
        for k in keys[1:4]:
            proto.mint(keys[0], proto.account(k).address, 1_000_000 * TOKEN)
        yield Net(node, w3, dep, proto, keys)


@pytest_asyncio.fixture(loop_scope="session")
async def rpc(net: Net) -> AsyncIterator[RpcClient]:
    async with RpcClient([net.anvil.url], timeout=5, poll_interval=0.05) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def proxy(net: Net) -> AsyncIterator[Proxy]:
    async with Proxy(net.anvil.url) as p:
        yield p


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite"


def follower(net: Net, rpc: RpcClient, db: Path, handler: Recorder, start: int, **kw: Any) -> EventFollower:
    return EventFollower(rpc, db, net.addresses, handler, start_block=start, reorg_depth=kw.pop("depth", DEPTH), **kw)


# -- delivery ----------------------------------------------------------------------------------------


async def test_delivers_the_chains_events_decoded_and_in_order(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    net.registry_events(1)
    net.offer_event(nonce=1)
    for _ in range(3):
        net.fee_event()
    net.mine(DEPTH + 2)  # the above are now final: read by range
    net.registry_events(1)
    net.offer_event(nonce=2)
    net.fee_event()  # the young ones: read block by block
    rec = Recorder()
    f = follower(net, rpc, db, rec, start)
    delivered = await f.sync()
    want = net.reference(start)
    assert [key(e) for e in rec.events] == want
    assert delivered == len(want) == 9  # 6 final (Registered, Staked, OfferPosted, 3 FeeSet), 3 young
    assert f.cursor is not None and f.cursor.number == net.head()
    assert await f.sync() == 0  # nothing new: nothing delivered

    registered = next(e for e in rec.events if e.name == "ProviderRegistered")
    assert registered.contract == "registry"
    assert registered.args["operator"] == net.proto.account(net.keys[1]).address
    assert registered.args["capacity"] == {"gpuModel": "gpu-1", "deviceCount": 2, "vramMiB": 81920,
                                           "int8TopsMilli": 1000, "bf16TflopsMilli": 2000,
                                           "benchmarkHash": keccak(text="bench1")}
    posted = next(e for e in rec.events if e.name == "OfferPosted")
    assert posted.contract == "market" and isinstance(posted.args["jobId"], bytes)
    assert JobOffer.from_struct(posted.args["offer"]).nonce == 1
    assert posted.args["offer"]["requester"] == net.proto.account(net.keys[1]).address  # checksummed
    f.close()


async def test_decoder_skips_unknown_and_undecodable_logs(net: Net) -> None:
    dec = EventDecoder(net.addresses)
    fee_topic = keccak(text="FeeSet(uint16)")
    good = RawLog(1, 0, b"\x01" * 32, b"\x02" * 32, net.dep.market, (fee_topic,), (250).to_bytes(32, "big"))
    assert dec.decode(good) == ChainEvent("market", "FeeSet", {"feeBps": 250}, 1, b"\x01" * 32, b"\x02" * 32, 0)
    assert dec.decode(RawLog(**{**good.__dict__, "topics": (keccak(text="Nope()"),)})) is None
    assert dec.decode(RawLog(**{**good.__dict__, "data": b"\x01"})) is None  # truncated data
    assert dec.decode(RawLog(**{**good.__dict__, "address": net.dep.registry})) is None  # not the registry's
    assert dec.decode(RawLog(**{**good.__dict__, "topics": ()})) is None
    with pytest.raises(ValueError, match="unknown contract"):
        EventDecoder({"bank": net.dep.market})


# -- restarts ----------------------------------------------------------------------------------------


async def test_restart_neither_skips_nor_repeats(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    first = Recorder()
    for who in (1, 2):
        net.registry_events(who)
    net.mine(DEPTH)
    net.fee_event()
    f = follower(net, rpc, db, first, start)
    await f.sync()
    stopped_at = f.cursor
    f.close()

    for _ in range(3):
        net.fee_event()
    net.mine(DEPTH + 1)
    net.registry_events(2)
    second = Recorder()
    g = follower(net, rpc, db, second, start=net.head())  # start_block is ignored once there is a cursor
    assert g.cursor == stopped_at
    await g.sync()
    g.close()
    combined = first.events + second.events
    assert first.events and second.events
    assert [key(e) for e in combined] == net.reference(start)

    with pytest.raises(FollowerStateError, match="fresh data directory"):
        EventFollower(rpc, db, {"market": net.dep.registry, "registry": net.dep.market}, Recorder())


async def test_a_batch_whose_handler_raised_is_delivered_again(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    for _ in range(4):
        net.fee_event()  # young blocks: one batch each
    crashing = Recorder(fail_on=3)
    f = follower(net, rpc, db, crashing, start)
    with pytest.raises(RuntimeError, match="handler crashed"):
        await f.sync()
    assert len(crashing.batches) == 2 and f.cursor is not None and f.cursor.number == start + 1
    f.close()

    again = Recorder()
    g = follower(net, rpc, db, again, start)
    await g.sync()
    g.close()
    assert [key(e) for e in crashing.events + again.events] == net.reference(start)
    assert len(again.batches) == 2  # the failed block's batch, then the last one


# -- reorgs ------------------------------------------------------------------------------------------


async def test_reorg_emits_removals_then_the_new_events(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    net.mine(DEPTH)
    for _ in range(4):
        net.fee_event()
    rec = Recorder()
    f = follower(net, rpc, db, rec, start)
    await f.sync()
    before = net.reference(start)
    assert len(rec.events) == 4

    # The last three blocks (three FeeSets) are replaced; the new second one carries another FeeSet.
    net.rpc("anvil_reorg", [3, [[_fee_tx(net, 999), 1]]])
    net.fee_event()
    seen = len(rec.batches)
    await f.sync()
    removals, *rest = rec.batches[seen:]
    assert all(e.removed for e in removals)
    assert [key(e) for e in removals] == [tuple(t) for t in reversed(before[1:])]  # newest first
    assert all(not e.removed for b in rest for e in b)
    assert [e.args["feeBps"] for b in rest for e in b] == [999, net._fee]
    assert f.reorgs == 1
    assert live(rec.events) == net.reference(start)
    f.close()


async def test_consumer_view_matches_the_chain_after_reorgs(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    rec = Recorder()
    f = follower(net, rpc, db, rec, start)
    for round_ in range(3):
        for _ in range(2):
            net.fee_event()
        await f.sync()
        net.rpc("anvil_reorg", [1 + round_, [[_fee_tx(net, 500 + round_), 0]]])
    await f.sync()
    assert f.reorgs == 3
    assert live(rec.events) == net.reference(start)
    f.close()


async def test_a_reorg_while_stopped_is_removed_after_restart(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    for _ in range(3):
        net.fee_event()
    first = Recorder()
    f = follower(net, rpc, db, first, start)
    await f.sync()
    f.close()
    dropped = [key(e) for e in first.events[-2:]]

    net.rpc("anvil_reorg", [2, []])  # the last two blocks become empty ones
    net.mine(3)
    net.fee_event()
    second = Recorder()
    g = follower(net, rpc, db, second, start)
    await g.sync()
    g.close()
    assert [key(e) for e in second.batches[0]] == dropped[::-1] and all(e.removed for e in second.batches[0])
    assert live(first.events + second.events) == net.reference(start)


async def test_reorg_deeper_than_remembered_resumes_below_it(net: Net, rpc: RpcClient, db: Path) -> None:
    start = net.head() + 1
    for _ in range(4):
        net.fee_event()
    rec = Recorder()
    f = follower(net, rpc, db, rec, start, depth=2)
    await f.sync()
    net.rpc("anvil_reorg", [4, []])
    await f.sync()
    assert f.deep_reorgs == 1
    assert [e.removed for e in rec.events[-2:]] == [True, True]  # only what it still remembered
    f.close()


# -- ranges and block hashes -------------------------------------------------------------------------


async def test_refused_ranges_are_halved_until_accepted(net: Net, proxy: Proxy, db: Path) -> None:
    start = net.head() + 1
    for i in range(8):
        net.fee_event()
        net.mine(9 + i)
    net.mine(DEPTH)
    proxy.max_span = 16
    rec = Recorder()
    async with RpcClient([proxy.url], timeout=5) as client:
        f = follower(net, client, db, rec, start, max_range=100)
        await f.sync()
    assert [key(e) for e in rec.events] == net.reference(start)
    assert proxy.refused[:3] == [100, 50, 25]
    spans = [int(q["toBlock"], 16) - int(q["fromBlock"], 16) + 1 for q in proxy.log_queries() if "fromBlock" in q]
    assert 12 in spans and max(s for s in spans if s not in proxy.refused) <= 16
    accepted = [(int(q["fromBlock"], 16), int(q["toBlock"], 16)) for q in proxy.log_queries()
                if "fromBlock" in q and int(q["toBlock"], 16) - int(q["fromBlock"], 16) < 16]
    covered = sorted(b for lo, hi in accepted for b in range(lo, hi + 1))
    assert covered == list(range(start, net.head() - DEPTH + 1))  # every final block exactly once
    f.close()


async def test_a_refused_single_block_range_is_an_error(net: Net, proxy: Proxy, db: Path) -> None:
    start = net.head() + 1
    net.mine(DEPTH + 20)
    proxy.max_span = 0
    async with RpcClient([proxy.url], timeout=5) as client:
        f = follower(net, client, db, Recorder(), start, max_range=8)
        with pytest.raises(RpcRangeError):
            await f.sync()
        assert proxy.refused == [8, 4, 2, 1] and f.cursor is not None and f.cursor.number == start - 1
        f.close()


async def test_young_blocks_are_read_by_hash(net: Net, proxy: Proxy, db: Path) -> None:
    start = net.head() + 1
    net.mine(2 * DEPTH)
    for _ in range(3):
        net.fee_event()
    rec = Recorder()
    async with RpcClient([proxy.url], timeout=5) as client:
        f = follower(net, client, db, rec, start)
        await f.sync()
        f.close()
    head = net.head()
    queries = proxy.log_queries()
    by_hash = [q["blockHash"] for q in queries if "blockHash" in q]
    assert [net.w3.eth.get_block(h)["number"] for h in by_hash] == list(range(head - DEPTH + 1, head + 1))
    assert all(int(q["toBlock"], 16) <= head - DEPTH for q in queries if "toBlock" in q)
    assert [key(e) for e in rec.events] == net.reference(start)


async def test_logs_of_another_block_or_an_unknown_block_are_read_again(net: Net, proxy: Proxy, db: Path) -> None:
    start = net.head() + 1
    net.fee_event()
    net.fee_event()
    tampered: list[str] = []

    def tamper(method: str, params: Any, reply: dict) -> dict:
        if method != "eth_getLogs" or "blockHash" not in params[0] or len(tampered) >= 2:
            return reply
        tampered.append(params[0]["blockHash"])
        if len(tampered) == 1:  # a lagging or confused endpoint: logs that name another block
            return {**reply, "result": [{**lg, "blockHash": "0x" + "ab" * 32} for lg in reply["result"]]}
        return {"jsonrpc": "2.0", "id": reply["id"], "error": {"code": -32000, "message": "unknown block"}}

    proxy.tamper = tamper
    rec = Recorder()
    async with RpcClient([proxy.url], timeout=5) as client:
        f = follower(net, client, db, rec, start)
        await f.sync()
        f.close()
    assert len(tampered) == 2
    assert [key(e) for e in rec.events] == net.reference(start)


async def test_run_follows_new_blocks(net: Net, rpc: RpcClient, db: Path) -> None:
    rec = Recorder()
    f = follower(net, rpc, db, rec, None)
    task = asyncio.create_task(f.run())
    try:
        head = net.head()
        for _ in range(200):
            if f.cursor is not None and f.cursor.number == head:
                break
            await asyncio.sleep(0.02)
        seen = len(rec.events)  # the head block's own events, if any
        net.fee_event()
        for _ in range(200):
            if len(rec.events) > seen:
                break
            await asyncio.sleep(0.02)
        assert [key(e) for e in rec.events[seen:]] == net.reference(head + 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        f.close()


async def test_a_block_missing_from_a_lagging_endpoint_is_not_a_reorg(net: Net, proxy: Proxy, db: Path) -> None:
    start = net.head() + 1
    net.fee_event()
    rec = Recorder()
    async with RpcClient([proxy.url], timeout=5) as client:
        f = follower(net, client, db, rec, start)
        await f.sync()
        assert f.cursor is not None
        behind = hex(f.cursor.number)
        proxy.tamper = lambda method, params, reply: (
            {**reply, "result": None} if method == "eth_getBlockByNumber" and params[0] == behind else reply)
        assert await f.sync() == 0
        proxy.tamper = None
        net.fee_event()
        await f.sync()
        f.close()
    assert f.reorgs == 0 and not any(e.removed for e in rec.events)
    assert [key(e) for e in rec.events] == net.reference(start)
