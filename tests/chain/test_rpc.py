"""The RPC client against a real anvil behind a loopback proxy that can fail: failover, outages,
WebSocket drops, chain-id checks."""

from __future__ import annotations

import pytest
import pytest_asyncio
from web3.exceptions import Web3RPCError

from node.chain.devnet import Anvil, free_port
from node.chain.rpc import ChainMismatchError, RpcClient, RpcError, redact
from tests.chain.txkit import raw, until
from tests.support.netproxy import TcpProxy


@pytest.fixture(scope="module")
def own_anvil():
    with Anvil(accounts=1) as node:
        yield node


@pytest_asyncio.fixture(loop_scope="function")  # the proxy must serve from the test's own event loop
async def proxy(own_anvil):
    p = await TcpProxy("127.0.0.1", own_anvil.port).start()
    yield p
    await p.stop()


async def test_outage_of_the_first_endpoint_fails_over_and_back(own_anvil, proxy):
    async with RpcClient([proxy.http_url, own_anvil.url], timeout=2, cooldown=0.2) as rpc:
        start = (await rpc.head()).number
        assert rpc.endpoints[0].answered == 1 and rpc.endpoints[1].answered == 0  # the first one is preferred
        proxy.down = True
        proxy.cut()
        await raw(rpc, "evm_mine", [])
        assert (await rpc.head()).number == start + 1  # served by the second endpoint
        assert not rpc.status()["endpoints"][0]["healthy"] and rpc.endpoints[1].answered >= 2
        proxy.down = False

        async def first_is_back() -> bool:
            await rpc.head()
            return rpc.endpoints[0].failures == 0

        await until(first_is_back, timeout=20, interval=0.3)  # tried again after its cool-down


async def test_total_outage_raises_after_bounded_tries_then_recovers(proxy):
    async with RpcClient([proxy.http_url], timeout=1, tries=2, cooldown=0.1) as rpc:
        await rpc.head()
        proxy.down = True
        proxy.cut()
        with pytest.raises(RpcError, match="no RPC endpoint answered after 2 rounds"):
            await rpc.head()
        proxy.down = False
        assert (await rpc.head()).number >= 0


async def test_node_errors_are_answers_not_outages(own_anvil):
    async with RpcClient([own_anvil.url]) as rpc:
        with pytest.raises(Web3RPCError):
            await rpc.call(lambda w3: w3.eth.send_raw_transaction(b"\x02\x01"), "send")
        assert rpc.endpoints[0].failures == 0  # the endpoint answered: not marked unhealthy


async def test_websocket_drop_is_survived(own_anvil, proxy):
    async with RpcClient([own_anvil.url], ws_url=proxy.ws_url, timeout=2, poll_interval=30) as rpc:
        await until(lambda: _true(rpc.ws_connected))
        await rpc.wait_new_head(0.5)  # consume the wake-up sent on connect
        await raw(rpc, "evm_mine", [])
        assert await rpc.wait_new_head(10) is True  # pushed, long before the 30 s poll interval

        proxy.cut()  # the subscription stream ends: a disconnect
        await until(lambda: _true(rpc.ws_reconnects >= 1 and rpc.ws_connected))
        await rpc.wait_new_head(0.5)
        await raw(rpc, "evm_mine", [])
        assert await rpc.wait_new_head(10) is True  # re-subscribed after the reconnect

        proxy.down = True  # WebSocket gone for good: waiting falls back to the poll interval
        proxy.cut()
        await until(lambda: _true(not rpc.ws_connected))
        await rpc.wait_new_head(0.2)
        assert await rpc.wait_new_head(0.3) is False
        assert (await rpc.head()).number >= 2  # HTTP unaffected


async def _true(value: bool) -> bool:
    return value


async def test_chain_id_must_match_config_and_deployments(own_anvil):
    dead = f"http://127.0.0.1:{free_port()}"
    async with RpcClient([dead, own_anvil.url], timeout=1) as rpc:
        assert await rpc.ensure_chain(31337, 31337) == 31337  # a dead endpoint at start is only a warning
        with pytest.raises(ChainMismatchError, match="is on chain 31337, but the configuration says .* = 5"):
            await rpc.ensure_chain(5)
        with pytest.raises(ChainMismatchError, match="deployments file is for chain 1 "):
            await rpc.ensure_chain(31337, 1)
    async with RpcClient([dead], timeout=1) as rpc:
        with pytest.raises(RpcError, match="no RPC endpoint answered"):
            await rpc.ensure_chain(31337)


def test_urls_are_redacted_in_messages():
    assert redact("https://mainnet.infura.io/v3/SECRETKEY?x=1") == "https://mainnet.infura.io"
    assert redact("http://user:pw@127.0.0.1:8545/path") == "http://127.0.0.1:8545"
    assert redact("http://127.0.0.1:9:") == "http://127.0.0.1"  # text glued to a URL in an error message


async def test_cancelled_requests_never_leave_an_http_lock_held(own_anvil):
    """Requests cancelled while web3 is still taking its session-cache lock (what our timeouts do) must not
    leave a lock held: web3's own is shared by every HTTP provider in the process, sync ones included."""
    import asyncio

    from web3._utils.http_session_manager import HTTPSessionManager

    rpc = RpcClient([own_anvil.url], timeout=5)
    manager = rpc.endpoints[0].w3.provider._request_session_manager
    try:
        # Another request holds the lock this provider uses. web3's cancelled acquire releases it (its
        # `finally` sees the lock taken) and then takes it in the executor for good: a leak.
        assert manager._lock.acquire(timeout=1)
        task = asyncio.create_task(manager.async_cache_and_return_session(own_anvil.url))
        await asyncio.sleep(0.2)  # the request now waits for that lock in web3's executor
        task.cancel()  # what a timeout around the request does
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.5)  # every queued acquire has run by now
        assert not HTTPSessionManager._lock.locked()
        async with asyncio.timeout(10):
            assert await rpc.endpoints[0].w3.eth.chain_id == own_anvil.chain_id
    finally:
        await rpc.close()
        if HTTPSessionManager._lock.locked():  # leaked (the bug): free it so later tests in this worker run
            HTTPSessionManager._lock.release()
