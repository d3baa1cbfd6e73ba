"""Which of the provider's jobs are due for finalization, found from the chain alone.

The pass must work without the node's journal (the node may be stopped or on another machine), so it reads
the provider's ``ResultSubmitted`` logs (the provider is an indexed topic, so the node filters server-side)
in ranges of ``CHUNK`` blocks, which public RPC endpoints accept. A small state file under the data
directory keeps the next block to read and the jobs seen but not yet settled, so each run reads only new
blocks plus a reorg margin, and a job whose window is still open is remembered until it is finalized (by us,
the node or anyone) or leaves the Submitted path for good. ``getJob`` has the last word: a job is due only
when the chain says Submitted with ``due`` at or before the latest block's time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from requests.exceptions import Timeout
from web3.exceptions import Web3RPCError

from node.chain.provider import OperatorChain
from node.files import write_atomic

CHUNK = 2000  # blocks per eth_getLogs; many public endpoints refuse wider ranges (narrower ones: halved on refusal)
STATE_NAME = "payout-state.json"
STATE_VERSION = 1
SUBMITTED, DISPUTED, CHALLENGED = 3, 4, 5  # JobMarket.JobState; only these can still end as a payout


@dataclass(frozen=True)
class DueJob:
    job_id: str  # 0x + 64 hex digits
    payment: int
    fee_bps: int

    @property
    def net(self) -> int:
        """What finalizing credits the payout address, exactly as JobMarket._payProvider computes it."""
        return self.payment - self.payment * self.fee_bps // 10_000


@dataclass
class ScanState:
    """Where the log scan stands for one (chain, market, provider); another triple starts afresh."""

    chain_id: int
    market: str
    provider: str
    next_block: int
    candidates: dict[str, int] = field(default_factory=dict)  # job id -> the due time last seen
    start_block: int = 0  # never read before this (chain.start_block or the deployment block); not stored

    @classmethod
    def load(cls, path: Path, *, chain_id: int, market: str, provider: str, start_block: int) -> ScanState:
        fresh = cls(chain_id, market, provider, start_block, start_block=start_block)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError):
            return fresh  # a damaged cursor only costs a full rescan
        same = (isinstance(data, dict) and data.get("version") == STATE_VERSION and data.get("chain_id") == chain_id
                and str(data.get("market", "")).lower() == market.lower()
                and str(data.get("provider", "")).lower() == provider.lower())
        if not same or not isinstance(data.get("next_block"), int) or not isinstance(data.get("candidates"), dict):
            return fresh
        candidates = {str(k): int(v) for k, v in data["candidates"].items()}
        return cls(chain_id, market, provider, max(start_block, data["next_block"]), candidates, start_block)

    def save(self, path: Path) -> None:
        """Atomically (temp file + rename), so a crash leaves the old state or the new one, never half."""
        body = {"version": STATE_VERSION, "chain_id": self.chain_id, "market": self.market,
                "provider": self.provider, "next_block": self.next_block, "candidates": self.candidates}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(body, indent=1, sort_keys=True))


def scan_submissions(chain: OperatorChain, state: ScanState, head: int, *, margin: int) -> int:
    """Add the provider's jobs submitted up to block `head` to the candidates; returns how many were new.
    The last `margin` blocks already read are read again, so a reorg that moved a submission is not missed
    (and a chain that went back below the cursor is read again from there)."""
    event = chain.market.events.ResultSubmitted
    topic_provider = "0x" + "00" * 12 + state.provider[2:].lower()
    start = max(state.start_block, min(state.next_block, head + 1) - margin)
    added, lo, size = 0, start, CHUNK
    while lo <= head:
        hi = min(lo + size - 1, head)
        try:
            logs = chain.w3.eth.get_logs({"fromBlock": lo, "toBlock": hi, "address": chain.market.address,
                                          "topics": [event.topic, None, topic_provider]})
        except (Web3RPCError, Timeout):  # many endpoints refuse (or stall on) wide ranges: ask for less
            if hi == lo:
                raise
            size = max(1, (hi - lo + 1) // 2)
            continue
        lo = hi + 1
        for log in logs:
            args = event().process_log(log)["args"]
            job_id = "0x" + bytes(args["jobId"]).hex()
            if job_id not in state.candidates:
                added += 1
            state.candidates[job_id] = int(args["challengeWindowEnd"])
    state.next_block = head + 1
    return added


def job_record(chain: OperatorChain, job_id: str) -> dict[str, Any]:
    """getJob as a dict keyed by the Job struct's field names."""
    call = chain.market.functions.getJob(bytes.fromhex(job_id[2:]))
    names = [o["name"] for o in call.abi["outputs"][0]["components"]]
    return dict(zip(names, call.call(), strict=True))


def confirm_due(chain: OperatorChain, state: ScanState, now: int) -> list[DueJob]:
    """The candidates the chain says are due at time `now`. Candidates no longer on the way to a payout are
    dropped; those still in their window keep their (re-read) due time and wait for a later run."""
    due: list[DueJob] = []
    for job_id, due_at in sorted(state.candidates.items()):
        if due_at > now:
            continue  # the window is still open: no read needed yet
        job = job_record(chain, job_id)
        if job["state"] == SUBMITTED and str(job["provider"]).lower() == state.provider.lower():
            state.candidates[job_id] = int(job["due"])
            if job["due"] <= now:
                due.append(DueJob(job_id, int(job["payment"]), int(job["feeBps"])))
        elif job["state"] not in (DISPUTED, CHALLENGED):
            del state.candidates[job_id]  # finalized, slashed, or gone in a reorg: nothing left to collect
    return due


def still_due(chain: OperatorChain, job_ids: Iterable[str], now: int) -> list[str]:
    """Re-read right before sending: the node's settler (or anyone) may have finalized some meanwhile."""
    return [j for j in job_ids if (job := job_record(chain, j))["state"] == SUBMITTED and job["due"] <= now]
