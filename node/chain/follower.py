"""Follows the market's and registry's events and hands them to the node as typed, decoded values.

Why it is built this way:

- Plain ``eth_getLogs`` polling, paced by ``RpcClient.wait_new_head``: node-side filters (eth_newFilter)
  expire and vanish on failover, so the follower would go deaf without noticing.
- A persisted cursor (block number and hash) committed in the same SQLite transaction as the record of a
  batch, right after the handler returned: a stop or a crash between batches neither skips nor repeats.
  A crash inside the handler redelivers that batch, so **handlers must be idempotent by ``event.id``**.
- Blocks deeper than ``reorg_depth`` below the head are taken as final and read in ranges (fewest
  requests after downtime); the range halves when a node refuses it and grows back after successes.
- Younger blocks are read one at a time: header by number, its parent hash checked against the block
  before, logs by block hash so the logs belong to exactly that header. When the parent does not match,
  the follower walks back to the common ancestor and delivers a removal (``removed=True``, newest first)
  for every event it had delivered from the dropped blocks, before the events of the new branch. The
  delivered logs of those blocks are stored, so this also works when the reorg happened during a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address
from web3.exceptions import Web3RPCError

from node.chain.contracts import load_abi
from node.chain.follower_store import Cursor, FollowerStore, RawLog
from node.chain.rpc import Head, RpcClient, RpcError, RpcRangeError

log = logging.getLogger(__name__)

#: Names the node uses for the contracts it follows, and the exported ABI of each.
CONTRACT_ABIS = {"market": "JobMarket", "registry": "ProviderRegistry", "token": "GpuToken",
                 "verifier": "MatmulInt8Verifier"}
GENESIS_PARENT = Cursor(-1, b"\x00" * 32)  # "nothing processed yet" when following from block 0
_BLOCK_TRIES = 5  # fetches of one young block before its logs and header must have agreed
_GROW_AFTER = 8  # successful ranges before a halved range is allowed to double again
_MAX_STALLS = 5  # rewinds without progress in one sync before waiting for the next head


@dataclass(frozen=True)
class ChainEvent:
    """One decoded log. A removal repeats the event it retracts, with ``removed=True``."""

    contract: str  # "market" | "registry" | "verifier" (the keys of the follower's ``addresses``)
    name: str
    args: dict[str, Any] = field(hash=False)  # checksummed addresses, bytes for bytesN/bytes, ints, dicts
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int
    removed: bool = False

    @property
    def id(self) -> tuple[bytes, int]:
        """Stable across deliveries and redeliveries; a removal has the id of the event it removes."""
        return (self.block_hash, self.log_index)


Handler = Callable[[list[ChainEvent]], Awaitable[None]]


class EventDecoder:
    """Decodes logs of the followed contracts, keyed by (address, topic0), from the exported ABIs."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._events: dict[tuple[str, bytes], tuple[str, dict[str, Any]]] = {}
        for contract, address in addresses.items():
            if contract not in CONTRACT_ABIS:
                raise ValueError(f"unknown contract {contract!r}; known: {', '.join(CONTRACT_ABIS)}")
            for item in load_abi(CONTRACT_ABIS[contract]):
                if item.get("type") == "event" and not item.get("anonymous"):
                    sig = f"{item['name']}({','.join(_canonical(i) for i in item['inputs'])})"
                    self._events[(address.lower(), keccak(text=sig))] = (contract, item)

    def decode(self, raw: RawLog, *, removed: bool = False) -> ChainEvent | None:
        """None for a log of no known event or one that does not decode; never raises for bad data."""
        known = self._events.get((raw.address.lower(), raw.topics[0])) if raw.topics else None
        if known is None:
            log.debug("skipping log %d of block %d: unknown event", raw.log_index, raw.block_number)
            return None
        contract, abi = known
        try:
            args = _decode_args(abi["inputs"], raw.topics[1:], raw.data)
        except Exception as exc:  # noqa: BLE001 - malformed data from a node must not stop the follower
            log.warning("skipping log %d of block %d: %s does not decode: %s", raw.log_index, raw.block_number,
                        abi["name"], exc)
            return None
        return ChainEvent(contract, abi["name"], args, raw.block_number, raw.block_hash, raw.tx_hash,
                          raw.log_index, removed)


