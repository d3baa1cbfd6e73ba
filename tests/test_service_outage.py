"""The daemon's head and settlement loops ride out an RPC outage instead of failing (found by the chaos run):
a failed task waits out the supervisor's backoff, which after a 60 s outage left the node blind to the chain
for 32 s after the RPC was back. Here each loop runs on a stand-in service whose RPC fails a few times."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from node.chain.rpc import Head, RpcError
from node.metrics import Metrics
from node.service import NodeService


class FlakyRpc:
    """Fails the first ``down`` calls like an RPC outage, then answers with a new head each time."""

    def __init__(self, down: int) -> None:
        self.down, self.calls = down, 0

    async def head(self) -> Head:
        self.calls += 1
        if self.calls <= self.down:
            raise RpcError("latest block: no RPC endpoint answered after 3 rounds")
        return Head(100 + self.calls, b"\x01" * 32, b"\x02" * 32, 1_000 + self.calls)

    async def wait_new_head(self) -> bool:
        await asyncio.sleep(0)
        return False


def _stub(rpc: FlakyRpc, **extra) -> SimpleNamespace:
    wakes = []
    return SimpleNamespace(rpc=rpc, metrics=Metrics(), dispatcher=SimpleNamespace(wake=lambda: wakes.append(1)),
                           registered=True, head_number=None, head_time=None, wakes=wakes, **extra)


async def test_the_head_loop_keeps_asking_through_an_outage_and_sees_the_first_head_after_it():
    rpc = FlakyRpc(down=5)
    svc = _stub(rpc)
    task = asyncio.create_task(NodeService._heads(svc))
    try:
        async with asyncio.timeout(5):
            while svc.head_number is None:
                await asyncio.sleep(0)
    finally:
        task.cancel()
    assert not task.done() or task.cancelled()  # it never ended with the RpcError
    assert svc.head_number == 100 + rpc.down + 1  # the first head after the outage, not a later one
    assert svc.wakes


async def test_the_settle_loop_keeps_settling_when_the_balance_read_fails():
    passes = []

    async def settle_once(now):
        passes.append(now)

    async def view(*_):
        raise RpcError("JobMarket.balanceOf: no RPC endpoint answered after 3 rounds")

    svc = SimpleNamespace(settler=SimpleNamespace(settle_once=settle_once), chain_time=lambda: 7, payout="0xabc",
                          pending=5, _view=view, settings=SimpleNamespace(chain=SimpleNamespace(poll_interval_s=0)))
    task = asyncio.create_task(NodeService._settle_loop(svc))
    try:
        async with asyncio.timeout(5):
            while len(passes) < 3:
                await asyncio.sleep(0)
    finally:
        task.cancel()
    assert svc.pending == 5  # the last known figure stays
