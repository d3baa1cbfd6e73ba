"""Idle harvesting: may the node start new work on a GPU the machine's owner may also be using?

With ``hardware.idle_only`` the node only claims jobs for a GPU nobody else is using, so a gaming or
workstation owner never finds their card taken. "Nobody else" has two signals, read from NVML every
``poll_s`` (0.5 s):

- a compute process on the GPU that is not one of ours. Ours are the worker processes (``own_pids()``)
  and their descendants; a process is a descendant when walking its parent chain in /proc reaches a
  worker. The walk is done only for a pid NVML lists and we do not know, so it costs a few small reads
  per sample and needs nothing from the kernel beyond /proc/<pid>/stat (unlike
  /proc/<pid>/task/*/children, which needs CONFIG_PROC_CHILDREN). A pid that cannot be read counts as
  foreign: when in doubt, leave the GPU to its owner.
- utilization at or above ``threshold_pct``: graphics work (games, the desktop) shows only here.

Either one makes the device busy at once (on the next sample, so within about a second); it is idle
again only after both stayed clear for ``idle_seconds`` without a break. NVML read errors, and samples
that stopped arriving, count as busy: the monitor fails towards leaving the GPU alone. It only gates
NEW claims; a job already running is never stopped by it.

Devices with no NVML key (the CPU) and every device when NVML is not available are always idle:
idle_only applies to GPUs only. MIG instances have no utilization reading (NVML answers NotSupported),
so for them only the process check applies, as in ``hardware.is_idle``.

Limitation: NVML reports host pids. Inside a container without the host pid namespace our own
workers' pids do not match, so they look foreign and the GPU never becomes idle; run such a node with
the host pid namespace or without idle_only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from node.compute.hardware import NvmlApi
from node.metrics import Metrics

log = logging.getLogger(__name__)

_UNSAMPLED = "not sampled yet"
_MAX_ANCESTRY = 64  # deeper process trees than this are not ours in practice; bounds a /proc walk


def _parent(pid: int, proc: Path) -> int | None:
    """The parent pid from /proc/<pid>/stat, or None when the process is gone or unreadable."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def is_ours(pid: int, own: set[int], proc: Path = Path("/proc")) -> bool:
    """True when ``pid`` is one of ``own`` or descends from one (its parent chain reaches it)."""
    current: int | None = pid
    for _ in range(_MAX_ANCESTRY):
        if current is None or current <= 1:
            return False
        if current in own:
            return True
        current = _parent(current, proc)
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class _Device:
    key: str | int | None  # NVML index or UUID; None: not monitored
    handle: Any = None  # resolved lazily, dropped after an error so a reset GPU is found again
    sampled_at: float | None = None
    utilization_pct: float | None = None
    foreign_pids: tuple[int, ...] = ()
    watts: float | None = None
    calm_since: float | None = None  # since when no foreign process and utilization below threshold
    idle: bool = False
    reason: str = _UNSAMPLED
    cause: str = _UNSAMPLED  # what the reason is about, without changing numbers: logs follow this


