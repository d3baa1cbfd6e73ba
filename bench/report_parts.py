"""The benchmark report's pieces that measure nothing: goals and rows (met or **missed**), the machine record,
the parsers for the text the older bench modules print, the markdown table, and the splice into a doc.

Kept apart from bench.report so they can be tested in milliseconds and so the report module stays about
running things. Parsers fail loudly (``ValueError`` naming the missing line) rather than report a zero.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:report:begin — written by `make bench` (python -m bench.report --write); edits here are lost -->"
END = "<!-- bench:report:end -->"
_BEGIN_RE = re.compile(r"^<!-- bench:report:begin.*?-->$", re.M)


@dataclass(frozen=True)
class Goal:
    op: str  # "<=" or ">="
    threshold: float
    text: str

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.threshold
        if self.op == ">=":
            return value >= self.threshold
        raise ValueError(f"unknown goal operator {self.op!r}")


@dataclass
class Row:
    figure: str
    value: float | None  # the number judged against the goal
    measured: str  # what the table shows
    goal: Goal | None  # None: an informational row
    how: str  # the command that takes this figure alone
    judged: bool = True
    note: str = ""
    error: bool = False

    @property
    def status(self) -> str:
        if self.error:
            return "**error**"
        if self.goal is None:
            return self.note or "—"
        if not self.judged:
            return self.note or "not judged"
        if self.value is None:
            return "**missed** (no figure)"
        verdict = "met" if self.goal.met(self.value) else "**missed**"
        return f"{verdict} ({self.note})" if self.note else verdict

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


# -- the machine --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return round(kb / 2**20, 1)
    except (OSError, AttributeError):
        return float("nan")


def _os() -> str:
    try:
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        pretty = platform.system()
    return f"{pretty}, kernel {platform.release()}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> str:
    if shutil.which("nvidia-smi"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
            if out:
                return "; ".join(line.strip() for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    return "none"


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": _ram_gib(), "gpu": _gpus(), "os": _os(), "python": platform.python_version(),
        "torch": _version("torch"), "web3": _version("web3"), "anvil": _anvil(),
    }


def _anvil() -> str:
    from node.chain.devnet import DevnetError, find_anvil

    try:
        first = subprocess.run([str(find_anvil()), "--version"], capture_output=True, text=True, timeout=20
                               ).stdout.strip().splitlines()[0]
        return first.replace("Version: ", "")
    except (OSError, subprocess.SubprocessError, IndexError, DevnetError):
        return "anvil not found"


# -- parsers for the older modules' printed output ----------------------------------------------------------
def _find(pattern: str, text: str, what: str) -> re.Match[str]:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise ValueError(f"no {what} line in the output:\n{text[-800:]}")
    return m


def parse_overhead(text: str) -> dict[str, Any]:
    """bench.node_overhead's printout -> ratio, medians, fixed overhead."""
    head = _find(r"^device (\S+), (\d+)x\d+ float32 matmul x (\d+) per job, (\d+) rounds, (\d+) threads", text,
                 "device")
    return {
        "device": head.group(1), "n": int(head.group(2)), "iters": int(head.group(3)), "rounds": int(head.group(4)),
        "threads": int(head.group(5)),
        "raw_s": float(_find(r"raw torch in-process\s+median\s+([\d.]+) s", text, "raw torch").group(1)),
        "node_s": float(_find(r"through a warm worker\s+median\s+([\d.]+) s", text, "worker").group(1)),
        "ratio": float(_find(r"ratio node/raw\s+([\d.]+)", text, "ratio").group(1)),
        "fixed_ms": float(_find(r"fixed overhead .*? median ([\d.]+) ms", text, "fixed overhead").group(1)),
    }


def parse_commitment(text: str) -> dict[str, float]:
    """bench.commitment's printout -> commit_file and raw SHA-256 rates in GB/s."""
    return {"gbps": float(_find(r"^commit_file:\s+([\d.]+) GB/s", text, "commit_file").group(1)),
            "raw_gbps": float(_find(r"^raw sha256:\s+([\d.]+) GB/s", text, "raw sha256").group(1))}


# -- markdown -------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render(result: dict[str, Any]) -> str:
    """The block between the markers: when, where, the table and how to take each figure again."""
    m, rows = result["machine"], result["rows"]
    mode = "quick sizes: a smoke run, not for the record" if result["quick"] else "full sizes"
    missed = sum(1 for r in rows if "missed" in r.status)
    lines = [
        BEGIN,
        "## The table",
        "",
        f"Measured {m['date']} in one run of `python -m bench.report` ({mode}; {_duration(result['seconds'])}), "
        f"every figure side by side on this machine. Load average (1 min) {result['load'][0]} before, "
        f"{result['load'][1]} after.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM, GPU: "
        f"{m['gpu']}; {m['os']}; Python {m['python']}, torch {m['torch']}, web3 {m['web3']}, {m['anvil']}.",
        "",
        "| figure | measured | goal | status |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {_cell(r.figure)} | {_cell(r.measured)} | {_cell(r.goal.text if r.goal else '—')} | "
                     f"{_cell(r.status)} |")
    judged = sum(1 for r in rows if r.goal and r.judged and not r.error)
    errors = sum(1 for r in rows if r.error)
    verdict = f"{missed} of {judged} judged figures missed their goal." if missed else \
        f"All {judged} judged figures met their goal."
    if errors:
        verdict += f" {errors} part(s) could not be measured (see the error rows)."
    lines += ["", verdict, "",
              "Each figure alone (`.venv/bin/python -m …`):", ""]
    seen: list[str] = []
    for r in rows:
        if r.how not in seen:
            seen.append(r.how)
    lines += [f"- `{how}`" for how in seen]
    lines += ["", END]
    return "\n".join(lines)


def splice(doc: str, block: str) -> str:
    """The doc with the block between the markers replaced, or inserted before the first second-level
    heading (or at the end) when the doc has no markers yet; everything else is kept byte for byte."""
    begin = _BEGIN_RE.search(doc)
    if begin is not None:
        end = doc.find(END, begin.end())
        if end < 0:
            raise ValueError("the doc has the begin marker but no end marker; fix it by hand")
        return doc[:begin.start()] + block + doc[end + len(END):]
    heading = re.search(r"^## ", doc, re.M)
    if heading is None:
        return doc.rstrip("\n") + "\n\n" + block + "\n"
    return doc[:heading.start()] + block + "\n\n" + doc[heading.start():]


if __name__ == "__main__":
    sys.exit("bench.report_parts is a library; run python -m bench.report")
