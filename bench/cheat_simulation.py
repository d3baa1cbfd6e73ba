"""Cheat simulation: do the protocol's checks catch and slash cheating providers, and never an honest one?

On a local anvil with the real contracts (JobMarket, MatmulInt8Verifier, a 2-of-3 MediatorSet as the
market's arbiter), one honest provider and one provider per cheat (see bench.cheat_trials for each cheat
and the path that must catch it) take jobs from a requester that uses gpunode's own tools: download
with the root check, Freivalds (matmul-int8) or a local re-run (torch-export), then a fraud proof, an audit
with reveal or reveal timeout, or a dispute ruled by the mediators. Some honest results are also challenged
at a random element, audited, or disputed by a griefing requester, to show the contracts clear them.

Measured per workload and provider kind: trials, detected (by the requester's checks), slashed (job ended
Slashed on chain), false positives (honest jobs slashed, or honest checks that ended in fraud), and the gas
of every verification transaction (from receipts: median and max).

    .venv/bin/python -m bench.cheat_simulation --trials 20 [--float-trials 10] [--json] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cheat_trials import ANSWERS, CHEATS, Trial, float_trial, int8_trial
from bench.cheat_world import World, world

KINDS = ("honest", *CHEATS)
INT8_DIMS_SHORT = (32, 64, 40)  # 5 KiB result: two chunks, so the proofs are real Merkle paths
INT8_DIMS_FULL = (64, 1024, 64)  # 16 KiB, four chunks; k=1024 as in the verifier's gas figures


# -- float bundles and mediators --------------------------------------------------------------------------------


def make_bundles(folder: Path, count: int, seed: int) -> list[tuple[Path, bytes]]:
    """Small torch-export bundles (an MLP in fp32, one in bf16), each with its own random input, so that an
    earlier job's result is never this job's."""
    import torch

    from node.compute.workloads.torch_export import make_bundle
    from node.requester.terms import encode_params

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    out = []
    for i in range(count):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).to(dtype)
        path = folder / f"bundle{i}.safetensors"
        names = make_bundle(model, (torch.randn(4, 16, dtype=dtype),), str(path))
        out.append((path, encode_params({"inputs": names})))
    return out


def mediator_panel(w: World, endpoint_of: Callable[[str], str]) -> Callable[[str, Any, Path], tuple[bool, int]]:
    """Each mediator fetches the result from the provider itself (it does not take the requester's word),
    checks it with node.mediator and signs a ruling; the first THRESHOLD signatures go to MediatorSet."""
    from bench.cheat_mediators import rule_and_resolve

    def mediate(job_id: str, _evidence: Any, bundle: Path) -> tuple[bool, int]:
        return rule_and_resolve(w, job_id, endpoint_of(job_id), bundle)

    return mediate


# -- running -----------------------------------------------------------------------------------------------------


def run(trials: int, float_trials: int, *, seed: int = 0, full: bool = False, root: Path | None = None,
        log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Runs every provider kind ``trials`` times on matmul-int8 and ``float_trials`` times on torch-export;
    returns the summary (see ``summarise``) with every trial."""
    rng = random.Random(seed)
    dims = INT8_DIMS_FULL if full else INT8_DIMS_SHORT
    with tempfile.TemporaryDirectory(prefix="gpunode-cheatsim-") as tmp:
        base = Path(root or tmp)
        started = time.monotonic()
        with world(base / "world") as w:
            req = w.requester("main")
            providers = {kind: w.provider(kind, answers=ANSWERS[kind]) for kind in KINDS}
            owner: dict[str, str] = {}
            results: list[Trial] = []
            old_int8: dict[tuple[int, int, int], bytes] = {}
            for n in range(trials):
                for kind in KINDS:
                    t = _guard(lambda k=kind, i=n: int8_trial(
                        w, req, providers[k], k, dims, rng.randrange(2**64), rng, old_int8,
                        challenge_honest=k == "honest" and i % 2 == 0,  # round 0 does both
                        audit_honest=k == "honest" and i % 3 == 0), "matmul-int8", kind)
                    results.append(t)
                    log(_line(t))
            if float_trials:
                bundles = make_bundles(base / "bundles", max(2, min(float_trials, 4)), seed)
                mediate = mediator_panel(w, lambda job: providers[owner[job]].endpoint)
                old_float: list[bytes] = []
                for n in range(float_trials):
                    for kind in KINDS:
                        bundle = bundles[(n * len(KINDS) + KINDS.index(kind)) % len(bundles)]

                        def one(k: str = kind, i: int = n, b: tuple[Path, bytes] = bundle) -> Trial:
                            return float_trial(w, req, providers[k], k, b, old_float, rng,
                                               _owned(mediate, owner, k), dispute_honest=k == "honest" and i % 3 == 0)

                        t = _guard(one, "torch-export", kind)
                        results.append(t)
                        log(_line(t))
        summary = summarise(results)
        summary["seconds"] = round(time.monotonic() - started, 1)
        summary["int8_dims"] = list(dims)
        return summary


def _owned(mediate: Callable, owner: dict[str, str], kind: str) -> Callable:
    """Tells the panel which provider's endpoint a disputed job came from."""
    def call(job_id: str, evidence: Any, bundle: Path) -> tuple[bool, int]:
        owner[job_id] = kind
        return mediate(job_id, evidence, bundle)
    return call


def _guard(fn: Callable[[], Trial], workload: str, kind: str) -> Trial:
    """A trial that raises is recorded as an error (it counts as not caught), not the end of the run."""
    started = time.monotonic()
    try:
        t = fn()
    except Exception as exc:  # noqa: BLE001 - reported per trial in the table and the JSON
        t = Trial(workload, kind, error=f"{type(exc).__name__}: {exc}"[:300])
    t.seconds = round(time.monotonic() - started, 2)
    return t


def _line(t: Trial) -> str:
    gas = ", ".join(f"{k} {v:,}" for k, v in t.gas.items())
    return (f"{t.seconds:6.1f}s {t.workload:13} {t.provider:13} {t.path or '-':36} -> {t.final_state or 'ERROR'}"
            + (f" [{gas}]" if gas else "") + (f" ERROR {t.error}" if t.error else ""))


# -- measuring ---------------------------------------------------------------------------------------------------


def summarise(results: list[Trial]) -> dict[str, Any]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    gas: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for t in results:
        row = rows.setdefault((t.workload, t.provider), {"workload": t.workload, "provider": t.provider,
                                                         "trials": 0, "detected": 0, "slashed": 0, "errors": 0,
                                                         "false_positives": 0, "honest_checks_cleared": 0,
                                                         "paths": defaultdict(int)})
        row["trials"] += 1
        row["detected"] += t.detected
        row["slashed"] += t.slashed
        row["errors"] += bool(t.error)
        row["paths"][t.path or "error"] += 1
        if t.provider == "honest":
            row["false_positives"] += t.slashed or t.detected or any(":" in c for c in t.cleared)
            row["honest_checks_cleared"] += sum(":" not in c for c in t.cleared)
        for name, used in t.gas.items():
            gas[t.workload][name].append(used)
    table = []
    for row in rows.values():
        row["paths"] = dict(row["paths"])
        table.append(row)
    gas_table = {wl: {name: {"n": len(v), "median": int(statistics.median(v)), "max": max(v)}
                      for name, v in sorted(names.items())} for wl, names in gas.items()}
    cheats = [r for r in table if r["provider"] != "honest"]
    honest = [r for r in table if r["provider"] == "honest"]
    return {"rows": table, "gas": gas_table,
            "all_cheats_slashed": all(r["slashed"] == r["trials"] for r in cheats) and bool(cheats),
            "no_false_positives": all(r["false_positives"] == 0 and r["errors"] == 0 for r in honest),
            "errors": [t.__dict__ for t in results if t.error]}


def render(summary: dict[str, Any]) -> str:
    def pct(a: int, b: int) -> str:
        return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"

    lines = ["| workload | provider | trials | detected | slashed | false positives | how settled |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        fp = str(r["false_positives"]) if r["provider"] == "honest" else "-"
        paths = ", ".join(f"{p} x{c}" for p, c in sorted(r["paths"].items()))
        lines.append(f"| {r['workload']} | {r['provider']} | {r['trials']} | {pct(r['detected'], r['trials'])} | "
                     f"{pct(r['slashed'], r['trials'])} | {fp} | {paths} |")
    lines += ["", "| workload | transaction | n | median gas | max gas |", "|---|---|---|---|---|"]
    for wl, names in summary["gas"].items():
        for name, g in names.items():
            lines.append(f"| {wl} | {name} | {g['n']} | {g['median']:,} | {g['max']:,} |")
    lines.append("")
    lines.append(f"every cheat slashed: {summary['all_cheats_slashed']}; no honest provider slashed or accused: "
                 f"{summary['no_false_positives']}; errors: {len(summary['errors'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cheat_simulation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="matmul-int8 jobs per provider kind (default 3)")
    ap.add_argument("--float-trials", type=int, default=None, help="torch-export jobs per kind (default: half)")
    ap.add_argument("--full", action="store_true", help=f"int8 jobs of {INT8_DIMS_FULL} instead of "
                    f"{INT8_DIMS_SHORT}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    args = ap.parse_args(argv)
    float_trials = (args.trials + 1) // 2 if args.float_trials is None else args.float_trials
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    summary = run(args.trials, float_trials, seed=args.seed, full=args.full, log=log)
    print(json.dumps(summary, indent=2) if args.json else "\n" + render(summary))
    return 0 if summary["all_cheats_slashed"] and summary["no_false_positives"] else 1


if __name__ == "__main__":
    sys.exit(main())
