"""What must hold after a chaos run, read from the chain (the truth about money) and the node's journal.

1. Every job the node claimed on chain ended paid (finalized on chain, withdrawn), or is in the journal as
   expired or failed with a reason.
2. No transaction effect happened twice: at most one JobClaimed, ResultSubmitted and JobFinalized per job,
   at most one mined claim / claimSigned / submitResult transaction of the node per job (a second one,
   even reverted, means the node lost track of the first), and every mined node transaction is one the
   node's transaction store signed, each nonce used by one intent.
3. Every finalized payment reached the payout address: its token balance equals the sum over our
   JobFinalized events, each of which is payment minus the protocol fee (fee = payment * feeBps / 10000),
   and nothing is left in the market under the payout address.
4. The journal agrees with the chain, job by job (``AGREES``), and knows every offer that was posted.

``verify`` returns a ``Verdict``: the violations (empty when all holds) and each job's final journal state
and reason, which the table groups by fault.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import function_signature_to_4byte_selector

from node.chain.offers import JobOffer
from node.chain.protocol import Protocol

# Chain state (JobMarket.JobState) names by number.
CHAIN = ("none", "open", "claimed", "submitted", "disputed", "challenged", "finalized", "cancelled", "expired",
         "slashed")
# For each final journal state, the chain states it may stand beside; ``mine`` means claimed by this node.
AGREES: dict[str, set[str]] = {
    "paid": {"finalized"},
    "finalized": {"finalized"},
    "submitted": {"submitted"},
    "disputed": {"disputed", "challenged"},
    "slashed": {"slashed"},
    "failed": {"claimed", "expired"},
    **{s: {"claimed"} for s in ("claimed", "fetching", "running", "committed")},
    "expired": {"none", "open", "cancelled", "expired", "claimed-other", "submitted-other", "finalized-other"},
    "rejected": {"none", "open", "cancelled", "expired", "claimed-other", "submitted-other", "finalized-other"},
    "seen": {"none", "open", "cancelled", "expired", "claimed-other", "submitted-other", "finalized-other"},
    "validated": {"none", "open", "cancelled", "expired", "claimed-other", "submitted-other", "finalized-other"},
}
STEPS = {function_signature_to_4byte_selector(sig): name for sig, name in (
    ("claim(bytes32)", "claim"),
    ("claimSigned((address,address,bytes32,bytes32,bytes32,string,uint256,uint256,uint64,uint64,uint256),"
     "bytes,bytes)", "claimSigned"),
    ("submitResult(bytes32,bytes32,uint64,string)", "submit"),
    ("finalizeMany(bytes32[])", "finalizeMany"),
    ("expire(bytes32)", "expire"),
    ("withdrawFor(address)", "withdraw"),
)}


@dataclass
class JobEnd:
    job_id: str
    journal: str | None  # final journal state (None: never in the journal)
    reason: str
    chain: str  # chain state; "-other" suffix when another provider holds it


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    jobs: dict[str, JobEnd] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # job ids the node claimed on chain
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.violations.append(msg)


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _events(proto: Protocol, name: str, start: int) -> list[Any]:
    return list(getattr(proto.market.events, name)().get_logs(from_block=start))


def _node_transactions(proto: Protocol, sender: str, start: int) -> list[dict[str, Any]]:
    """Every transaction of ``sender`` on the canonical chain since ``start``, with its receipt status."""
    out = []
    me = sender.lower()
    for n in range(start, proto.w3.eth.block_number + 1):
        block = proto.w3.eth.get_block(n, full_transactions=True)
        for tx in block["transactions"]:
            if tx["from"].lower() == me:
                status = proto.w3.eth.get_transaction_receipt(tx["hash"])["status"]
                out.append({"hash": _hex(tx["hash"]), "nonce": tx["nonce"], "input": bytes(tx["input"]),
                            "status": status, "block": n})
    return out


def verify(proto: Protocol, data_dir: Path, operator: str, payout: str, posted: set[str], fee_bps: int, *,
           since_block: int) -> Verdict:
    """``since_block``: where the node's own transactions start (the operator key also registered and staked
    before the node first ran, through the plain protocol client, not the node's transaction store)."""
    v = Verdict()
    start = proto.deployment.deploy_block
    me = operator.lower()

    journal = sqlite3.connect(f"file:{data_dir / 'journal.db'}?mode=ro", uri=True)
    rows = {r[0]: (r[1], r[2], r[3]) for r in journal.execute("SELECT job_id, state, reason, code FROM job_jobs")}
    journal.close()
    txdb = sqlite3.connect(f"file:{data_dir / 'transactions.db'}?mode=ro", uri=True)
    attempts = {h.lower(): (key, nonce) for h, key, nonce in txdb.execute("SELECT hash, key, nonce FROM tx_attempts")}
    intents = list(txdb.execute("SELECT key, state, nonce, tx_hash FROM tx_intents"))
    txdb.close()

    # (2) effects at most once, from the events of the canonical chain
    claims = _events(proto, "JobClaimed", start)
    for name, evs in (("JobClaimed", claims), ("ResultSubmitted", _events(proto, "ResultSubmitted", start)),
                      ("JobFinalized", finalized := _events(proto, "JobFinalized", start))):
        for job, n in Counter(_hex(e["args"]["jobId"]) for e in evs).items():
            if n > 1:
                v.fail(f"{name} {n} times for job {job}")
    v.claimed = {_hex(e["args"]["jobId"]) for e in claims if e["args"]["provider"].lower() == me}

    # (2) the node's mined transactions: known to its store, one per nonce, one claim/submit per job
    txs = _node_transactions(proto, operator, since_block)
    per_step: Counter = Counter()
    for tx in txs:
        if tx["hash"].lower() not in attempts:
            v.fail(f"node transaction {tx['hash']} (nonce {tx['nonce']}) is not in its transaction store")
        step = STEPS.get(tx["input"][:4], "other")
        if step in ("claim", "submit", "expire"):
            per_step[(step, _hex(tx["input"][4:36]))] += 1
        elif step == "claimSigned":
            per_step[("claim", _claim_signed_job(proto, tx["input"]))] += 1
    for (step, job), n in per_step.items():
        if n > 1:
            v.fail(f"{n} mined {step} transactions for job {job}")
    nonces = Counter(n for _, state, n, _ in intents if state in ("confirmed", "reverted", "mined") and n is not None)
    for nonce, n in nonces.items():
        if n > 1:
            v.fail(f"nonce {nonce} used by {n} intents of the node")
    v.figures["node_txs"] = len(txs)
    v.figures["node_txs_reverted"] = sum(1 for t in txs if t["status"] != 1)
    v.figures["tx_steps"] = dict(Counter(STEPS.get(t["input"][:4], "other") for t in txs))

    # (3) money: every finalized payment reached the payout address, net of exactly the protocol fee
    ours = [e for e in finalized if e["args"]["payout"].lower() == payout.lower()]
    credited = 0
    for e in ours:
        job = _hex(e["args"]["jobId"])
        payment = proto.job(e["args"]["jobId"])["payment"]
        fee = payment * fee_bps // 10_000
        if (e["args"]["amount"], e["args"]["fee"]) != (payment - fee, fee):
            v.fail(f"job {job}: finalized for {e['args']['amount']} + fee {e['args']['fee']}, expected "
                   f"{payment - fee} + {fee}")
        credited += e["args"]["amount"]
    balance = proto.balance(payout)
    left = proto.withdrawable(payout)
    if balance != credited:
        v.fail(f"payout token balance {balance} != sum of finalized payments {credited}")
    if left:
        v.fail(f"{left} still in the market under the payout address (not withdrawn)")
    v.figures.update(payout_balance=balance, finalized_payments=credited, finalized_jobs=len(ours))

    # (1) + (4) job by job, over every offer on chain too (a post the requester lost track of still counts)
    posted = posted | {_hex(e["args"]["jobId"]) for e in _events(proto, "OfferPosted", start)}
    for job in sorted(set(rows) | v.claimed | posted):
        chain = proto.job(bytes.fromhex(job[2:]))
        cstate = CHAIN[chain["state"]]
        if cstate not in ("none", "open") and chain["provider"].lower() != me and chain["state"] >= 2:
            cstate += "-other"
        state, reason, code = rows.get(job, (None, "", None))
        v.jobs[job] = JobEnd(job, state, reason, cstate)
        if state is None:
            v.fail(f"job {job} ({cstate} on chain) never reached the journal")
            continue
        if cstate not in AGREES.get(state, set()):
            v.fail(f"job {job}: journal {state} ({reason}) but chain {cstate}")
        if job in v.claimed:
            if state == "paid":
                continue
            if state in ("expired", "failed") and reason.strip():
                continue
            v.fail(f"job {job}: claimed by the node but ended {state} ({reason or 'no reason'}), chain {cstate}")
    v.figures["jobs_posted"] = len(posted)
    v.figures["jobs_claimed"] = len(v.claimed)
    return v


def _claim_signed_job(proto: Protocol, data: bytes) -> str:
    """The job id of a claimSigned call: the EIP-712 digest of its offer."""
    _, args = proto.market.decode_function_input(data)
    offer = JobOffer(*args["offer"].values()) if isinstance(args["offer"], dict) else JobOffer(*args["offer"])
    return _hex(proto.job_id(offer))


__all__ = ["AGREES", "CHAIN", "JobEnd", "Verdict", "verify"]
