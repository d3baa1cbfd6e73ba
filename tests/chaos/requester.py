"""The chaos run's customer: a thread posting a steady stream of small matmul-int8 jobs, and some big ones.

It talks to anvil directly (never through the node's proxy: an RPC outage is the node's problem, not the
market's), signs its own transactions and keeps their raw bytes, because anvil drops the transactions of
the blocks an ``anvil_reorg`` removes, where a public network would put them back into the pool. After a
reorg the harness calls ``resend_lost()``, which does what the network would have done. The node's own
transactions get no such help: recovering them is the node's job.

Every ``bad_every``-th job carries an input whose bytes do not match its committed hash: the node claims it,
cannot fetch a matching input, marks it failed, and (once the deadline has passed) expires it, so each run
also walks the failed-then-expired path with its reason.

Most offers are posted on chain (``postOffer``, claimed with ``claim``); every ``direct_every``-th one is
sent to the node's ``POST /offers`` instead (claimed with ``claimSigned``), and posted on chain after all
when the node is down at that moment.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from web3 import Web3

from node.chain.protocol import Protocol
from scripts.localnode import TOKEN, LocalNode, envelope, job_id, offer
from tests.e2e.nodenet import matmul

GWEI = 10**9
BAD_INPUT_URI = "data:,not-the-committed-input"
BAD_INPUT_HASH = hashlib.sha256(b"the committed input").digest()


@dataclass
class Posted:
    job_id: str
    size: int
    kind: str  # "chain" (postOffer) or "direct" (POST /offers)
    payment: int
    at: float  # monotonic time it was sent
    tx_hash: str | None = None  # of the postOffer
    bad_input: bool = False  # its input cannot match its hash: expected to end failed, then expired


class Requester:
    """``start()`` / ``stop()``; ``posted`` maps job id -> Posted. Thread-safe against ``resend_lost()``."""

    def __init__(self, proto: Protocol, key: str, node_ref: Any, rng: random.Random, *, interval: float,
                 small: tuple[int, int], big: int, big_every: int, direct_every: int, bad_every: int,
                 max_duration: int, log: Any = print) -> None:
        self.proto, self.key, self.rng, self.log = proto, key, rng, log
        self.node_ref = node_ref  # a callable returning the current LocalNode (it is replaced on restarts)
        self.interval, self.small, self.big, self.big_every = interval, small, big, big_every
        self.direct_every, self.bad_every, self.max_duration = direct_every, bad_every, max_duration
        self.account = proto.account(key)
        self.w3: Web3 = proto.w3
        self.posted: dict[str, Posted] = {}
        self.errors: list[str] = []
        self._raw: dict[int, bytes] = {}  # our tx nonce -> signed bytes, to resend after a reorg
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offer_nonce = 1_000_000  # the offers' own nonces (the market's replay guard), not tx nonces
        self._tx_nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Requester:
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-requester")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.post_one(n)
            except Exception as exc:  # noqa: BLE001 - a failed post is reported, the stream goes on
                self.errors.append(f"post {n}: {exc!r}"[:300])
            self._stop.wait(self.interval * self.rng.uniform(0.5, 1.5))

    # -- posting ---------------------------------------------------------------------------------------
    def post_one(self, n: int) -> Posted:
        size = self.big if self.big_every and n % self.big_every == 0 else self.rng.randrange(*self.small)
        params = matmul(size, self.rng.randrange(2**32))
        self._offer_nonce += 1
        bad = bool(self.bad_every) and n % self.bad_every == 0
        inputs = {"input_uri": BAD_INPUT_URI, "input_hash": BAD_INPUT_HASH} if bad else {}
        o, sig = offer(self.proto, self.key, params, nonce=self._offer_nonce, payment=TOKEN + n,
                       max_duration=self.max_duration, **inputs)
        jid = job_id(self.proto, o)
        if self.direct_every and n % self.direct_every == 0 and self._send_direct(o, params, sig):
            p = Posted(jid, size, "direct", o.payment, time.monotonic(), bad_input=bad)
        else:
            call = self.proto.market.functions.postOffer(o.as_struct(), params, sig)
            p = Posted(jid, size, "chain", o.payment, time.monotonic(), self._send(call), bad_input=bad)
        with self._lock:
            self.posted[jid] = p
        return p

    def _send_direct(self, o: Any, params: bytes, sig: bytes) -> bool:
        node: LocalNode | None = self.node_ref()
        if node is None:
            return False
        try:
            status, _, _ = node.request("/offers", body=envelope(self.proto, o, params, sig),
                                        headers={"Content-Type": "application/json"}, timeout=5)
        except OSError:
            return False  # the node is down (killed): post it on chain instead
        return status == 202

    def _send(self, call: Any) -> str:
        """Signs at our own nonce with a fee cap far above any spike, so the stream never stalls on fees."""
        with self._lock:
            nonce = self._tx_nonce
            tx = call.build_transaction({"from": self.account.address, "nonce": nonce, "gas": 1_500_000,
                                         "maxFeePerGas": 5_000 * GWEI, "maxPriorityFeePerGas": 2 * GWEI,
                                         "chainId": self.proto.deployment.chain_id})
            signed = self.account.sign_transaction(tx)
            self._raw[nonce] = bytes(signed.raw_transaction)
            self._tx_nonce += 1
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
            return "0x" + bytes(signed.hash).hex()

    def resend_lost(self) -> int:
        """Rebroadcasts our transactions the chain no longer has (a reorg removed them); returns how many."""
        with self._lock:
            mined = self.w3.eth.get_transaction_count(self.account.address, "latest")
            resent = 0
            for nonce in range(mined, self._tx_nonce):
                try:
                    self.w3.eth.send_raw_transaction(self._raw[nonce])
                    resent += 1
                except Exception as exc:  # noqa: BLE001 - "already known": still in the pool, fine
                    if "known" not in str(exc).lower():
                        self.errors.append(f"resend nonce {nonce}: {exc!r}"[:300])
            for nonce in [n for n in self._raw if n < mined - 64]:
                del self._raw[nonce]  # deeper than any reorg the harness makes
            return resent

    def wait_mined(self, timeout: float = 60.0) -> None:
        """Until every transaction we sent is in a block (the end of the run)."""
        deadline = time.monotonic() + timeout
        while self.w3.eth.get_transaction_count(self.account.address, "latest") < self._tx_nonce:
            if time.monotonic() > deadline:
                raise TimeoutError("the requester's transactions were not all mined")
            time.sleep(0.5)


__all__ = ["Posted", "Requester"]
