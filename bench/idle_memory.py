"""Idle node memory: a real daemon (``gpunode run``) doing nothing for a while, sampled from /proc.

Two windows, because an operator's question ("what does the node cost me while it waits?") has two answers:
*warm*, right after start or a job, with its device worker up (torch imported, so the next job starts at
once), and *parked*, after ``hardware.worker_idle_s`` without a job, when the worker has exited and the
daemon waits alone. The parked figure is what an idle node costs and is judged; the warm one is shown
beside it. Each window gives the daemon process alone and the daemon with its descendants. RSS counts
shared library pages in full in each process; PSS splits them between the processes that share them, so
PSS of the whole tree is what the tree really adds. The figure judged is the largest PSS sample over the
window (a peak, not a lucky moment).

Goal (issue 8): <= 150 MB.

    .venv/bin/python -m bench.idle_memory [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_MB = 150


def _kb_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in out:
                out[key] = int(rest.split()[0])
    return out


def usage(pid: int) -> dict[str, float]:
    """RSS and PSS of one process in MB (10^6 bytes), from /proc/<pid>/smaps_rollup."""
    kb = _kb_fields(f"/proc/{pid}/smaps_rollup", ("Rss", "Pss"))
    return {"rss_mb": kb["Rss"] * 1024 / 1e6, "pss_mb": kb["Pss"] * 1024 / 1e6}


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, their children, ...), from each process's parent id."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def describe_process(pid: int) -> str:
    """A short name for a process: its program and the module or script it runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    argv = [a for a in argv if a]
    if "-c" in argv:  # multiprocessing children: python -c 'from multiprocessing.x import main; main(...)'
        code = argv[argv.index("-c") + 1] if argv.index("-c") + 1 < len(argv) else ""
        return code.split(" import ")[0].removeprefix("from ").strip()[:60] or "python -c"
    if "-m" in argv:
        return " ".join(argv[argv.index("-m") + 1:argv.index("-m") + 3])
    return " ".join(Path(a).name for a in argv[:2])


def sample(pid: int, seconds: float, every: float = 1.0) -> dict[str, Any]:
    """Samples the process and its tree for ``seconds``; medians and peaks of each figure."""
    rows: list[dict[str, float]] = []
    end = time.monotonic() + seconds
    while True:
        alone = usage(pid)
        tree = dict(alone)
        kids = descendants(pid)
        for kid in kids:
            try:
                u = usage(kid)
            except OSError:
                continue
            tree["rss_mb"] += u["rss_mb"]
            tree["pss_mb"] += u["pss_mb"]
        rows.append({"node_rss_mb": alone["rss_mb"], "node_pss_mb": alone["pss_mb"],
                     "tree_rss_mb": tree["rss_mb"], "tree_pss_mb": tree["pss_mb"], "processes": 1 + len(kids)})
        if time.monotonic() >= end:
            break
        time.sleep(every)
    out: dict[str, Any] = {"seconds": seconds, "samples": len(rows), "processes": max(r["processes"] for r in rows),
                           "descendants": [describe_process(k) for k in descendants(pid)]}
    for key in ("node_rss_mb", "node_pss_mb", "tree_rss_mb", "tree_pss_mb"):
        values = [r[key] for r in rows]
        out[key] = round(statistics.median(values), 1)
        out[key + "_max"] = round(max(values), 1)
    out["goal_mb"] = GOAL_MB
    return out


WORKER = "multiprocessing.spawn"  # how describe_process names a device worker


def park_after(seconds: float) -> float:
    """The ``hardware.worker_idle_s`` a bench node runs with, so the worker parks soon after the warm window
    (started with the node) has been sampled; an operator's default is 600 s."""
    return seconds + 10.0


def measure(dev: Any, seconds: float) -> dict[str, Any]:
    """Idle figures of a started DevNode (bench.devnode) run with ``worker_idle_s = park_after(seconds)``:
    ``seconds`` of samples with the worker warm, then, once it has parked, ``seconds`` more."""
    time.sleep(min(2.0, seconds))  # the first follower pass is not idling
    pid = dev.node.proc.pid
    warm = sample(pid, seconds)
    deadline = time.monotonic() + park_after(seconds) + 60.0
    while WORKER in (describe_process(k) for k in descendants(pid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the device worker did not park within {park_after(seconds) + 60:.0f} s")
        time.sleep(0.5)
    time.sleep(1.0)  # let the daemon's allocator settle after the worker's pipes and threads are gone
    return {"warm": warm, "parked": sample(pid, seconds), "worker_idle_s": park_after(seconds)}


def describe(res: dict[str, Any]) -> str:
    return "; ".join(f"{name}: node alone PSS {r['node_pss_mb_max']:.1f} MB (RSS {r['node_rss_mb_max']:.1f}), "
                     f"with descendants ({r['processes']} processes) PSS {r['tree_pss_mb_max']:.1f} MB "
                     f"(RSS {r['tree_rss_mb_max']:.1f})" for name, r in ((w, res[w]) for w in ("warm", "parked")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each window is sampled")
    args = ap.parse_args(argv)
    from bench.devnode import devnode

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, \
            devnode(Path(tmp), hardware={"worker_idle_s": park_after(args.seconds)}) as dev:
        res = measure(dev, args.seconds)
    print(describe(res))
    value = res["parked"]["tree_pss_mb_max"]
    print(f"  idle (worker parked) PSS {value:.1f} MB  goal <= {GOAL_MB} MB  {'MET' if value <= GOAL_MB else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
