"""What the chain says about a job, and what the journal must record because of it.

The journal is the node's memory; the JobMarket contract is the truth about money and deadlines. After a
crash, a missed event, a reorg or another party acting on a job (the requester accepting or disputing,
anyone finalizing or expiring), the two disagree, and the node reads the chain (``read_job``) and asks
``implied_state`` what to write down.

``implied_state`` is pure and only ever proposes a move ``node.jobs.state.TRANSITIONS`` allows: when the
chain is several steps ahead (a node that crashed after submitting and comes back after the job was
finalized) it returns the next legal step and is asked again (``apply_chain_state`` does that loop).
It never invents the node's own work: a journal that never committed a result is not moved to submitted
because a root shows up on chain. Such combinations cannot come from one node using its key alone (a
restored database, the key running on two machines); they return None and stay visible for a human.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum

from eth_utils import to_checksum_address

from node.chain.contracts import load_abi
from node.chain.rpc import RpcClient
from node.jobs.journal import JobRecord, Journal, StaleState, job_key
from node.jobs.state import TERMINAL, JobState, is_legal

log = logging.getLogger(__name__)
ZERO_ADDRESS = "0x" + "00" * 20


class ChainJobState(IntEnum):
    """JobMarket.JobState, in the contract's order."""

    NONE = 0
    OPEN = 1
    CLAIMED = 2
    SUBMITTED = 3
    DISPUTED = 4
    CHALLENGED = 5
    FINALIZED = 6
    CANCELLED = 7
    EXPIRED = 8
    SLASHED = 9


# States in which the chain's `provider` is the claiming provider (before that it is the addressed one).
_CLAIMED_OR_LATER = frozenset({ChainJobState.CLAIMED, ChainJobState.SUBMITTED, ChainJobState.DISPUTED,
                               ChainJobState.CHALLENGED, ChainJobState.FINALIZED, ChainJobState.SLASHED})
_RESULT_ON_CHAIN = _CLAIMED_OR_LATER - {ChainJobState.CLAIMED}


@dataclass(frozen=True)
class OnChainJob:
    """JobMarket.getJob. ``due`` is the offer expiry while Open, the submit deadline while Claimed and the
    end of the challenge window from Submitted on; ``provider`` is the claiming operator once claimed."""

    state: ChainJobState
    requester: str
    provider: str
    due: int
    fee_bps: int
    payment: int
    bond: int
    result_root: bytes

    @property
    def net_payment(self) -> int:
        """What finalizing credits the provider's payout address: the payment less the market fee."""
        return self.payment - self.payment * self.fee_bps // 10_000


async def read_job(rpc: RpcClient, market: str, job_id: str | bytes) -> OnChainJob:
    """getJob through the RPC client (failover, timeouts); an unknown id reads as state NONE."""
    raw = bytes.fromhex(job_key(job_id)[2:])
    address = to_checksum_address(market)

    async def get(w3):
        return await w3.eth.contract(address=address, abi=load_abi("JobMarket")).functions.getJob(raw).call()

    v = await rpc.call(get, f"getJob {job_key(job_id)[:10]}")
    return OnChainJob(ChainJobState(int(v[2])), to_checksum_address(v[0]), to_checksum_address(v[1]), int(v[3]),
                      int(v[4]), int(v[5]), int(v[6]), bytes(v[8]))


def _root_matches(record: JobRecord, chain: OnChainJob) -> bool:
    return record.result_root is not None and record.result_root == "0x" + chain.result_root.hex()


def implied_state(record: JobRecord, chain: OnChainJob, me: str, now: int) -> tuple[JobState, str] | None:
    """The move the journal must make given the chain, with its reason; None when there is nothing to
    record. ``me`` is our operator address, ``now`` the chain's time (latest block timestamp)."""
    proposal = _propose(record, chain, me.lower(), now)
    if proposal is None or not is_legal(record.state, proposal[0]):
        return None  # the table below only proposes legal moves; this guard keeps it that way
    return proposal


