"""The chaos run's table: one row per kind of fault, with what became of the jobs it hit.

Columns: how many were injected (and how many struck the moment they aimed at), the jobs in flight at
those moments (not counting the planted bad-input jobs, which have a row of their own), how many of them
ended paid, how many ended expired or failed (with their reasons), and how many were never the node's to
finish (another outcome: rejected, or a claim that never landed).
Markdown, so the same text goes to the terminal and into docs/reliability.md.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter

from tests.chaos.checks import Verdict
from tests.chaos.harness import Run

KINDS = ("kill", "outage", "reorg", "fee_spike", "drop")


def _reasons(reasons: Counter) -> str:
    """The commonest reasons, numbers (deadlines, amounts) blanked so that alike reasons group."""
    alike: Counter = Counter()
    for r, n in reasons.items():
        alike[re.sub(r"\d+", "N", r)[:80]] += n
    return "; ".join(f"{n}x {r}" for r, n in alike.most_common(3)) or "-"


def render(run: Run, verdict: Verdict, bad_inputs: set[str] = frozenset(), requester_errors: int = 0) -> str:
    """``bad_inputs``: the planted jobs whose input cannot match its hash (a row of their own)."""
    lines = [
        f"Chaos run `{run.profile.name}`, seed {run.seed}: {len(run.faults)} faults, "
        f"{verdict.figures.get('jobs_posted', 0)} jobs posted, {len(verdict.claimed)} claimed by the node, "
        f"chain time advanced {run.advanced_s} s.",
        "",
        "| fault | injected (aimed) | detail | back after (s) | jobs in flight | recovered (paid) "
        "| expired/failed (reason) | other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        fs = [f for f in run.faults if f.kind == kind]
        if not fs:
            continue
        jobs = set().union(*(f.jobs for f in fs)) - bad_inputs  # the planted ones have their own row
        ends = [verdict.jobs[j] for j in jobs if j in verdict.jobs]
        paid = sum(1 for e in ends if e.journal == "paid")
        lapsed = Counter(e.reason for e in ends if e.journal in ("expired", "failed") and e.job_id in verdict.claimed)
        other = len(ends) - paid - sum(lapsed.values())
        lines.append(f"| {kind} | {len(fs)} ({sum(f.aimed for f in fs)}) | {_detail(kind, fs)} | {_back(fs)} | "
                     f"{len(jobs)} | "
                     f"{paid} | {sum(lapsed.values())}: {_reasons(lapsed)} | {other} |")
    if bad_inputs:
        ends = [verdict.jobs[j] for j in bad_inputs if j in verdict.jobs]
        lapsed = Counter(e.reason for e in ends if e.journal in ("expired", "failed"))
        lines.append(f"| planted bad input | {len(bad_inputs)} | input bytes do not match the offer's hash | "
                     f"- | {len(bad_inputs)} | {sum(1 for e in ends if e.journal == 'paid')} | "
                     f"{sum(lapsed.values())}: {_reasons(lapsed)} | {len(ends) - sum(lapsed.values())} |")
    ends = list(verdict.jobs.values())
    finals = Counter(e.journal or "missing" for e in ends)
    lines += [
        "",
        "Final journal states: " + ", ".join(f"{s} {n}" for s, n in sorted(finals.items())) + ".",
        f"Node transactions mined: {verdict.figures.get('node_txs', 0)} "
        f"({verdict.figures.get('node_txs_reverted', 0)} reverted): "
        + ", ".join(f"{k} {n}" for k, n in sorted(verdict.figures.get("tx_steps", {}).items())) + ".",
        f"Payout address: {verdict.figures.get('payout_balance', 0)} base units = sum of "
        f"{verdict.figures.get('finalized_jobs', 0)} finalized payments net of the fee "
        f"({verdict.figures.get('finalized_payments', 0)}).",
        "Back after: median / max seconds until the node was ready again (kill), on the chain head (outage), "
        "or its removed transactions' nonces were mined again (reorg, drop).",
        "Phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in run.phases.items()) + ".",
        f"Requester errors (posts that failed; the stream went on): {requester_errors}.",
        f"Violations: {len(verdict.violations)}" + ("" if not verdict.violations else ":"),
    ]
    lines += [f"- {v}" for v in verdict.violations[:30]]
    return "\n".join(lines)


def _back(fs: list) -> str:
    """Median and max of the faults' recovery times; "never" counts those not back within their limit."""
    times = sorted(f.recovery_s for f in fs if f.recovery_s is not None)
    never = sum(1 for f in fs if f.recovery_s is None and (f.kind not in ("reorg", "drop") or f.hit_txs))
    if not times:
        return "-" if not never else f"never {never}"
    text = f"{statistics.median(times):.1f} / {times[-1]:.1f}" if len(times) > 1 else f"{times[0]:.1f}"
    return text + (f", never {never}" if never else "")


def _detail(kind: str, fs: list) -> str:
    if kind == "kill":
        return ", ".join(f"{s.removeprefix('stage ')} {n}" for s, n in sorted(Counter(f.detail for f in fs).items()))
    if kind in ("reorg", "drop"):
        extra = ", ".join(sorted(Counter(f.detail.split(",")[0] for f in fs)))
        return f"{sum(f.hit_txs for f in fs)} node tx hit" + (f"; {extra}" if kind == "reorg" else "")
    return "; ".join(f.detail for f in fs)


__all__ = ["render"]
