"""Run as a subprocess by test_txmanager_crash.py: sends one transaction and kills itself (SIGKILL, no
clean-up of any kind) at a chosen point of the send, as a power cut or OOM kill would.

    python -m tests.chain.crash_sender URL DB PRIVATE_KEY TO VALUE POINT
POINT: after_intent (intent stored, nothing signed), after_persist (signed and stored, not broadcast),
after_broadcast (broadcast, receipt not recorded).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from eth_account import Account

from node.chain.fees import GWEI, FeePolicy
from node.chain.rpc import RpcClient
from node.chain.txmanager import TxManager
from node.chain.txstore import TxStore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(url: str, db: str, key: str, to: str, value: int, point: str) -> None:
    rpc = RpcClient([url], timeout=5)
    txm = TxManager(rpc, TxStore(db), Account.from_key(key), await rpc.chain_id(), FeePolicy(500 * GWEI, GWEI // 10))
    original_simulate, original_broadcast = txm._simulate, txm._broadcast

    async def simulate(tx):
        if point == "after_intent":
            die()
        return await original_simulate(tx)

    async def broadcast(*args, **kwargs):
        if point == "after_persist":
            die()
        await original_broadcast(*args, **kwargs)
        if point == "after_broadcast":
            die()

    txm._simulate, txm._broadcast = simulate, broadcast
    await txm.submit("crash:1", to, value=value)
    raise SystemExit("the crash point was never reached")


if __name__ == "__main__":
    url, db, key, to, value, point = sys.argv[1:]
    asyncio.run(main(url, db, key, to, int(value), point))
