"""Gas per protocol step and per job, from the transaction receipts of a real daemon's jobs on anvil.

Steps: ``post`` (the requester's postOffer), ``claim`` (an on-chain offer), ``claimSigned`` (a direct offer:
post and claim in one transaction), ``submitResult``, ``finalizeMany`` (the node finalizes every due job
in one batch, so each job pays a share) and ``withdrawFor`` (earnings moved to the payout address, also
shared by the jobs it pays out). A job's gas is its own transactions plus its shares; the happy path of
each kind of offer is judged against the goal. Batch shares depend on how many jobs fall due together,
so the batch sizes are reported beside them.

Goal (issue 8): <= 250,000 gas per job on the happy path.

    .venv/bin/python -m bench.gas [--chain 5] [--direct 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

GOAL = 250_000


def _stats(values: list[int]) -> dict[str, int]:
    return {"n": len(values), "median": int(statistics.median(values)), "min": min(values), "max": max(values)}


def measure(dev: Any, jobs: dict[str, str], log=print) -> dict[str, Any]:
    """Settles the given jobs (job id -> "chain" | "direct") of a started DevNode: waits for their results,
    jumps the chain clock past the challenge window, waits until the node has finalized and paid them out,
    then reads every receipt."""
    from bench.devnode import WINDOW_S

    ids = list(jobs)
    dev.wait_jobs(ids, {"submitted", "finalized", "paid"})
    dev.net.advance(WINDOW_S + 1)
    log(f"  gas: chain clock moved {WINDOW_S + 1} s; waiting for finalizeMany and the withdraw")
    dev.wait_jobs(ids, {"paid"}, timeout=180)
    w3, market = dev.proto.w3, dev.proto.market
    receipts: dict[bytes, int] = {}

    def gas(tx: bytes) -> int:
        if tx not in receipts:
            receipts[tx] = int(w3.eth.get_transaction_receipt(tx)["gasUsed"])
        return receipts[tx]

    def events(name: str) -> list[Any]:
        return [e for e in getattr(market.events, name)().get_logs(from_block=0)
                if name == "Withdrawn" or "0x" + e["args"]["jobId"].hex() in jobs]

    per_job: dict[str, int] = defaultdict(int)
    steps: dict[str, list[int]] = defaultdict(list)
    claim_txs = set()
    for ev in events("JobClaimed"):
        j = "0x" + ev["args"]["jobId"].hex()
        step = "claimSigned" if jobs[j] == "direct" else "claim"
        claim_txs.add(ev["transactionHash"])
        steps[step].append(gas(ev["transactionHash"]))
        per_job[j] += gas(ev["transactionHash"])
    for ev in events("OfferPosted"):
        if ev["transactionHash"] in claim_txs:
            continue  # claimSigned posts and claims in one transaction, counted above
        j = "0x" + ev["args"]["jobId"].hex()
        steps["post"].append(gas(ev["transactionHash"]))
        per_job[j] += gas(ev["transactionHash"])
    for ev in events("ResultSubmitted"):
        j = "0x" + ev["args"]["jobId"].hex()
        steps["submit"].append(gas(ev["transactionHash"]))
        per_job[j] += gas(ev["transactionHash"])
    batches: dict[bytes, list[str]] = defaultdict(list)
    for ev in events("JobFinalized"):
        batches[ev["transactionHash"]].append("0x" + ev["args"]["jobId"].hex())
    for tx, members in batches.items():
        # Every JobFinalized in the tx shares it, ours or not (the contract finalizes the whole batch).
        everyone = sum(1 for e in market.events.JobFinalized().get_logs(from_block=0) if e["transactionHash"] == tx)
        for j in members:
            per_job[j] += gas(tx) // everyone
    withdraws = [e for e in events("Withdrawn") if e["args"]["account"] == dev.node.payout]
    withdraw_gas = sum(gas(e["transactionHash"]) for e in withdraws)
    for j in ids:
        per_job[j] += withdraw_gas // len(ids)
    out: dict[str, Any] = {name: _stats(v) for name, v in steps.items()}
    out["finalizeMany"] = {"txs": len(batches), "jobs": sum(len(m) for m in batches.values()),
                           "gas_total": sum(gas(tx) for tx in batches),
                           "per_job": sum(gas(tx) for tx in batches) // max(1, sum(len(m) for m in batches.values()))}
    out["withdraw"] = {"txs": len(withdraws), "jobs": len(ids), "gas_total": withdraw_gas,
                       "per_job": withdraw_gas // len(ids)}
    for source in ("chain", "direct"):
        totals = [per_job[j] for j, s in jobs.items() if s == source]
        out[f"job_{source}"] = _stats(totals) if totals else None
    out["goal"] = GOAL
    return out


def describe_steps(res: dict[str, Any]) -> str:
    parts = [f"{name} {res[name]['median']:,}" for name in ("post", "claim", "claimSigned", "submit") if name in res]
    f, w = res["finalizeMany"], res["withdraw"]
    parts.append(f"finalizeMany {f['gas_total'] // max(1, f['txs']):,} per tx for {f['jobs']} jobs in {f['txs']} tx "
                 f"({f['per_job']:,} per job)")
    parts.append(f"withdrawFor {w['gas_total'] // max(1, w['txs']):,} per tx, {w['txs']} tx for {w['jobs']} jobs "
                 f"({w['per_job']:,} per job)")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", type=int, default=5, help="jobs from on-chain offers")
    ap.add_argument("--direct", type=int, default=2, help="jobs from direct offers (claimSigned)")
    args = ap.parse_args(argv)
    from bench.claim_latency import measure as run_jobs
    from bench.devnode import devnode

    with tempfile.TemporaryDirectory(prefix="bench-gas-") as tmp, devnode(Path(tmp)) as dev:
        res = measure(dev, run_jobs(dev, args.chain, args.direct)["jobs"])
    print("median gas per step: " + describe_steps(res))
    for source in ("chain", "direct"):
        r = res[f"job_{source}"]
        if r:
            print(f"  per job ({source} offer): median {r['median']:,}  goal <= {GOAL:,}  "
                  f"{'MET' if r['median'] <= GOAL else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
