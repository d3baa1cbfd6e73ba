"""``gpunode status`` and ``gpunode jobs``: read the running node's HTTP API and show it as tables.

The CLI never opens the node's database or keystore itself: a running node owns its data directory (and
locks it), so the API is the one safe window into it. Unknown or missing fields render as "—" rather than
failing, so an older or newer node still gets a readable status.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from node.config import ConfigError, Settings, load_settings

API_TIMEOUT_S = 5.0
DASH = "—"


class ApiError(Exception):
    """The node's API could not be read; `hint` and `label` as node.cli.CliError (shown the same way)."""

    def __init__(self, message: str, hint: str = "", *, label: bool = True) -> None:
        super().__init__(message)
        self.hint, self.label = hint, label


def api_get(base: str, path: str, query: dict[str, Any] | None = None, *, timeout: float = API_TIMEOUT_S) -> Any:
    """GET a JSON document from the node's API at `base`; every failure is one ApiError line."""
    base = base.rstrip("/")
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(65536)).get("detail") or exc.reason
        except (ValueError, AttributeError, OSError):
            detail = exc.reason
        raise ApiError(f"the node at {base} answered HTTP {exc.code} for {path}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        why = ("connection refused" if isinstance(reason, ConnectionRefusedError)
               else f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else str(reason))
        raise ApiError(f"cannot reach the node at {base} ({why}) — is `gpunode run` running? "
                       "(api.host/api.port in config)", label=False) from None
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"the node at {base} answered {path} with something that is not JSON") from None


def tokens(units: Any, decimals: int) -> str:
    """Base units (int or decimal string) as whole tokens, e.g. "1500000000000000000" -> "1.5"."""
    try:
        value = Decimal(str(units)).scaleb(-decimals)
    except (ArithmeticError, ValueError):
        return DASH
    return format(value.normalize(), "f") if value else "0"


def short_id(job_id: Any) -> str:
    text = str(job_id or "")
    return text[:12] + "…" if len(text) > 12 else text or DASH


def _when(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    return str(ts) if ts else DASH


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return DASH
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s % 60}s"


def _s(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _row(table: Table, *cells: Any) -> None:
    """Cells as plain Text: values from the node (reasons, errors) must never be read as rich markup."""
    table.add_row(*(Text(str(c)) for c in cells))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def render_status(data: dict[str, Any], console: Console | None = None) -> None:
    """Node, chain, devices, jobs by state, earnings (in tokens) and supervised tasks."""
    console = console or Console()
    data = _dict(data)
    node, chain, jobs, earn = (_dict(data.get(k)) for k in ("node", "chain", "jobs", "earnings"))
    state = "draining" if node.get("draining") else "accepting jobs" if node.get("accepting") else "not accepting"
    summary = Table(title="node", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in (("name", node.get("name")), ("version", node.get("version")),
                         ("provider", node.get("provider")), ("payout", node.get("payout")),
                         ("chain", node.get("chain_id")), ("market", node.get("market")),
                         ("head", chain.get("head")), ("uptime", _duration(node.get("uptime_s"))), ("state", state)):
        _row(summary, label, _s(value))
    for ep in chain.get("endpoints") or []:
        ep = _dict(ep)
        health = "ok" if ep.get("healthy") else f"failing: {_s(ep.get('last_error'))}"
        _row(summary, "rpc", f"{_s(ep.get('url'))} ({health})")
    console.print(summary)

    devices = Table(title="devices", title_justify="left")
    for col in ("device", "job", "idle", "util %", "foreign pids", "reason"):
        devices.add_column(col)
    for dev in data.get("devices") or []:
        dev = _dict(dev)
        util = dev.get("utilization_pct")
        _row(devices, _s(dev.get("name")), short_id(dev.get("busy_job")) if dev.get("busy_job") else DASH,
                        "yes" if dev.get("idle") else "no", DASH if util is None else f"{util:g}",
                        ", ".join(str(p) for p in dev.get("foreign_pids") or []) or DASH, _s(dev.get("reason")))
    console.print(devices)

    by_state = Table(title=f"jobs ({_s(jobs.get('open'))} open)", title_justify="left")
    by_state.add_column("state")
    by_state.add_column("jobs", justify="right")
    for name, n in sorted(_dict(jobs.get("by_state")).items()):
        _row(by_state, str(name), str(n))
    console.print(by_state)
    if jobs.get("overdue"):
        console.print(Text.assemble(("overdue: ", "bold red"), ", ".join(short_id(j) for j in jobs["overdue"])))

    decimals = earn.get("token_decimals", 18)
    decimals = decimals if isinstance(decimals, int) and not isinstance(decimals, bool) else 18
    money = Table(title="earnings (tokens)", title_justify="left")
    for col in ("finalized", "withdrawn", "pending"):
        money.add_column(col, justify="right")
    _row(money, *(tokens(earn.get(f"{k}_units", 0), decimals) for k in ("finalized", "withdrawn", "pending")))
    console.print(money)

    tasks = Table(title="tasks", title_justify="left")
    for col in ("task", "running", "restarts", "last error"):
        tasks.add_column(col)
    for name, task in sorted(_dict(data.get("tasks")).items()):
        task = _dict(task)
        _row(tasks, str(name), "yes" if task.get("running") else "no", _s(task.get("restarts")),
                      _s(task.get("last_error")))
    console.print(tasks)


def render_jobs(jobs: list[Any], decimals: int, console: Console | None = None) -> None:
    """One row per job: id, state, workload, payment in tokens, device, last change and why."""
    console = console or Console()
    table = Table(title=f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}", title_justify="left")
    for col in ("job", "state", "workload", "payment", "device", "updated", "reason"):
        table.add_column(col, justify="right" if col == "payment" else "left")
    for job in jobs:
        job = _dict(job)
        reason = _s(job.get("reason"))
        if job.get("code"):
            reason = f"[{job['code']}] {reason}"
        _row(table, short_id(job.get("job_id")), _s(job.get("state")), _s(job.get("workload")),
                      tokens(job.get("payment", 0), decimals), _s(job.get("device")), _when(job.get("updated")),
                      reason)
    console.print(table)


# -- the commands ----------------------------------------------------------------------------------------


def local_api(settings: Settings) -> str:
    """The node's API as seen from this machine (a wildcard listen address is reached via loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.api.host, settings.api.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.api.port}"


def _api(args: argparse.Namespace, path: str, query: dict[str, Any] | None = None) -> Any:
    if args.url:
        return api_get(args.url, path, query)
    settings = load_settings(args.config)
    if not settings.api.enabled:
        raise ApiError("the node's API is off (api.enabled = false), so there is nothing to ask",
                       "enable it in the config, or pass --url URL")
    return api_get(local_api(settings), path, query)


def status_command(args: argparse.Namespace) -> int:
    data = _api(args, "/status")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render_status(data)
    return 0


def jobs_command(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("state", args.state), ("limit", args.limit)) if v is not None}
    data = _api(args, "/jobs", query)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        try:
            decimals = load_settings(args.config).pricing.token_decimals
        except ConfigError:
            if not args.url:
                raise
            decimals = 18  # another node's API, and no usable config here: the usual ERC-20 decimals
        jobs = data.get("jobs") if isinstance(data, dict) else None
        render_jobs(jobs if isinstance(jobs, list) else [], decimals)
    return 0
