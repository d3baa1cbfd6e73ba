"""The node's only door to the chain: several HTTP endpoints with failover, and an optional WebSocket
used purely as a wake-up call for new heads.

Why not web3's own providers as they are: the HTTP provider retries raw-transaction sends on its own
(we want to decide that, per request kind), and the persistent WebSocket provider reconnects without
restoring subscriptions, so a node relying on it goes silently deaf. Here every request has a timeout
and a bounded number of tries across endpoints; an endpoint that fails is set aside for a cool-down and
tried again later; the WebSocket only sets an event ("a head arrived"), so when it is down the node
simply polls at its configured interval and loses nothing.

An answer from a node (a JSON-RPC error) is not a transport failure: it is returned to the caller, who
knows what "nonce too low" or "range too large" means for its request. Only failures to get an answer
at all (refused, reset, timeout, HTTP 5xx/429) move the request to the next endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import websockets
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BlockNotFound,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)

from node.supervisor import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")

# Phrases nodes use when they refuse an eth_getLogs range (geth, erigon, infura, alchemy, quicknode...).
_RANGE_REFUSALS = ("range", "too many", "limit", "exceed", "10000", "response size", "too large", "timeout")
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ProviderConnectionError,
                     RequestTimedOut, TimeExhausted, TooManyRequests)


class RpcError(RuntimeError):
    """No endpoint gave an answer within the allowed tries."""


class RpcRangeError(RpcError):
    """The node refused an eth_getLogs range as too large; ask again with a smaller one."""


class ChainMismatchError(RpcError):
    """An endpoint, the configuration and the deployments file disagree on the chain id."""


def redact(url: str) -> str:
    """scheme://host[:port] only: provider URLs often carry an API key in the path or query."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number (text glued to the URL, e.g. "host:9:"): drop it rather than fail
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _EventLoopLock:
    """Stands in for web3's session-cache lock on our async providers, which must never leak.

    web3 8 guards its HTTP session cache with one ``threading.Lock`` shared by every provider in the process,
    sync and async, and an async request takes it with ``run_in_executor(lock.acquire)``. A request cancelled
    while that acquire is still queued (our timeouts and failover cancel requests) leaves the executor thread
    to take the lock after the request's ``finally`` has run, so it is never released: every HTTP request in
    the process, the node's and any synchronous Web3's, then waits forever. Our async providers are only used
    from the node's one event loop thread, where the cache's dict operations cannot interleave, so they need
    no thread lock at all; giving each its own no-op lock also keeps them off the shared one.
    """

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        pass

    def locked(self) -> bool:
        return False

    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass(frozen=True)
class Head:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int
    base_fee: int | None = None

    @classmethod
    def from_block(cls, block: Any) -> Head:
        return cls(int(block["number"]), bytes(block["hash"]), bytes(block["parentHash"]),
                   int(block["timestamp"]), block.get("baseFeePerGas"))


@dataclass
class Endpoint:
    url: str
    w3: AsyncWeb3
    failures: int = 0  # consecutive
    down_until: float = 0.0
    last_error: str = ""
    answered: int = 0
    failed: int = 0

    def available(self, now: float) -> bool:
        return now >= self.down_until

    def status(self) -> dict[str, Any]:
        return {"url": redact(self.url), "healthy": self.failures == 0, "answered": self.answered,
                "failed": self.failed, "last_error": self.last_error}