class EventFollower:
    """Delivers the followed contracts' events, in chain order, to ``handler`` in batches.

    ``start_block`` is the first block whose events are delivered when the database has no cursor yet
    (None: the head at the first sync); with a cursor it is ignored. The handler is called once per
    processed batch that has events: one backfill range, one young block, or the removals of one reorg.
    If it raises, the batch is not recorded and the error propagates; the next sync delivers it again.
    """

    def __init__(self, rpc: RpcClient, db_path: Path | str, addresses: Mapping[str, str], handler: Handler, *,
                 start_block: int | None = None, reorg_depth: int = 64, max_range: int = 2000) -> None:
        if reorg_depth < 1 or max_range < 1:
            raise ValueError("reorg_depth and max_range must be at least 1")
        self._rpc = rpc
        self._handler = handler
        self._addresses: Sequence[str] = [to_checksum_address(a) for a in addresses.values()]
        self._decoder = EventDecoder(addresses)
        self._store = FollowerStore(db_path, addresses)  # opened once at start-up: a few ms, no thread needed
        self._start_block = start_block
        self.reorg_depth = reorg_depth
        self.max_range = max_range
        self.range = max_range  # current eth_getLogs span for final blocks
        self._range_successes = 0
        self.reorgs = 0
        self.deep_reorgs = 0  # reorgs deeper than remembered: events before the resumption point may be stale

    @property
    def cursor(self) -> Cursor | None:
        """The last block whose events were delivered and committed; None before the first sync."""
        return self._store.cursor

    def close(self) -> None:
        self._store.close()

    async def run(self) -> None:
        """Follows forever. An RPC outage is waited out here; handler errors and refused single-block
        ranges propagate to the supervisor."""
        while True:
            try:
                await self.sync()
            except RpcRangeError:
                raise
            except RpcError as exc:
                log.warning("event follower paused: %s", exc)
            await self._rpc.wait_new_head()

    async def sync(self) -> int:
        """Catches up once to the head as it was at the start; returns the events delivered, removals
        included."""
        head = await self._rpc.head()
        if not await self._anchor(head):
            return 0
        delivered = await self._check_cursor()
        stalls = 0
        while (cursor := self._store.cursor) is not None and cursor.number < head.number:
            nxt = cursor.number + 1
            final_tip = head.number - self.reorg_depth
            if nxt <= final_tip:
                delivered += await self._backfill(nxt, final_tip)
                continue
            got = await self._young_block(nxt)
            if got is None:  # the chain is shorter than the head we read: wait for the next one
                break
            delivered += got
            if self._store.cursor == cursor:
                stalls += 1
                if stalls >= _MAX_STALLS:
                    log.warning("block %d keeps changing under the follower; waiting for the next head", nxt)
                    break
        return delivered

    # -- steps ---------------------------------------------------------------------------------------

    async def _anchor(self, head: Head) -> bool:
        """Places the first cursor just before ``start_block``; False while that block is still ahead."""
        if self._store.cursor is not None:
            return True
        start = head.number if self._start_block is None else self._start_block
        if start - 1 > head.number:
            return False
        if start <= 0:
            anchor = GENESIS_PARENT
        else:
            block = await self._rpc.block(start - 1)
            if block is None:
                return False
            anchor = Cursor(block.number, block.hash)
        await asyncio.to_thread(self._store.rewind, anchor)
        log.info("event follower starts after block %d", anchor.number)
        return True

    async def _check_cursor(self) -> int:
        """The cursor's own block may have been replaced while we waited (or were stopped), even when
        the chain did not grow; the parent check of the next block would not see that until later."""
        cursor = self._store.cursor
        assert cursor is not None
        if cursor.number < 0:
            return 0
        block = await self._rpc.block(cursor.number)
        if block is None:  # an endpoint behind the one we read before: a missing block is no evidence of a reorg
            return 0
        return 0 if block.hash == cursor.hash else await self._rewind()

    async def _backfill(self, start: int, last: int) -> int:
        """One range of final blocks; a refused range is halved and tried again by the caller's loop."""
        end = min(last, start + self.range - 1)
        try:
            logs = await self._rpc.logs(address=self._addresses, from_block=start, to_block=end)
        except RpcRangeError:
            if end == start:
                raise
            self.range, self._range_successes = max(1, (end - start + 1) // 2), 0
            log.info("eth_getLogs range %d..%d refused; trying %d blocks", start, end, self.range)
            return 0
        self._range_successes += 1
        if self._range_successes >= _GROW_AFTER and self.range < self.max_range:
            self.range, self._range_successes = min(self.max_range, self.range * 2), 0
        block = await self._rpc.block(end)
        if block is None:
            raise RpcError(f"block {end} is below the head but the node does not have it")
        raws = sorted((RawLog.from_rpc(lg) for lg in logs if start <= int(lg["blockNumber"]) <= end),
                      key=lambda r: (r.block_number, r.log_index))
        if any(r.block_number == end and r.block_hash != block.hash for r in raws):
            raise RpcError(f"logs of block {end} do not belong to its header: the node is inconsistent")
        events = self._decode_all(raws)
        if events:
            await self._handler(events)
        await asyncio.to_thread(self._store.advance, Cursor(end, block.hash), [], end - self.reorg_depth)
        return len(events)

    async def _young_block(self, number: int) -> int | None:
        """One block within the reorg window. None when the node has no such block (any more)."""
        cursor = self._store.cursor
        assert cursor is not None
        trouble = ""
        for attempt in range(_BLOCK_TRIES):
            block = await self._rpc.block(number)
            if block is None:
                return None
            if block.parent_hash != cursor.hash:
                return await self._rewind()
            try:
                logs = await self._rpc.logs(address=self._addresses, block_hash=block.hash)
            except Web3RPCError as exc:  # replaced since we read it, or an endpoint that has not seen it yet
                trouble = f"logs unavailable: {exc}"
                log.debug("logs of block %d (0x%s) unavailable: %s", number, block.hash.hex(), exc)
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            raws = sorted((RawLog.from_rpc(lg) for lg in logs), key=lambda r: r.log_index)
            if any(r.block_hash != block.hash or r.block_number != number for r in raws):
                trouble = "logs asked for by its hash named another block"
                log.warning("logs asked for block %d (0x%s) name another block; reading it again",
                            number, block.hash.hex())
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            decoded = [(r, self._decoder.decode(r)) for r in raws]
            delivered = [r for r, e in decoded if e is not None]
            batch = [e for _, e in decoded if e is not None]
            if batch:
                await self._handler(batch)
            await asyncio.to_thread(self._store.advance, Cursor(number, block.hash), delivered,
                                    number - self.reorg_depth)
            return len(batch)
        raise RpcError(f"block {number}: no consistent header and logs in {_BLOCK_TRIES} tries ({trouble})")

    async def _rewind(self) -> int:
        """Walks back to the newest remembered block still on the chain, delivers removals for what was
        delivered above it, and moves the cursor there."""
        cursor = self._store.cursor
        assert cursor is not None
        remembered = await asyncio.to_thread(self._store.recent_blocks)
        ancestor: Cursor | None = None
        for row in remembered:
            if row.number < 0:
                ancestor = row
                break
            block = await self._rpc.block(row.number)
            if block is not None and block.hash == row.hash:
                ancestor = row
                break
        if ancestor is None:
            ancestor = await self._deep_reorg_anchor(remembered[-1].number if remembered else cursor.number)
        dropped = await asyncio.to_thread(self._store.logs_after, ancestor.number)
        removals = [e for e in (self._decoder.decode(r, removed=True) for r in dropped) if e is not None]
        self.reorgs += 1
        log.warning("chain reorganised: blocks %d..%d replaced, %d delivered events removed",
                    ancestor.number + 1, cursor.number, len(removals))
        if removals:
            await self._handler(removals)
        await asyncio.to_thread(self._store.rewind, ancestor)
        return len(removals)

    async def _deep_reorg_anchor(self, oldest: int) -> Cursor:
        """No remembered block is on the chain any more: resume below the oldest one. Events delivered
        from blocks under it that were replaced too cannot be retracted; that is what reorg_depth bounds."""
        self.deep_reorgs += 1
        number = oldest - 1
        block = await self._rpc.block(number) if number >= 0 else None
        log.error("reorg deeper than the %d blocks the follower remembers; resuming after block %d, and events "
                  "delivered before it may be stale", self.reorg_depth, number)
        return Cursor(number, block.hash) if block is not None else GENESIS_PARENT

    def _decode_all(self, raws: list[RawLog]) -> list[ChainEvent]:
        return [e for e in (self._decoder.decode(r) for r in raws) if e is not None]


# -- ABI decoding ------------------------------------------------------------------------------------


def _canonical(item: Mapping[str, Any]) -> str:
    typ = item["type"]
    if typ.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in item["components"]) + ")" + typ[5:]
    return typ


