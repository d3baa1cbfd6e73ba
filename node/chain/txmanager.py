"""Sends the node's transactions so that each intended effect happens exactly once, and says how it ended.

The rules, each of which a provider has paid for somewhere:
- An effect is named by an idempotency key (``claim:<jobId>``); asking again for a key returns the same
  transaction. The intent is stored before anything else, and every signed attempt (raw bytes and hash)
  is stored before it is broadcast, so a crash at any point leaves enough to find or resend it.
- One nonce per intent, assigned under one lock from max(own records, chain's *latest* count); the
  "pending" count is a guess of whichever node answers and is never trusted.
- A send error that might hide a successful send ("already known", "nonce too low", a timeout, anything
  unknown) means *possibly sent*: look for the receipt, never sign a new nonce.
- Unconfirmed after ``bump_after_blocks``: replace at +12.5 % (or the market), never above the ceiling;
  gone from the node's pool: rebroadcast the same bytes.
- A receipt counts only while its block is canonical: a reorg sends the intent back to pending and its
  bytes are broadcast again.
- Before the first send the call is simulated (``eth_call``); one that would revert is reported with the
  contract's decoded error and never sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from web3 import AsyncWeb3, Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError

from node.chain.contracts import decode_revert
from node.chain.fees import FeePolicy, Fees
from node.chain.rpc import Head, RpcClient, RpcError
from node.chain.txstore import Intent, TxState, TxStore
from node.supervisor import cancel_and_wait

log = logging.getLogger(__name__)
GAS_MARGIN = 1.25  # over eth_estimateGas: state can shift between simulation and inclusion


class IdempotencyConflict(ValueError):
    """The key was already used for a different call; reusing it would hide one of the two effects."""


class SimulationReverted(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TxOutcome:
    key: str
    state: TxState  # CONFIRMED, REVERTED, REJECTED or FAILED
    reason: str  # decoded revert reason or why it failed; "" when confirmed
    tx_hash: str | None
    nonce: int | None
    receipt: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.state is TxState.CONFIRMED

    @classmethod
    def of(cls, intent: Intent) -> TxOutcome:
        receipt = json.loads(intent.receipt) if intent.receipt else None
        return cls(intent.key, intent.state, intent.reason, intent.tx_hash, intent.nonce, receipt)


class TxManager:
    def __init__(self, rpc: RpcClient, store: TxStore, signer: Any, chain_id: int, fees: FeePolicy, *,
                 confirmations: int = 1, bump_after_blocks: int = 3, reorg_depth: int = 64) -> None:
        self.rpc, self.store, self.signer, self.chain_id, self.fees = rpc, store, signer, chain_id, fees
        self.sender = to_checksum_address(signer.address)
        self.confirmations, self.bump_after, self.reorg_depth = confirmations, bump_after_blocks, reorg_depth
        self._key_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._nonce_lock = asyncio.Lock()
        self._tick_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._orphaned: dict[str, int] = {}  # key -> head at which its nonce was seen used by another tx
        self._task: asyncio.Task | None = None
        self.head: Head | None = None
        self.errors = 0  # failed watch passes, for metrics
        self._stopping = False

    @classmethod
    def from_settings(cls, rpc: RpcClient, store: TxStore, signer: Any, chain: Any) -> TxManager:
        return cls(rpc, store, signer, chain.chain_id, FeePolicy.from_settings(chain),
                   confirmations=chain.confirmations, bump_after_blocks=chain.bump_after_blocks,
                   reorg_depth=chain.reorg_depth)

    # -- lifecycle: a loop that watches every open intent on each new head ------------------------------

    async def __aenter__(self) -> TxManager:
        self._task = asyncio.create_task(self.run(), name="txmanager")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task:
            self._stopping = True  # the loop also checks this, in case a library swallows the cancel
            await cancel_and_wait([task])

    async def run(self) -> None:
        """Forever: check open intents, then wait for the next head. A failed pass is logged and counted and
        the next head retries it: a flaky RPC or one bad record must not stop every confirmation."""
        self._stopping = False
        while not self._stopping:
            try:
                await self.tick()
            except (RpcError, Web3RPCError) as exc:
                self.errors += 1
                log.warning("transaction check failed, retrying: %s", exc)
            except Exception:
                self.errors += 1
                log.exception("transaction check failed unexpectedly, retrying")
            await self.rpc.wait_new_head()

    # -- public API ------------------------------------------------------------------------------------

    async def send(self, key: str, to: str | None, data: bytes = b"", value: int = 0, gas: int | None = None,
                   timeout: float | None = None) -> TxOutcome:
        """Asks for an effect and waits until it is settled: confirmed, reverted, rejected or failed."""
        await self.submit(key, to, data, value, gas)
        return await self.wait(key, timeout)

    async def submit(self, key: str, to: str | None, data: bytes = b"", value: int = 0,
                     gas: int | None = None) -> Intent:
        """Stores the intent and, unless it already exists, simulates, signs and broadcasts it."""
        to = to_checksum_address(to) if to else None
        async with self._key_locks[key]:
            existing = await self._db(self.store.get, key)
            if existing and not existing.state.retryable:
                if (existing.to, existing.data, existing.value) != (to, bytes(data), value):
                    raise IdempotencyConflict(f"{key}: already used for another call ({existing.state})")
                return existing
            intent = await self._db(self.store.add, key, self.sender, to, bytes(data), value, gas)
            try:
                await self._sign_and_send(intent)
            except (RpcError, Web3RPCError) as exc:  # stays queued; the next tick tries again
                log.warning("%s: could not send yet: %s", key, exc)
                await self._db(self.store.set_reason, key, f"waiting for RPC: {exc}"[:500])
            self._notify()
            return await self._db(self.store.get, key)

    async def wait(self, key: str, timeout: float | None = None) -> TxOutcome:
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                intent = await self._db(self.store.get, key)
                if intent is None:
                    raise KeyError(key)
                if intent.state.done:
                    return TxOutcome.of(intent)
                await changed.wait()

    async def outcome(self, key: str) -> TxOutcome | None:
        """The settled outcome of a key, or None while it is unknown or still in flight."""
        intent = await self._db(self.store.get, key)
        return TxOutcome.of(intent) if intent and intent.state.done else None

    # -- sending ---------------------------------------------------------------------------------------

    async def _sign_and_send(self, intent: Intent) -> None:
        tx: dict[str, Any] = {"from": self.sender, "data": intent.data, "value": intent.value}
        if intent.to:
            tx["to"] = intent.to
        try:
            gas = intent.gas or await self._simulate(tx)
        except SimulationReverted as exc:
            log.info("%s: not sent, the call would revert: %s", intent.key, exc.reason)
            await self._db(self.store.set_state, intent.key, TxState.REJECTED, f"would revert: {exc.reason}")
            return
        fees = self.fees.market(await self.rpc.call(lambda w3: w3.eth.fee_history(5, "latest", [50]), "fee history"))
        async with self._nonce_lock:
            latest = await self.rpc.call(lambda w3: w3.eth.get_transaction_count(self.sender, "latest"), "nonce")
            local = await self._db(self.store.max_nonce, self.sender)
            nonce = max(latest, -1 if local is None else local + 1)
            tx_hash, raw = await self._sign_attempt(intent.key, {**tx, "gas": gas}, nonce, fees)
            await self._broadcast(intent.key, tx_hash, raw)
        log.info("%s: sent %s (nonce %d, %s)", intent.key, tx_hash, nonce, fees)

    async def _simulate(self, tx: dict[str, Any]) -> int:
        """eth_call then eth_estimateGas; a revert in either is reported with the contract's error."""

        async def run(w3: AsyncWeb3) -> int:
            await w3.eth.call(tx, "latest")
            return await w3.eth.estimate_gas(tx, "latest")

        try:
            return int(await self.rpc.call(run, "simulate") * GAS_MARGIN)
        except (ContractCustomError, ContractLogicError) as exc:
            raise SimulationReverted(_revert_reason(exc)) from None

    async def _sign_attempt(self, key: str, tx: dict[str, Any], nonce: int, fees: Fees) -> tuple[str, bytes]:
        body = {k: v for k, v in tx.items() if k != "from"}
        signed = self.signer.sign_transaction({**body, "nonce": nonce, "chainId": self.chain_id, "type": 2,
                                               "maxFeePerGas": fees.max_fee, "maxPriorityFeePerGas": fees.tip})
        tx_hash, raw = "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)
        await self._db(self.store.add_attempt, key, nonce, tx["gas"], tx_hash, fees.max_fee, fees.tip, raw)
        return tx_hash, raw

    async def _broadcast(self, key: str, tx_hash: str, raw: bytes, ceiling: Fees | None = None) -> None:
        """Sends raw bytes; whatever happens, the attempt stays on record and the tick looks after it."""
        reason = ""
        try:
            await self.rpc.call(lambda w3: w3.eth.send_raw_transaction(raw), "eth_sendRawTransaction")
        except Web3RPCError as exc:
            text = str(exc).lower()
            if any(s in text for s in ("already known", "already imported", "known transaction")):
                pass  # the node has it: possibly sent, which is what we wanted
            elif "nonce too low" in text:
                reason = "nonce already used: looking for this transaction's receipt"
            elif "underpriced" in text:
                reason = "replacement underpriced: bumping again"
            elif "insufficient funds" in text:
                reason = f"insufficient funds for gas on {self.sender}: top up the account; retrying"
                log.warning("%s: %s", key, reason)
            elif "base fee" in text:
                reason = "fee cap below the current base fee: waiting for it to fall or for a bump"
            else:
                reason = f"send error, possibly sent: {exc}"
                log.warning("%s: %s", key, reason)
        except RpcError as exc:
            reason = f"no RPC endpoint answered the send, possibly sent: {exc}"
        head = self.head.number if self.head else await self.rpc.call(lambda w3: w3.eth.block_number, "block number")
        await self._db(self.store.mark_sent, tx_hash, head)
        if not reason and ceiling is not None and self.fees.at_ceiling(ceiling):
            reason = f"bid at the fee ceiling ({ceiling}); waiting for the base fee to fall"
        await self._db(self.store.set_reason, key, reason[:500])

    # -- watching --------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over every open intent against the current head."""
        async with self._tick_lock:
            self.head = head = await self.rpc.head()
            intents = await self._db(self.store.open_intents, self.sender, head.number - self.reorg_depth)
            try:
                for intent in intents:
                    async with self._key_locks[intent.key]:
                        try:
                            await self._check(intent.key, head)
                        except (RpcError, Web3RPCError):
                            raise  # the chain is unreachable: no point going on with this pass
                        except Exception:  # one bad record must not hold up every other intent
                            self.errors += 1
                            log.exception("%s: check failed; retrying at the next head", intent.key)
            finally:
                self._notify()

    async def _check(self, key: str, head: Head) -> None:
        intent = await self._db(self.store.get, key)
        if intent.state is TxState.QUEUED:
            await self._sign_and_send(intent)
        elif intent.state is TxState.PENDING:
            await self._check_pending(intent, head)
        elif intent.state in (TxState.MINED, TxState.CONFIRMED, TxState.REVERTED):
            await self._check_mined(intent, head)

    async def _check_pending(self, intent: Intent, head: Head) -> None:
        attempts = await self._db(self.store.attempts, intent.key)
        if await self._record_receipt(intent, attempts, head):
            return
        used = await self.rpc.call(lambda w3: w3.eth.get_transaction_count(self.sender, "latest"), "nonce")
        if used > intent.nonce:
            # Mined between the two reads, or taken by a transaction this node did not sign: look again,
            # and give up only once the block that used the nonce is confirmed.
            if await self._record_receipt(intent, attempts, head):
                return
            seen = self._orphaned.setdefault(intent.key, head.number)
            if head.number - seen >= max(self.confirmations, 1):
                reason = (f"nonce {intent.nonce} was used by a transaction this node did not send "
                          "(is the key used elsewhere?); the effect did not happen")
                log.error("%s: %s", intent.key, reason)
                await self._db(self.store.set_state, intent.key, TxState.FAILED, reason)
            return
        self._orphaned.pop(intent.key, None)
        latest = attempts[-1]
        if latest.sent_block is None:  # signed and stored, then the process died before the broadcast
            await self._broadcast(intent.key, latest.hash, latest.raw)
            return
        old = Fees(latest.max_fee, latest.tip)
        due = head.number - latest.sent_block >= self.bump_after
        if (due or intent.reason.startswith("replacement underpriced")) and not self.fees.at_ceiling(old):
            history = await self.rpc.call(lambda w3: w3.eth.fee_history(5, "latest", [50]), "fee history")
            new = self.fees.bump(old, self.fees.market(history))
            tx = {"data": intent.data, "value": intent.value, "gas": intent.gas}
            if intent.to:
                tx["to"] = intent.to
            tx_hash, raw = await self._sign_attempt(intent.key, tx, intent.nonce, new)
            log.info("%s: unconfirmed after %s blocks, replacing with %s (%s)", intent.key,
                     self.bump_after, tx_hash, new)
            await self._broadcast(intent.key, tx_hash, raw, new)
        elif due or not await self._known(latest.hash):
            await self._broadcast(intent.key, latest.hash, latest.raw, old)  # dropped from the pool: same bytes

    async def _record_receipt(self, intent: Intent, attempts: list, head: Head) -> bool:
        for attempt in reversed(attempts):
            receipt = await self._receipt(attempt.hash)
            if receipt is not None:
                await self._db(self.store.set_state, intent.key, TxState.MINED, "", tx_hash=attempt.hash,
                               block_number=int(receipt["blockNumber"]),
                               block_hash="0x" + bytes(receipt["blockHash"]).hex(), receipt=Web3.to_json(receipt))
                await self._check_mined(await self._db(self.store.get, intent.key), head)
                return True
        return False

    async def _check_mined(self, intent: Intent, head: Head) -> None:
        block = await self.rpc.block(intent.block_number)
        if block is None or "0x" + block.hash.hex() != intent.block_hash:
            log.warning("%s: block %s holding %s was reorganised away; sending the transaction again",
                        intent.key, intent.block_number, intent.tx_hash)
            await self._db(self.store.set_state, intent.key, TxState.PENDING, "receipt removed by a reorg")
            attempt = next(a for a in await self._db(self.store.attempts, intent.key) if a.hash == intent.tx_hash)
            await self._broadcast(intent.key, attempt.hash, attempt.raw)
            return
        if intent.state is not TxState.MINED or head.number - intent.block_number + 1 < self.confirmations:
            return
        receipt = json.loads(intent.receipt)
        if int(receipt["status"]) == 1:
            await self._db(self.store.set_state, intent.key, TxState.CONFIRMED, "", tx_hash=intent.tx_hash,
                           block_number=intent.block_number, block_hash=intent.block_hash, receipt=intent.receipt)
            log.info("%s: confirmed in block %d", intent.key, intent.block_number)
        else:
            reason = await self._replay_reason(intent)
            await self._db(self.store.set_state, intent.key, TxState.REVERTED, reason, tx_hash=intent.tx_hash,
                           block_number=intent.block_number, block_hash=intent.block_hash, receipt=intent.receipt)
            log.warning("%s: reverted in block %d: %s", intent.key, intent.block_number, reason)

    async def _replay_reason(self, intent: Intent) -> str:
        """The reason a mined call reverted, by replaying it against the state of its block."""
        tx = {"from": self.sender, "to": intent.to, "data": intent.data, "value": intent.value}
        try:
            await self.rpc.call(lambda w3: w3.eth.call(tx, intent.block_number), "replay")
        except (ContractCustomError, ContractLogicError) as exc:
            return _revert_reason(exc)
        except (RpcError, Web3RPCError) as exc:
            return f"reverted (reason unavailable: {exc})"
        return "reverted (the call succeeds when replayed; likely out of gas or state changed within the block)"

    async def _receipt(self, tx_hash: str) -> Any:
        async def get(w3: AsyncWeb3) -> Any:
            try:
                return await w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                return None

        return await self.rpc.call(get, "receipt")

    async def _known(self, tx_hash: str) -> bool:
        async def get(w3: AsyncWeb3) -> bool:
            try:
                return await w3.eth.get_transaction(tx_hash) is not None
            except TransactionNotFound:
                return False

        return await self.rpc.call(get, "transaction by hash")

    # -- plumbing --------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @staticmethod
    async def _db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)


def _revert_reason(exc: ContractCustomError | ContractLogicError) -> str:
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return decode_revert(data)
    return str(exc.message if getattr(exc, "message", None) else exc)
