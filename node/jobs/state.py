"""The job state machine: the one place where job states and their legal transitions are written down.

Everything else asks this module: the journal refuses any move not in ``TRANSITIONS``, the scheduler
and settler read ``TERMINAL`` and ``UNDER_DEADLINE``, and a restarted node reads ``ON_CHAIN_STEP`` to know
which steps it must look up on chain before redoing them, and ``RESUME`` to say what it will do.

The happy path mirrors the JobMarket contract: an offer is *seen* (event or direct), *validated* (signature,
escrow, policy), *claimed* on chain, its inputs *fetching*, its workload *running*, its result root
*committed* locally, then *submitted* on chain, *finalized* once the challenge window passes (or the
requester accepts) and *paid* once withdrawn to the payout address. A node state ``disputed`` stands for
both of the contract's Disputed (requester) and Challenged (workload verifier) states.

``failed`` is not terminal. It means the node's own work is over (inputs unusable, worker crashed, the
submit cannot land), but the claim still holds the provider's bond locked on chain until someone calls
``expire()`` after the deadline, and a provider with a locked bond cannot deregister. So a failed job stays
open in the journal until the chain shows it Expired; the settler may send that ``expire:<id>`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class JobState(StrEnum):
    SEEN = "seen"  # heard of: an OfferPosted event or a direct offer; nothing checked yet
    VALIDATED = "validated"  # signature, escrow and policy passed; a claim candidate
    CLAIMED = "claimed"  # our claim is on chain; the deadline runs and our bond is locked
    FETCHING = "fetching"  # downloading and hash-checking the inputs
    RUNNING = "running"  # the workload runs in a worker process
    COMMITTED = "committed"  # result written and its root computed; not on chain yet
    SUBMITTED = "submitted"  # result root on chain; the challenge window runs
    DISPUTED = "disputed"  # the requester disputed or a verifier challenged the result
    FINALIZED = "finalized"  # payment credited to our payout address on chain
    PAID = "paid"  # the credit was withdrawn to the payout address
    REJECTED = "rejected"  # refused before any claim (bad signature, policy, ...); reason says why
    FAILED = "failed"  # our work on a claimed job ended without a result; awaits expiry on chain
    EXPIRED = "expired"  # the offer lapsed or went elsewhere, or the claim's deadline passed
    SLASHED = "slashed"  # the result was ruled wrong; our bond is gone


_S = JobState

# Every legal move and, on its line, why it exists. Anything not listed raises IllegalTransition.
_EDGES: dict[JobState, dict[JobState, str]] = {
    _S.SEEN: {
        _S.VALIDATED: "signature, escrow and every policy check passed",
        _S.REJECTED: "a check failed: bad signature, no escrow, below the price floor, not our workload, ...",
        _S.EXPIRED: "the offer expired, was cancelled or was claimed by another provider before we checked it",
    },
    _S.VALIDATED: {
        _S.CLAIMED: "our claim (or claimSigned for a direct offer) is confirmed on chain",
        _S.REJECTED: "a re-check before claiming failed (policy changed, requester now denied, ...)",
        _S.EXPIRED: "the offer expired, was cancelled or was taken by another provider before our claim landed",
    },
    _S.CLAIMED: {
        _S.FETCHING: "a device slot is ours and the deadline can be met: start fetching the inputs",
        _S.FAILED: "we cannot do the work (device lost, workload unavailable); the claim waits for expiry",
        _S.EXPIRED: "the deadline passed before a result was submitted; the bond went to the requester",
    },
    _S.FETCHING: {
        _S.RUNNING: "the inputs are here and match their hash",
        _S.FAILED: "the inputs cannot be fetched or do not match their hash",
        _S.EXPIRED: "the deadline passed while fetching",
    },
    _S.RUNNING: {
        _S.COMMITTED: "the worker finished; the result is stored and its root computed",
        _S.FAILED: "the worker failed (crash, out of memory, bad params) or cannot finish in time",
        _S.EXPIRED: "the deadline passed while running",
    },
    _S.COMMITTED: {
        _S.SUBMITTED: "our submitResult is confirmed on chain",
        _S.FAILED: "the submit cannot land (e.g. rejected by simulation) before the deadline",
        _S.EXPIRED: "the deadline passed before the submit was mined",
    },
    _S.SUBMITTED: {
        _S.FINALIZED: "the window passed and finalize ran, or the requester accepted early",
        _S.DISPUTED: "the requester disputed, or the workload's verifier opened a challenge",
        _S.SLASHED: "found slashed on chain after a dispute the node never saw (it was down meanwhile)",
    },
    _S.DISPUTED: {
        _S.FINALIZED: "the arbiter ruled for us: paid, plus the requester's dispute bond",
        _S.SUBMITTED: "a challenge closed without fraud: back to Submitted with the original window",
        _S.SLASHED: "ruled against us or fraud proven: the bond is gone",
    },
    _S.FINALIZED: {
        _S.PAID: "the credit was withdrawn to the payout address",
        _S.SUBMITTED: "a reorg removed the finalization: the chain shows the job submitted again",
        _S.DISPUTED: "a reorg removed the ruling: the chain shows the dispute or challenge open again",
    },
    _S.FAILED: {
        _S.EXPIRED: "the chain shows the lapsed claim expired (by us or anyone); the bond is forfeit",
    },
    _S.PAID: {},
    _S.REJECTED: {},
    _S.EXPIRED: {},
    _S.SLASHED: {},
}

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {state: frozenset(_EDGES[state]) for state in JobState})
WHY: Mapping[tuple[JobState, JobState], str] = MappingProxyType(
    {(a, b): why for a, targets in _EDGES.items() for b, why in targets.items()})
TERMINAL: frozenset[JobState] = frozenset(state for state, targets in TRANSITIONS.items() if not targets)
# The claim is ours and its deadline runs: a job here past its deadline must be reported, never dropped.
UNDER_DEADLINE: frozenset[JobState] = frozenset({_S.CLAIMED, _S.FETCHING, _S.RUNNING, _S.COMMITTED})

# States entered by an on-chain transaction, with the idempotency key prefix the transaction manager uses
# ("claim:<jobId>", ...). A restarted node reads the chain and that intent before redoing the step that
# leads into one of these states, so a claim or a submit is never sent twice.
ON_CHAIN_STEP: Mapping[JobState, str] = MappingProxyType({
    _S.CLAIMED: "claim",
    _S.SUBMITTED: "submit",
    _S.FINALIZED: "finalize",
    _S.PAID: "withdraw",
})

# What a restarted node does with a job in each non-terminal state (shown by `status`).
RESUME: Mapping[JobState, str] = MappingProxyType({
    _S.SEEN: "validate it again; nothing was promised yet",
    _S.VALIDATED: "look up the claim:<id> intent and the chain first: record claimed or expired as found, "
                 "else it is a claim candidate again",
    _S.CLAIMED: "fetch the inputs if the deadline can still be met, else report it overdue",
    _S.FETCHING: "fetch again (hash-checked) if the deadline can still be met, else report it overdue",
    _S.RUNNING: "the worker died with the node: run again if the deadline can still be met, else report it overdue",
    _S.COMMITTED: "look up the submit:<id> intent and the chain first: record submitted if the root is there, "
                 "else submit the stored root",
    _S.SUBMITTED: "read the chain: record a dispute, finalization or slash as found, else finalize after the window",
    _S.DISPUTED: "read the chain: answer the dispute or challenge if the protocol lets us, record how it ended",
    _S.FINALIZED: "the payment is credited on chain; it is withdrawn with the next withdraw to the payout address, "
                 "after reading the chain (a reorg may have undone the finalization)",
    _S.FAILED: "nothing to run; after the deadline record expired once the chain shows it, "
              "or send expire:<id> to release the locked bond",
})


class IllegalTransition(ValueError):
    """A move the state machine does not allow; the message names both states and what is allowed."""

    def __init__(self, from_state: JobState | None, to_state: JobState, job_id: str | None = None) -> None:
        self.from_state = from_state
        self.to_state = to_state
        self.job_id = job_id
        who = f"job {job_id}: " if job_id else ""
        if from_state is None:
            detail = "a job starts as seen"
        elif from_state in TERMINAL:
            detail = f"{from_state} is terminal"
        else:
            detail = f"allowed from {from_state}: {', '.join(sorted(TRANSITIONS[from_state]))}"
        super().__init__(f"{who}illegal transition {from_state or 'new'} -> {to_state} ({detail})")


def is_legal(from_state: JobState, to_state: JobState) -> bool:
    """Whether ``from_state -> to_state`` is a move of the machine (staying put is not a move)."""
    return JobState(to_state) in TRANSITIONS[JobState(from_state)]


def check(from_state: JobState, to_state: JobState, job_id: str | None = None) -> None:
    """Raises IllegalTransition unless the move is legal."""
    if not is_legal(from_state, to_state):
        raise IllegalTransition(JobState(from_state), JobState(to_state), job_id)
