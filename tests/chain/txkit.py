"""Shared set-up for the transaction manager tests: a manager on a real anvil, fresh funded accounts,
and manual block production for the tests that need transactions to wait in the pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import Signer
from node.chain.rpc import RpcClient
from node.chain.txmanager import TxManager
from node.chain.txstore import TxStore


async def raw(rpc: RpcClient, method: str, params: list[Any]) -> Any:
    reply = await rpc.call(lambda w3: w3.provider.make_request(method, params), method)
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def fund(rpc: RpcClient, eth: int = 10) -> LocalAccount:
    account = Account.create()
    await raw(rpc, "anvil_setBalance", [account.address, hex(eth * 10**18)])
    return account


async def balance(rpc: RpcClient, address: str) -> int:
    return await rpc.call(lambda w3: w3.eth.get_balance(address), "balance")


async def nonce(rpc: RpcClient, address: str) -> int:
    return await rpc.call(lambda w3: w3.eth.get_transaction_count(address, "latest"), "nonce")


@dataclass
class TxEnv:
    rpc: RpcClient
    store: TxStore
    signer: Signer  # what the node signs with: a keystore's unlocked key that shows only its address
    txm: TxManager
    db_path: Path


@contextlib.asynccontextmanager
async def tx_env(url: str | list[str], db_path: Path, *, signer: LocalAccount | Signer | None = None,
                 ceiling_gwei: float = 500, tip_gwei: float = 0.1, confirmations: int = 1, bump_after: int = 2,
                 run: bool = True) -> AsyncIterator[TxEnv]:
    rpc = RpcClient([url] if isinstance(url, str) else url, timeout=5, poll_interval=0.05)
    store = TxStore(db_path)
    signer = signer or await fund(rpc)
    signer = signer if isinstance(signer, Signer) else Signer(signer)
    policy = FeePolicy(ceiling=int(ceiling_gwei * GWEI), min_tip=int(tip_gwei * GWEI))
    txm = TxManager(rpc, store, signer, await rpc.chain_id(), policy, confirmations=confirmations,
                    bump_after_blocks=bump_after, reorg_depth=16)
    try:
        if run:
            async with txm:
                yield TxEnv(rpc, store, signer, txm, db_path)
        else:
            yield TxEnv(rpc, store, signer, txm, db_path)
    finally:
        await rpc.close()
        store.close()


@contextlib.asynccontextmanager
async def manual_mining(rpc: RpcClient, interval: float | None = 0.1) -> AsyncIterator[None]:
    """Automine off, so sent transactions wait in the pool; with an interval, a block every interval."""
    await raw(rpc, "evm_setAutomine", [False])

    async def mine() -> None:
        while True:
            await asyncio.sleep(interval)
            await raw(rpc, "evm_mine", [])

    task = asyncio.create_task(mine()) if interval else None
    try:
        yield
    finally:
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await raw(rpc, "evm_setAutomine", [True])


async def until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Polls an async predicate; the tests assert behaviour, never how long it took."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)
