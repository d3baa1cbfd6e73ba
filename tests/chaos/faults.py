"""The faults a chaos run injects, each one a function of the running system and the run's seeded RNG.

Each returns a ``Fault`` record: what was done, to which jobs (the node's jobs that were in flight at that
moment, read from its API), and details for the table. The outcome of those jobs is filled in at the end
from the chain and the journal, so a fault's row says what became of the jobs it hit.

Where a fault aims at a moment of the job lifecycle (a kill while a claim is in flight, a reorg right after
the node's transaction was mined, a drop while it waits in the pool), it watches for that moment for a
bounded time and, failing that, strikes anyway and says so in the record (``aimed=False``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.chaos.proxy import Mode

if TYPE_CHECKING:
    from tests.chaos.harness import Chaos

GWEI = 10**9
# Journal states in which the node holds or is about to take an obligation: a fault then hits a job.
ACTIVE = ("validated", "claimed", "fetching", "running", "committed", "submitted", "finalized")
# Lifecycle points a kill aims at (a "validated" job is one whose claim is being sent or mined).
KILL_STAGES = ("validated", "claimed", "running", "committed", "submitted", "any")
SETTLE_STAGES = ("submitted", "finalized", "any")


@dataclass
class Fault:
    kind: str  # kill, outage, reorg, fee_spike, drop
    at: float  # seconds since the run started
    detail: str
    aimed: bool = True  # struck at the moment it aimed for (False: the moment never came; struck anyway)
    jobs: set[str] = field(default_factory=set)  # the node's jobs in flight when it struck
    hit_txs: int = 0  # node transactions it removed (reorg, drop)
    recovery_s: float | None = None  # until the node was back: ready after a kill, on the head after an
    # outage, its removed transactions' nonces used again after a reorg or drop (None: not within the limit)


def _active(chaos: Chaos) -> set[str]:
    try:
        return {j for j, rec in chaos.node.jobs().items() if rec["state"] in ACTIVE}
    except OSError:
        return set()


def _wait_stage(chaos: Chaos, stage: str, timeout: float) -> bool:
    """Polls the node's /jobs until some job is in ``stage``; False on timeout or when ``stage`` is "any"."""
    if stage == "any":
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(rec["state"] == stage for rec in chaos.node.jobs().values()):
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def kill(chaos: Chaos, rng: random.Random, stages: tuple[str, ...] = KILL_STAGES) -> Fault:
    """kill -9 the daemon at a lifecycle point (or a random moment), then start it again after a pause."""
    stage = rng.choice(stages)
    aimed = _wait_stage(chaos, stage, 15.0) if stage != "any" else True
    time.sleep(rng.uniform(0.0, 0.3))
    fault = Fault("kill", chaos.elapsed(), f"stage {stage}", aimed, _active(chaos))
    t = time.monotonic()
    chaos.node.kill()
    time.sleep(rng.uniform(0.0, 2.0))
    chaos.node.start(timeout=240)
    fault.recovery_s = time.monotonic() - t
    return fault


def outage(chaos: Chaos, rng: random.Random, seconds: float) -> Fault:
    """The RPC goes away for ``seconds``: first silently (blackhole), then refusing connections."""
    first = rng.choice((Mode.BLACKHOLE, Mode.REFUSE))
    second = Mode.REFUSE if first is Mode.BLACKHOLE else Mode.BLACKHOLE
    fault = Fault("outage", chaos.elapsed(), f"{seconds:.0f} s: {first.value} then {second.value}", True,
                  _active(chaos))
    chaos.proxy.set_mode(first)
    time.sleep(seconds / 2)
    chaos.proxy.set_mode(second)
    time.sleep(seconds / 2)
    chaos.proxy.set_mode(Mode.PASS)
    fault.recovery_s = _catch_up(chaos, 120.0)
    return fault


def _catch_up(chaos: Chaos, timeout: float) -> float | None:
    """Seconds until the node's /status shows the chain head anvil had when the RPC came back."""
    t, target = time.monotonic(), chaos.w3.eth.block_number
    while time.monotonic() - t < timeout:
        try:
            if (chaos.node.get("/status").get("chain", {}).get("head") or 0) >= target:
                return time.monotonic() - t
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def _node_pending(chaos: Chaos) -> list[dict[str, Any]]:
    pool = chaos.rpc("txpool_content", [])
    me = chaos.node.address.lower()
    return [tx for sender, txs in (pool.get("pending") or {}).items() if sender.lower() == me for tx in txs.values()]


