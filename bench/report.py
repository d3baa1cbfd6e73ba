"""The benchmark table: every figure the project promises, measured side by side in one run on this machine,
judged against its goal, and written into docs/benchmarks.md between markers (the hand-written sections
around them stay as they are).

Why one run: the figures depend on the machine and on what else it is doing, so figures taken on different
days or machines cannot be compared with each other or with their goals. The run records the machine and
its load average before and after, and each row says met or **missed**; a figure that could not be taken
says so instead of disappearing. The compute and verification figures run as their own modules in child
processes (``bench.offers`` pins its process to one core); the node figures (idle memory, event-to-claim,
gas) share one real daemon on anvil (``bench.devnode``).

    .venv/bin/python -m bench.report [--quick] [--write docs/benchmarks.md] [--json FILE] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report_parts import Goal, Row, machine, parse_commitment, parse_overhead, render, splice

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Sizes per mode: (full, quick). Full is what the doc's table is made from; quick is a smoke run.
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "overhead": ({"seconds": 1.5, "rounds": 5}, {"seconds": 0.3, "rounds": 2}),
    "offers": ({"count": 2000, "rounds": 5}, {"count": 300, "rounds": 1}),
    "commitment": ({"size_mib": 512, "repeat": 3}, {"size_mib": 16, "repeat": 1}),
    "node": ({"idle_s": 20.0, "chain": 20, "direct": 5}, {"idle_s": 3.0, "chain": 2, "direct": 1}),
}
PARTS = tuple(SIZES)


def _module(args: list[str], timeout: float = 1800) -> str:
    proc = subprocess.run([PY, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    return proc.stdout


def _command(args: list[str]) -> str:
    return "python -m " + " ".join(args)


# -- the figures --------------------------------------------------------------------------------------------
def overhead_rows(size: dict[str, Any], raw: dict[str, Any], device: str = "cpu") -> list[Row]:
    args = ["bench.node_overhead", "--device", device, "--seconds", str(size["seconds"]),
            "--rounds", str(size["rounds"])]
    r = raw[f"overhead_{device}"] = parse_overhead(_module(args))
    how = _command(args)
    short = r["raw_s"] < 1.0
    ratio_goal = Goal("<=", 1.02, "≤ 1.02 for jobs ≥ 1 s")
    return [
        Row(f"node path / raw torch ({device}, {r['n']}×{r['n']} float32 matmul, ≈{r['raw_s']:.1f} s jobs, "
            f"median of {r['rounds']} interleaved rounds)", r["ratio"], f"**{r['ratio']:.3f}** "
            f"({r['node_s']:.3f} s vs {r['raw_s']:.3f} s)", ratio_goal, how,
            judged=not short, note="jobs < 1 s: goal not applicable" if short else ""),
        Row(f"fixed per-job overhead ({device}, empty job through a warm worker, median)", r["fixed_ms"],
            f"**{r['fixed_ms']:.1f} ms**", Goal("<=", 50, "≤ 50 ms"), how),
    ]


def offers_rows(size: dict[str, Any], raw: dict[str, Any]) -> list[Row]:
    args = ["bench.offers", "--count", str(size["count"]), "--rounds", str(size["rounds"]), "--json"]
    r = raw["offers"] = json.loads(_module(args).strip().splitlines()[-1])
    return [Row(f"offers fully verified per second, one core (`check_offer_local`, {r['count']} distinct offers "
                f"× {r['rounds']}, median chunk of {r['chunk']})", r["local_per_s"],
                f"**{r['local_per_s']:,}**/s (whole run {r['overall_local_per_s']:,}/s; bare eth-keys recovery "
                f"{r['recover_eth_keys_per_s']:,}/s)", Goal(">=", 5000, "≥ 5,000/s per core"), _command(args))]


def commitment_rows(size: dict[str, Any], raw: dict[str, Any]) -> list[Row]:
    args = ["bench.commitment", "--size-mib", str(size["size_mib"]), "--repeat", str(size["repeat"])]
    r = raw["commitment"] = parse_commitment(_module(args))
    return [Row(f"result commitment throughput (`commit_file`, {size['size_mib']} MiB from the page cache, best of "
                f"{size['repeat']})", r["gbps"], f"**{r['gbps']:.3f} GB/s** (raw SHA-256 on this CPU "
                f"{r['raw_gbps']:.3f} GB/s, ratio {r['gbps'] / r['raw_gbps']:.2f})",
                Goal(">=", 1.0, "≥ 1 GB/s"), _command(args))]


def node_rows(size: dict[str, Any], raw: dict[str, Any], log: Callable[[str], None]) -> list[Row]:
    """Idle memory, event-to-claim and gas, on one daemon: idle first (nothing has run yet), then the jobs."""
    from bench import claim_latency, gas, idle_memory
    from bench.devnode import devnode

    park = {"worker_idle_s": idle_memory.park_after(size["idle_s"])}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, devnode(Path(tmp), log=log, hardware=park) as dev:
        log(f"  idle memory: sampling for {size['idle_s']:.0f} s warm, then {size['idle_s']:.0f} s parked")
        mem = idle_memory.measure(dev, size["idle_s"])
        log(f"  event-to-claim: {size['chain']} on-chain and {size['direct']} direct offers, one at a time")
        lat = claim_latency.measure(dev, size["chain"], size["direct"], log=log)
        g = gas.measure(dev, lat["jobs"], log=log)
    raw.update(idle_memory=mem, claim_latency=lat, gas=g)
    lat_how = f"python -m bench.claim_latency --chain {size['chain']} --direct {size['direct']}"
    gas_how = f"python -m bench.gas --chain {size['chain']} --direct {size['direct']}"
    mem_how = f"python -m bench.idle_memory --seconds {size['idle_s']:.0f}"
    ms_goal = Goal("<=", claim_latency.GOAL_MS, f"≤ {claim_latency.GOAL_MS} ms p50")
    rows = []
    for source, what in (("chain", "OfferPosted event reaches intake"), ("direct", "POST /offers reaches intake")):
        r = lat[source]
        rows.append(Row(f"event-to-claim, {source} offers ({what} → claim tx broadcast; histogram "
                        f"`gpunode_event_to_claim_seconds`)", r["p50_ms"],
                        f"**p50 {r['p50_ms']} ms**, p90 {r['p90_ms']}, max {r['max_ms']} (n={r['n']})"
                        if r["n"] else "no figure logged", ms_goal, lat_how, judged=source == "chain",
                        note="" if source == "chain" else "for comparison (the goal is for chain events)"))
    rows.append(Row("gas per protocol step (median per transaction)", None, gas.describe_steps(g), None, gas_how))
    for source, path in (("chain", "post + claim + submit"), ("direct", "claimSigned + submit")):
        r = g[f"job_{source}"]
        rows.append(Row(f"gas per job, {source} offer ({path} + finalizeMany share + withdraw share)",
                        r["median"] if r else None, f"**{r['median']:,}** (n={r['n']})" if r else "no jobs",
                        Goal("<=", gas.GOAL, "≤ 250,000"), gas_how))
    names = {idle_memory.WORKER: "device worker", "multiprocessing.resource_tracker": "resource tracker"}
    mem_goal = Goal("<=", idle_memory.GOAL_MB, f"≤ {idle_memory.GOAL_MB} MB")
    for window, what, judged in (
            ("parked", f"worker parked (after `hardware.worker_idle_s` without a job: default 600 s, here "
                       f"{mem['worker_idle_s']:.0f} s)", True),
            ("warm", "worker warm (after start or a job, until it parks)", False)):
        r = mem[window]
        tree = " + ".join(["the daemon", *(names.get(d, d) for d in r["descendants"])])
        rows.append(Row(f"idle node memory, {what}: {tree}, peak PSS over {r['seconds']:.0f} s",
                        r["tree_pss_mb_max"], f"**{r['tree_pss_mb_max']:.1f} MB** (RSS {r['tree_rss_mb_max']:.1f} "
                        f"MB; the daemon alone PSS {r['node_pss_mb_max']:.1f} MB)", mem_goal, mem_how, judged=judged,
                        note="" if judged else "for comparison (the goal is for an idle node)"))
    return rows


def _gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken driver: no GPU figures
        return False


def run(parts: tuple[str, ...], quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measures the chosen parts in order; a part that fails becomes an error row, and the others still run."""
    started = time.time()
    load_before = _loadavg()
    rows: list[Row] = []
    raw: dict[str, Any] = {}  # each part's own figures, for --json and the tests
    for part in parts:
        size = SIZES[part][1 if quick else 0]
        log(f"[{part}] {size}")
        t0 = time.monotonic()
        try:
            if part == "overhead":
                rows += overhead_rows(size, raw)
                if _gpu():
                    rows += overhead_rows({**size, "seconds": max(size["seconds"], 1.5)}, raw, device="cuda:0")
            elif part == "offers":
                rows += offers_rows(size, raw)
            elif part == "commitment":
                rows += commitment_rows(size, raw)
            else:
                rows += node_rows(size, raw, log)
        except Exception as exc:  # noqa: BLE001 - one figure's failure must not hide the others
            log(f"[{part}] FAILED: {type(exc).__name__}: {exc}")
            rows.append(Row(f"{part}: not measured", None, f"error: {type(exc).__name__}: {str(exc)[:200]}",
                            None, f"python -m bench.report --only {part}", error=True))
        log(f"[{part}] done in {time.monotonic() - t0:.0f} s")
    return {"machine": machine(), "rows": rows, "raw": raw, "quick": quick, "started": started,
            "seconds": time.time() - started, "load": (load_before, _loadavg())}


def _loadavg() -> float:
    try:
        return round(float(Path("/proc/loadavg").read_text().split()[0]), 2)
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about a minute")
    ap.add_argument("--write", type=Path, help="splice the table into this markdown file (between the markers)")
    ap.add_argument("--json", type=Path, help="also write the rows and the machine as JSON here")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="measure only these parts")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr, table on stdout
    result = run(tuple(args.only or PARTS), args.quick, log)
    block = render(result)
    print(block)
    if args.write:
        args.write.write_text(splice(args.write.read_text() if args.write.exists() else "# Benchmarks\n", block))
        log(f"wrote the table into {args.write}")
    if args.json:
        rows = [r.as_dict() for r in result["rows"]]
        args.json.write_text(json.dumps({**result, "rows": rows}, indent=1, default=str))
    return 1 if any(r.status == "**error**" for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