class IdleMonitor:
    """Samples NVML for each device and answers ``idle(device)``; see the module docstring for the rules."""

    def __init__(self, nvml: NvmlApi | None, devices: Mapping[str, str | int | None], *,
                 threshold_pct: int, idle_seconds: float, own_pids: Callable[[], set[int]],
                 poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None) -> None:
        if poll_s <= 0 or idle_seconds < 0:
            raise ValueError("poll_s must be > 0 and idle_seconds >= 0")
        self.nvml = nvml
        self.threshold_pct = threshold_pct
        self.idle_seconds = idle_seconds
        self.own_pids = own_pids
        self.poll_s = poll_s
        self.clock = clock
        self.metrics = metrics
        # A sample older than this means the poller stalled (a hung driver call): stop trusting "idle".
        self.stale_after_s = max(5.0, 10 * poll_s)
        self._lock = threading.Lock()
        self._initialized = False
        self._devices: dict[str, _Device] = {}
        for name, key in devices.items():
            monitored = nvml is not None and key is not None
            if monitored:
                reason = _UNSAMPLED
            elif key is None:
                reason = "not a GPU: idle_only applies to GPUs"
            else:
                reason = "NVML not available: idleness cannot be measured"
            self._devices[name] = _Device(key=key if monitored else None, idle=not monitored, reason=reason)
            if metrics is not None:
                metrics.device_idle.labels(name).set(0 if monitored else 1)

    # --- reading NVML (blocking; run() calls it in a thread) ---

    def sample(self) -> None:
        """One NVML read of every monitored device; never raises for a device's read error."""
        monitored = {n: d for n, d in self._devices.items() if d.key is not None}
        if not monitored:
            return
        now = self.clock()
        try:
            if not self._initialized:
                self.nvml.init()  # type: ignore[union-attr]
                self._initialized = True
        except Exception as exc:  # driver not loaded right now: retried next sample
            for name in monitored:
                self._record(name, now, error=f"NVML unavailable: {_describe(exc)}")
            return
        try:
            own = set(self.own_pids())
        except Exception as exc:  # without our pids every process would look foreign anyway
            for name in monitored:
                self._record(name, now, error=f"own worker pids unknown: {_describe(exc)}")
            return
        for name, dev in monitored.items():
            try:
                util, foreign, watts = self._read(dev, own)
            except Exception as exc:  # NVMLError (GPU lost, driver reloaded, no permission) or a fake's error
                with self._lock:
                    dev.handle = None
                self._record(name, now, error=f"NVML read failed: {_describe(exc)}")
            else:
                self._record(name, now, util=util, foreign=foreign, watts=watts)

    def _read(self, dev: _Device, own: set[int]) -> tuple[float | None, tuple[int, ...], float | None]:
        nvml = self.nvml
        assert nvml is not None
        if dev.handle is None:
            dev.handle = nvml.handle_by_uuid(dev.key) if isinstance(dev.key, str) else nvml.handle(int(dev.key))
        pids = [pid for pid, _used in nvml.compute_processes(dev.handle)]
        foreign = tuple(sorted({pid for pid in pids if not is_ours(pid, own)}))
        try:
            util: float | None = float(nvml.utilization_gpu_pct(dev.handle))
        except pynvml.NVMLError_NotSupported:
            util = None  # MIG instances: no utilization counter, the process check alone decides
        try:
            watts: float | None = round(nvml.power_usage_mw(dev.handle) / 1000, 1)
        except pynvml.NVMLError:
            watts = None  # power is for pricing only; its absence says nothing about idleness
        return util, foreign, watts

    def _record(self, name: str, now: float, *, util: float | None = None, foreign: tuple[int, ...] = (),
                watts: float | None = None, error: str | None = None) -> None:
        with self._lock:
            dev = self._devices[name]
            was_idle, old_cause = dev.idle, dev.cause
            dev.sampled_at, dev.utilization_pct, dev.foreign_pids = now, util, foreign
            if error is None:
                dev.watts = watts
            if error is None and not foreign and (util is None or util < self.threshold_pct):
                if dev.calm_since is None:
                    dev.calm_since = now
                quiet = now - dev.calm_since
                dev.idle = quiet >= self.idle_seconds
                dev.cause = "idle" if dev.idle else "waiting"
                dev.reason = "" if dev.idle else f"waiting: quiet for {quiet:.1f}s of {self.idle_seconds:g}s"
            else:
                dev.calm_since, dev.idle = None, False
                if error is not None:
                    dev.cause = dev.reason = error
                elif foreign:
                    plural = "es" if len(foreign) > 1 else ""
                    dev.reason = f"foreign process{plural} pid {', '.join(map(str, foreign))}"
                    dev.cause = dev.reason
                else:
                    dev.reason = f"utilization {util:g}% >= {self.threshold_pct}%"
                    dev.cause = "utilization"
            idle, cause, reason = dev.idle, dev.cause, dev.reason
        if self.metrics is not None:
            self.metrics.device_idle.labels(name).set(1 if idle else 0)
            if util is not None:
                self.metrics.device_utilization.labels(name).set(util)
        if cause != old_cause:
            self._log_change(name, was_idle, old_cause, idle, cause, reason, error is not None)

    def _log_change(self, name: str, was_idle: bool, old_cause: str, idle: bool, cause: str, reason: str,
                    error: bool) -> None:
        """One line per change of cause, never per sample: INFO for idle <-> busy, WARNING for NVML trouble."""
        extra = {"device": name}
        if error:
            log.warning("%s: %s; treating it as busy", name, reason, extra=extra)
        elif idle:
            log.info("%s idle: quiet for %gs, new work may start there", name, self.idle_seconds, extra=extra)
        elif cause != "waiting" and (was_idle or old_cause == _UNSAMPLED):
            log.info("%s busy: %s; no new work starts there", name, reason, extra=extra)
        else:
            log.debug("%s not idle: %s", name, reason, extra=extra)

    # --- the poller ---

    async def run(self) -> None:
        """Sample every ``poll_s`` until cancelled; errors are recorded, never raised."""
        try:
            while True:
                try:
                    await asyncio.to_thread(self.sample)
                except Exception:  # a bug, not an NVML error (sample() handles those): keep watching
                    log.exception("idle monitor sample failed")
                await asyncio.sleep(self.poll_s)
        finally:
            self.close()

    def close(self) -> None:
        """Release NVML (init is reference counted, so this does not disturb other users)."""
        if self._initialized and self.nvml is not None:
            self._initialized = False
            try:
                self.nvml.shutdown()
            except Exception as exc:
                log.debug("NVML shutdown failed: %s", _describe(exc))

    # --- answers (cheap; called from the event loop) ---

    def _stale(self, dev: _Device, now: float) -> bool:
        return dev.key is not None and dev.sampled_at is not None and now - dev.sampled_at > self.stale_after_s

    def idle(self, device: str) -> bool:
        """May new work start on ``device``? Unknown device names raise KeyError (a wiring bug)."""
        dev = self._devices[device]
        with self._lock:
            return dev.idle and not self._stale(dev, self.clock())

    def watts(self, device: str) -> float | None:
        """Last measured power draw, or None (CPU, no NVML, not supported, not sampled yet)."""
        return self._devices[device].watts

    def snapshot(self) -> dict[str, dict]:
        """Per device: utilization_pct, foreign_pids, idle, idle_for_s (None: not monitored), reason, watts."""
        now = self.clock()
        out: dict[str, dict] = {}
        with self._lock:
            for name, d in self._devices.items():
                stale = self._stale(d, now)
                quiet = None if d.key is None else (0.0 if d.calm_since is None or d.sampled_at is None
                                                    else round(d.sampled_at - d.calm_since, 3))
                reason = d.reason
                if stale and d.sampled_at is not None:
                    reason = f"no NVML sample for {now - d.sampled_at:.0f}s"
                out[name] = {"utilization_pct": d.utilization_pct, "foreign_pids": list(d.foreign_pids),
                             "idle": d.idle and not stale, "idle_for_s": quiet, "reason": reason,
                             "watts": d.watts}
        return out