def reorg(chaos: Chaos, rng: random.Random) -> Fault:
    """A reorg of depth 1-5 right after a node transaction (a claim or a submit) was mined, so it leaves
    the canonical chain and the node must notice and send it again."""
    depth = rng.randint(1, 5)
    aimed, block = False, None
    deadline = time.monotonic() + 15.0
    watched: set[str] = set()
    while time.monotonic() < deadline and block is None:
        watched |= {tx["hash"] for tx in _node_pending(chaos)}
        for h in list(watched):
            receipt = chaos.rpc("eth_getTransactionReceipt", [h])
            if receipt:
                block, aimed = int(receipt["blockNumber"], 16), True
                break
        time.sleep(0.03)
    head = chaos.w3.eth.block_number
    if block is not None:
        depth = max(depth, head - block + 1)  # deep enough to take the node's transaction out
        depth = min(depth, 5)
    fault = Fault("reorg", chaos.elapsed(), f"depth {depth}", aimed, _active(chaos))
    mine = chaos.node_txs_in(head - depth + 1, head)
    used = _nonce(chaos)
    chaos.rpc("anvil_reorg", [depth, []])
    t = time.monotonic()
    fault.hit_txs = len(mine)
    fault.detail += f", {len(mine)} node tx removed"
    chaos.requester.resend_lost()
    fault.recovery_s = _nonce_back(chaos, used, t) if mine else None
    return fault


def _nonce(chaos: Chaos) -> int:
    return chaos.w3.eth.get_transaction_count(chaos.node.address, "latest")


def _nonce_back(chaos: Chaos, used: int, since: float, timeout: float = 60.0) -> float | None:
    """Seconds (from ``since``) until the node's mined transaction count is back at ``used``: what was
    removed is on chain again (or replaced by transactions of the same nonces)."""
    while time.monotonic() - since < timeout:
        if _nonce(chaos) >= used:
            return time.monotonic() - since
        time.sleep(0.1)
    return None


def fee_spike(chaos: Chaos, rng: random.Random, seconds: float) -> Fault:
    """The base fee jumps 50x (over at least 1 gwei, else a spike on an idle devnet is a few wei) and stays
    up for ``seconds`` (set again before every block), then decays as EIP-1559 lets it."""
    base = int(chaos.w3.eth.get_block("latest")["baseFeePerGas"])
    spiked = 50 * max(base, GWEI)
    fault = Fault("fee_spike", chaos.elapsed(), f"base fee {base / GWEI:.3f} -> {spiked / GWEI:.0f} gwei for "
                  f"{seconds:.0f} s", True, _active(chaos))
    used = _nonce(chaos)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        chaos.rpc("anvil_setNextBlockBaseFeePerGas", [hex(spiked)])
        time.sleep(0.2)
    fault.detail += f"; {_nonce(chaos) - used} node tx mined meanwhile"
    t = time.monotonic()
    while time.monotonic() - t < 60.0:  # back: nothing of the node's left waiting in the pool
        if not _node_pending(chaos):
            fault.recovery_s = time.monotonic() - t
            break
        time.sleep(0.1)
    return fault


def drop(chaos: Chaos, rng: random.Random) -> Fault:
    """Drops a node transaction from anvil's pool while it waits there. It watches the pool for a while;
    if no node transaction shows up, it pauses block production so the next one stays put long enough."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not found:
        found = _node_pending(chaos)
        time.sleep(0.02)
    paused = False
    try:
        if not found:
            chaos.rpc("evm_setIntervalMining", [0])
            paused = True
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline and not found:
                found = _node_pending(chaos)
                time.sleep(0.05)
        fault = Fault("drop", chaos.elapsed(), "", bool(found), _active(chaos))
        t = time.monotonic()
        for tx in found:
            chaos.rpc("anvil_dropTransaction", [tx["hash"]])
        fault.hit_txs = len(found)
        fault.detail = f"{len(found)} node tx dropped" + (" (blocks paused)" if paused else "")
    finally:
        if paused:
            chaos.rpc("evm_setIntervalMining", [1])
    if found:
        fault.recovery_s = _nonce_back(chaos, max(int(tx["nonce"], 16) for tx in found) + 1, t)
    return fault


__all__ = ["ACTIVE", "KILL_STAGES", "SETTLE_STAGES", "Fault", "drop", "fee_spike", "kill", "outage", "reorg"]