def _decode_args(inputs: Sequence[Mapping[str, Any]], topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
    indexed = [i for i in inputs if i.get("indexed")]
    plain = [i for i in inputs if not i.get("indexed")]
    if len(topics) != len(indexed):
        raise ValueError(f"{len(topics)} topics for {len(indexed)} indexed arguments")
    values: dict[str, Any] = {}
    for item, topic in zip(indexed, topics, strict=True):
        typ = _canonical(item)
        if typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("("):
            values[item["name"]] = bytes(topic)  # reference types are indexed by their keccak hash
        else:
            values[item["name"]] = _native(item, abi_decode([typ], topic)[0])
    for item, value in zip(plain, abi_decode([_canonical(i) for i in plain], data), strict=True):
        values[item["name"]] = _native(item, value)
    return {i["name"]: values[i["name"]] for i in inputs}  # declaration order


def _native(item: Mapping[str, Any], value: Any) -> Any:
    """eth_abi's tuples become dicts keyed by component name, addresses checksummed, bytes plain bytes."""
    typ = item["type"]
    if typ.endswith("]"):
        inner = {**item, "type": typ[:typ.rindex("[")]}
        return [_native(inner, v) for v in value]
    if typ == "tuple":
        return {c["name"]: _native(c, v) for c, v in zip(item["components"], value, strict=True)}
    if typ == "address":
        return to_checksum_address(value)
    if typ.startswith("bytes"):
        return bytes(value)
    return value