def _propose(rec: JobRecord, chain: OnChainJob, me: str, now: int) -> tuple[JobState, str] | None:
    s, c = rec.state, chain.state
    if s in TERMINAL:
        return None
    mine = chain.provider.lower() == me
    taken = c in _CLAIMED_OR_LATER and not mine and chain.provider.lower() != ZERO_ADDRESS
    name = c.name.lower()

    if s in (JobState.SEEN, JobState.VALIDATED):
        if c is ChainJobState.OPEN and now >= chain.due:
            return JobState.EXPIRED, f"the offer expired at {chain.due} (chain time {now}) without a claim"
        if c is ChainJobState.CANCELLED:
            return JobState.EXPIRED, "the requester cancelled the offer"
        if c is ChainJobState.EXPIRED:
            why = "our claim lapsed and was expired on chain" if mine else "the offer expired on chain"
            return JobState.EXPIRED, why
        if taken:
            return JobState.EXPIRED, f"claimed by another provider ({chain.provider}); chain state {name}"
        if c is ChainJobState.CLAIMED and mine:
            if s is JobState.SEEN:  # the node claims only after validating; record that step first
                return JobState.VALIDATED, "our claim is on chain, so the offer was validated before claiming"
            return JobState.CLAIMED, f"our claim is on chain; deadline {chain.due}"
        return None

    if s in (JobState.CLAIMED, JobState.FETCHING, JobState.RUNNING, JobState.COMMITTED, JobState.FAILED):
        if c is ChainJobState.EXPIRED:
            return JobState.EXPIRED, f"the claim's deadline ({chain.due}) passed and the job was expired on chain"
        if c is ChainJobState.CANCELLED:
            return JobState.EXPIRED, "our claim is gone from the chain (reorganised away) and the offer was cancelled"
        if taken:
            return JobState.EXPIRED, (f"our claim is gone from the chain: the job is {name} by another provider "
                                      f"({chain.provider})")
        if s is JobState.COMMITTED and mine and c in _RESULT_ON_CHAIN and _root_matches(rec, chain):
            return JobState.SUBMITTED, f"our result root is on chain (chain state {name})"
        return None

    if s is JobState.SUBMITTED:
        if not mine:
            return None
        if c is ChainJobState.DISPUTED:
            return JobState.DISPUTED, "the requester disputed the result"
        if c is ChainJobState.CHALLENGED:
            return JobState.DISPUTED, "the workload's verifier opened a challenge against the result"
        if c is ChainJobState.FINALIZED:
            return JobState.FINALIZED, f"finalized on chain; {chain.net_payment} credited to the payout address"
        if c is ChainJobState.SLASHED:
            return JobState.SLASHED, "slashed on chain after a dispute or challenge"
        return None

    if s is JobState.DISPUTED:
        if not mine:
            return None
        if c is ChainJobState.SUBMITTED:
            return JobState.SUBMITTED, f"the challenge closed without fraud; the window ends at {chain.due}"
        if c is ChainJobState.FINALIZED:
            return JobState.FINALIZED, (f"the dispute was ruled for us; {chain.net_payment} (plus any dispute "
                                        "bond) credited to the payout address")
        if c is ChainJobState.SLASHED:
            return JobState.SLASHED, "the dispute or challenge was ruled against us; the bond is gone"
        return None

    if s is JobState.FINALIZED:  # finalized -> paid is the settler's withdraw, not a read; only a reorg goes back
        if not mine:
            return None
        if c is ChainJobState.SUBMITTED:
            return JobState.SUBMITTED, (f"a reorg removed the finalization: the chain shows the job submitted, "
                                        f"due at {chain.due}")
        if c in (ChainJobState.DISPUTED, ChainJobState.CHALLENGED):
            return JobState.DISPUTED, f"a reorg removed the ruling: the chain shows the job {name} again"
        return None
    return None


def apply_chain_state(journal: Journal, record: JobRecord, chain: OnChainJob, me: str, now: int) -> JobRecord | None:
    """Records every move the chain implies, one legal step at a time, each compare-and-set against the
    state it was computed from. Returns the job as this call last moved it, or None when it moved nothing
    (nothing implied, or another task moved the job first: its move wins). Synchronous: the journal is."""
    moved: JobRecord | None = None
    current = record
    for _ in range(len(JobState)):  # every step is a move of the machine; it cannot take more than this
        step = implied_state(current, chain, me, now)
        if step is None:
            break
        target, reason = step
        fields = {"deadline": chain.due} if target is JobState.CLAIMED and current.deadline is None else {}
        try:
            current = journal.transition(current.job_id, target, reason=reason, expect=current.state,
                                         code=f"chain_{chain.state.name.lower()}", **fields)
        except StaleState:
            log.info("job %s moved while reading the chain; leaving it as it is", current.job_id,
                     extra={"job_id": current.job_id})
            break
        moved = current
    return moved


__all__ = ["ChainJobState", "OnChainJob", "apply_chain_state", "implied_state", "read_job"]