@dataclass
class RpcClient:
    urls: Sequence[str]
    ws_url: str = ""
    timeout: float = 10.0
    tries: int = 3  # rounds over all endpoints before giving up
    poll_interval: float = 2.0
    cooldown: float = 5.0  # first pause for a failing endpoint; doubles per consecutive failure, max 60 s
    endpoints: list[Endpoint] = field(init=False, default_factory=list)
    ws_connected: bool = field(init=False, default=False)
    ws_reconnects: int = field(init=False, default=0)
    _head_event: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _ws_task: asyncio.Task | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one RPC URL is needed")
        for url in self.urls:
            provider = AsyncHTTPProvider(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=self.timeout)},
                                         exception_retry_configuration=None)  # failover is ours to do
            provider._request_session_manager._lock = _EventLoopLock()  # see _EventLoopLock
            self.endpoints.append(Endpoint(url, AsyncWeb3(provider)))

    @classmethod
    def from_settings(cls, chain: Any) -> RpcClient:
        """From ``Settings.chain``."""
        return cls(list(chain.rpc_urls), ws_url=chain.ws_url, timeout=chain.request_timeout_s,
                   poll_interval=chain.poll_interval_s)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> RpcClient:
        if self.ws_url and self._ws_task is None:
            self._ws_task = asyncio.create_task(self._watch_heads(), name="rpc-ws-heads")
        return self

    async def close(self) -> None:
        task, self._ws_task = self._ws_task, None
        if task is not None:
            await cancel_and_wait([task])
        for ep in self.endpoints:
            with contextlib.suppress(Exception):
                await ep.w3.provider.disconnect()

    async def __aenter__(self) -> RpcClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------------------------------

    async def call(self, fn: Callable[[AsyncWeb3], Awaitable[T]], what: str) -> T:
        """Runs ``fn`` against the first endpoint that answers. Endpoints resting after failures are tried
        last rather than never, so a total outage ends as soon as any endpoint is back."""
        errors: list[str] = []
        for attempt in range(self.tries):
            now = time.monotonic()
            order = sorted(self.endpoints, key=lambda ep: not ep.available(now))  # stable: config order
            for ep in order:
                try:
                    async with asyncio.timeout(self.timeout):  # not wait_for: on 3.11 it can swallow a cancel
                        result = await fn(ep.w3)
                except Web3RPCError as exc:
                    if _is_rate_limit(exc):
                        self._failed(ep, exc, errors)
                        continue
                    ep.failures, ep.answered = 0, ep.answered + 1
                    raise  # the node answered: the caller decides what the answer means
                except _TRANSPORT_ERRORS as exc:
                    self._failed(ep, exc, errors)
                    continue
                if ep.failures:
                    log.info("RPC endpoint %s is answering again", redact(ep.url))
                ep.failures, ep.answered = 0, ep.answered + 1
                return result
            if attempt + 1 < self.tries:
                await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
        raise RpcError(f"{what}: no RPC endpoint answered after {self.tries} rounds: {'; '.join(errors[-3:])}")

    def _failed(self, ep: Endpoint, exc: BaseException, errors: list[str]) -> None:
        ep.failures += 1
        ep.failed += 1
        ep.down_until = time.monotonic() + min(self.cooldown * 2 ** (ep.failures - 1), 60.0)
        ep.last_error = f"{type(exc).__name__}: {str(exc)[:200]}".replace(ep.url, redact(ep.url))
        errors.append(f"{redact(ep.url)}: {ep.last_error}")
        if ep.failures == 1:
            log.warning("RPC endpoint %s failed (%s); failing over", redact(ep.url), ep.last_error)

    async def chain_id(self) -> int:
        return await self.call(lambda w3: w3.eth.chain_id, "eth_chainId")

    async def head(self) -> Head:
        return Head.from_block(await self.call(lambda w3: w3.eth.get_block("latest"), "latest block"))

    async def block(self, ident: int | bytes) -> Head | None:
        """A block header by number or hash; None when the node does not have it (e.g. reorged away)."""

        async def get(w3: AsyncWeb3) -> Any:
            try:
                return await w3.eth.get_block(ident)
            except BlockNotFound:
                return None

        block = await self.call(get, f"block {ident if isinstance(ident, int) else '0x' + ident.hex()}")
        return None if block is None else Head.from_block(block)

    async def logs(self, *, address: Sequence[str], from_block: int | None = None, to_block: int | None = None,
                   block_hash: bytes | None = None, topics: list[Any] | None = None) -> list[Any]:
        """eth_getLogs by range or by block hash; RpcRangeError when the node refuses the range."""
        query: dict[str, Any] = {"address": list(address)}
        if block_hash is not None:
            query["blockHash"] = "0x" + bytes(block_hash).hex()
        else:
            query["fromBlock"], query["toBlock"] = from_block, to_block
        if topics is not None:
            query["topics"] = topics
        try:
            return list(await self.call(lambda w3: w3.eth.get_logs(query), "eth_getLogs"))
        except RpcError as exc:
            # Some providers just stall on a heavy range instead of refusing it; a smaller one may pass.
            if block_hash is None and from_block != to_block and "TimeoutError" in str(exc):
                raise RpcRangeError(f"eth_getLogs {from_block}..{to_block} timed out: {exc}") from None
            raise
        except Web3RPCError as exc:
            if block_hash is None and any(p in str(exc).lower() for p in _RANGE_REFUSALS):
                raise RpcRangeError(f"eth_getLogs {from_block}..{to_block} refused: {exc}") from None
            raise

    async def ensure_chain(self, expected: int, deployment_chain_id: int | None = None) -> int:
        """Start-up check: every endpoint that answers must be on ``expected``, and so must the deployments
        file; a node that fails over onto another chain would sign for the wrong network."""
        if deployment_chain_id is not None and deployment_chain_id != expected:
            raise ChainMismatchError(f"the deployments file is for chain {deployment_chain_id} but the "
                                     f"configuration says chain.chain_id = {expected}")
        answered = 0
        for ep in self.endpoints:
            try:
                async with asyncio.timeout(self.timeout):
                    got = await ep.w3.eth.chain_id
            except (*_TRANSPORT_ERRORS, Web3RPCError) as exc:
                log.warning("RPC endpoint %s unreachable at start: %s", redact(ep.url), type(exc).__name__)
                continue
            if got != expected:
                raise ChainMismatchError(f"RPC endpoint {redact(ep.url)} is on chain {got}, but the configuration "
                                         f"says chain.chain_id = {expected}")
            answered += 1
        if not answered:
            raise RpcError(f"no RPC endpoint answered: {', '.join(redact(u) for u in self.urls)}")
        return expected

    def status(self) -> dict[str, Any]:
        return {"endpoints": [ep.status() for ep in self.endpoints], "ws": bool(self.ws_url),
                "ws_connected": self.ws_connected, "ws_reconnects": self.ws_reconnects}

    # -- heads ---------------------------------------------------------------------------------------

    async def wait_new_head(self, timeout: float | None = None) -> bool:
        """Returns True when the WebSocket announced a head, False after ``timeout`` (default: the poll
        interval). Either way the caller then reads the chain over HTTP; this only sets the pace."""
        try:
            async with asyncio.timeout(self.poll_interval if timeout is None else timeout):
                await self._head_event.wait()
        except TimeoutError:
            return False
        self._head_event.clear()
        return True

    async def _watch_heads(self) -> None:
        """Subscribes to newHeads, re-subscribing after every reconnect; the end of the stream is a
        disconnect like any other. Runs until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with websockets.connect(self.ws_url, open_timeout=self.timeout, max_size=2**22) as ws:
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                              "params": ["newHeads"]}))
                    async with asyncio.timeout(self.timeout):
                        reply = json.loads(await ws.recv())
                    if "result" not in reply:
                        raise ConnectionError(f"eth_subscribe refused: {reply.get('error')}")
                    self.ws_connected, backoff = True, 0.5
                    log.info("new-head subscription active on %s", redact(self.ws_url))
                    self._head_event.set()  # heads may have passed while we were away: look now
                    async for message in ws:
                        if '"eth_subscription"' in str(message):
                            self._head_event.set()
                raise ConnectionError("subscription stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: poll, wait, reconnect
                if self.ws_connected:
                    log.warning("new-head WebSocket lost (%s); polling until it is back", type(exc).__name__)
                self.ws_connected = False
                self.ws_reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def _is_rate_limit(exc: Web3RPCError) -> bool:
    text = str(exc).lower()
    return "rate limit" in text or "too many requests" in text or "429" in text
