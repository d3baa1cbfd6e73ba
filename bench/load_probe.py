"""The load run's observer: a separate process that asks the node's ``/healthz`` on a fixed beat and reads the
node's memory and CPU from /proc; and the readings taken after a run (the node's journal file, its offers_seen
counter) and the small statistics the load table is made of.

It is a process of its own (not a thread of the load generator) so that the generator's event loop and the
GIL it holds while signing and sending never delay a health check: a slow answer is the node's, not ours.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from scripts.localnode import LocalNode

HEALTH_TIMEOUT_S = 5.0
MEMORY_EVERY_S = 0.5


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the node's worker processes), from the parent links in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def probe(api: str, pid: int, out: str, interval: float, stop: Any) -> None:
    """Until ``stop`` is set: GET /healthz every ``interval`` on a kept-alive connection, as a monitor would
    (a failed one is recorded with its error and the connection is remade), and every half second the RSS of
    the node alone and with its workers and the node's CPU time. Writes both series to ``out`` as JSON:
    health rows (unix time, seconds, HTTP status or error name), memory rows (unix time, KiB alone, KiB with
    workers, CPU seconds)."""
    where = urlsplit(api)
    conn: http.client.HTTPConnection | None = None
    health: list[tuple] = []
    memory: list[tuple] = []
    next_memory = 0.0
    while not stop.is_set():
        started = time.time()
        t0 = time.perf_counter()
        try:
            conn = conn or http.client.HTTPConnection(where.hostname, where.port, timeout=HEALTH_TIMEOUT_S)
            conn.request("GET", "/healthz")
            reply = conn.getresponse()
            reply.read()
            health.append((started, time.perf_counter() - t0, reply.status))
        except (OSError, http.client.HTTPException) as exc:
            health.append((started, time.perf_counter() - t0, type(exc).__name__))
            conn = None
        if started >= next_memory:
            memory.append((started, rss_kib(pid), sum(rss_kib(p) for p in process_tree(pid)), cpu_seconds(pid)))
            next_memory = started + MEMORY_EVERY_S
        stop.wait(max(0.0, interval - (time.time() - started)))
    Path(out).write_text(json.dumps({"health": health, "memory": memory}))


# ------------------------------------------------------------------------------------------------ readings
def journal(node: LocalNode) -> tuple[dict[str, str], list[tuple[str, str, int]], int]:
    """(state by job id, states entered more than once, total rows) read from the node's journal file."""
    db = sqlite3.connect(f"file:{node.data_dir / 'journal.db'}?mode=ro", uri=True, timeout=30)
    try:
        states = dict(db.execute("SELECT job_id, state FROM job_jobs").fetchall())
        rows = db.execute("SELECT count(*) FROM job_jobs").fetchone()[0]
        twice = db.execute("SELECT job_id, to_state, count(*) FROM job_transitions GROUP BY job_id, to_state "
                           "HAVING count(*) > 1").fetchall()
    finally:
        db.close()
    return states, twice, rows


def offers_seen(node: LocalNode) -> dict[str, float]:
    """The gpunode_offers_seen counter by source, as the node's /metrics shows it."""
    _, body, _ = node.request("/metrics")
    return {m[1]: float(m[2]) for m in re.finditer(r'^gpunode_offers_seen_total\{source="(\w+)"\} (\S+)',
                                                   body.decode(), re.M)}


# ---------------------------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (no interpolation: every figure is a latency that really happened)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def latency_ms(values: list[float]) -> str:
    """"p50 / p95 / p99 / max ms" of latencies given in seconds."""
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, q) * 1000:.1f}" for q in (0.5, 0.95, 0.99)) + \
        f" / {max(values) * 1000:.1f} ms"


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in MiB per minute: the memory trend over a run."""
    if len(samples) < 3:
        return 0.0
    return statistics.linear_regression([t / 60 for t, _ in samples], [kib / 1024 for _, kib in samples]).slope


def window(rows: list, lo: float, hi: float) -> list:
    """Rows whose first field (a unix time) is in [lo, hi)."""
    return [r for r in rows if lo <= r[0] < hi]
