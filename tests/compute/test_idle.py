"""Idle detection against a fake NVML (the only mocked part) and a fake clock; the process tree is real.

"Ours" is decided by walking /proc, so the tests start real processes: the test process stands in for a
worker, a child and a grandchild of it for the processes a job spawns, and the test's own parent for
someone else's program on the GPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator

import pynvml
import pytest

from node.compute.hardware import NvmlApi
from node.compute.idle import IdleMonitor, is_ours
from node.metrics import Metrics

GPU = "cuda:0"
MIG = "cuda:1"
MIG_UUID = "MIG-7c1e"
ME = os.getpid()
OTHER = os.getppid()  # not one of our workers, not descended from one


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml(NvmlApi):
    """Per handle key (index or UUID): compute pids, utilization (or an error), power; any read can fail."""

    def __init__(self) -> None:
        self.pids: dict[object, list[int]] = {0: [], MIG_UUID: []}
        self.util: dict[object, int | Exception] = {0: 0, MIG_UUID: nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)}
        self.power: dict[object, int | Exception] = {0: 250_400, MIG_UUID: nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)}
        self.fail: dict[object, Exception] = {}  # key -> error raised by compute_processes
        self.init_error: Exception | None = None
        self.inits = self.shutdowns = self.handles = 0

    def init(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def shutdown(self) -> None:
        self.shutdowns += 1

    def handle(self, index: int) -> object:
        self.handles += 1
        return ("handle", index)

    def handle_by_uuid(self, uuid: str) -> object:
        self.handles += 1
        return ("handle", uuid)

    def compute_processes(self, handle: object) -> list[tuple[int, int | None]]:
        key = handle[1]  # type: ignore[index]
        if key in self.fail:
            raise self.fail[key]
        return [(pid, 1 << 30) for pid in self.pids[key]]

    def utilization_gpu_pct(self, handle: object) -> int:
        return self._value(self.util[handle[1]])  # type: ignore[index]

    def power_usage_mw(self, handle: object) -> int:
        return self._value(self.power[handle[1]])  # type: ignore[index]

    @staticmethod
    def _value(v: int | Exception) -> int:
        if isinstance(v, Exception):
            raise v
        return v


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def monitor(nvml: NvmlApi | None, clock: Clock, own: set[int] | None = None, metrics: Metrics | None = None,
            devices: dict[str, str | int | None] | None = None, idle_seconds: float = 60) -> IdleMonitor:
    return IdleMonitor(nvml, devices if devices is not None else {GPU: 0, "cpu": None}, threshold_pct=10,
                       idle_seconds=idle_seconds, own_pids=lambda: set(own or {ME}), clock=clock, metrics=metrics)


def settle(mon: IdleMonitor, clock: Clock, seconds: float = 60) -> None:
    """Sample at 0.5 s steps for ``seconds`` (the fake clock moves, nothing sleeps)."""
    end = clock.t + seconds
    mon.sample()
    while clock.t < end:
        clock.t += 0.5
        mon.sample()


@pytest.fixture
def descendants() -> Iterator[tuple[int, int]]:
    """A real child of this process and a real grandchild (the child's child)."""
    child = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    try:
        yield child.pid, grandchild
    finally:
        os.kill(grandchild, 9)
        child.kill()
        child.wait()


def test_cpu_and_unmeasurable_devices_are_always_idle(nvml: FakeNvml, clock: Clock) -> None:
    metrics = Metrics()
    mon = monitor(nvml, clock, metrics=metrics)
    assert mon.idle("cpu") and not mon.idle(GPU)  # a GPU is busy until measured quiet
    assert metrics.registry.get_sample_value("gpunode_device_idle", {"device": "cpu"}) == 1
    assert metrics.registry.get_sample_value("gpunode_device_idle", {"device": GPU}) == 0
    no_nvml = monitor(None, clock)
    no_nvml.sample()
    assert no_nvml.idle(GPU) and no_nvml.idle("cpu")
    snap = no_nvml.snapshot()
    assert "NVML not available" in snap[GPU]["reason"] and "idle_only applies to GPUs" in snap["cpu"]["reason"]
    assert snap["cpu"]["idle_for_s"] is None and no_nvml.watts(GPU) is None
    with pytest.raises(KeyError):
        mon.idle("cuda:9")


def test_idle_only_after_idle_seconds_of_quiet(nvml: FakeNvml, clock: Clock) -> None:
    metrics = Metrics()
    mon = monitor(nvml, clock, metrics=metrics)
    mon.sample()
    assert not mon.idle(GPU) and mon.snapshot()[GPU]["reason"].startswith("waiting: quiet for 0.0s of 60s")
    settle(mon, clock, 59.5)
    assert not mon.idle(GPU) and mon.snapshot()[GPU]["idle_for_s"] == 59.5
    clock.t += 0.5
    mon.sample()
    assert mon.idle(GPU) and mon.snapshot()[GPU]["reason"] == ""
    assert metrics.registry.get_sample_value("gpunode_device_idle", {"device": GPU}) == 1
    assert metrics.registry.get_sample_value("gpunode_device_utilization_pct", {"device": GPU}) == 0
    assert mon.watts(GPU) == 250.4


def test_foreign_process_makes_it_busy_at_once(nvml: FakeNvml, clock: Clock) -> None:
    mon = monitor(nvml, clock)
    settle(mon, clock)
    assert mon.idle(GPU)
    nvml.pids[0] = [ME, OTHER]
    clock.t += 0.5
    mon.sample()  # the very next sample
    assert not mon.idle(GPU)
    snap = mon.snapshot()[GPU]
    assert snap["foreign_pids"] == [OTHER] and snap["reason"] == f"foreign process pid {OTHER}"
    assert snap["idle_for_s"] == 0.0
    nvml.pids[0] = [ME]  # the owner's program exits: idle again only after a full quiet period
    settle(mon, clock, 59.5)
    assert not mon.idle(GPU)
    clock.t += 0.5
    mon.sample()
    assert mon.idle(GPU)


def test_our_workers_and_their_children_are_not_foreign(nvml: FakeNvml, clock: Clock,
                                                       descendants: tuple[int, int]) -> None:
    child, grandchild = descendants
    assert is_ours(grandchild, {ME}) and is_ours(child, {ME}) and is_ours(ME, {ME})
    assert not is_ours(OTHER, {ME}) and not is_ours(1, {ME})
    assert not is_ours(ME, {child})  # the worker's parent is not the worker's
    assert not is_ours(2**22 + 12345, {ME})  # no such process: unknown counts as foreign

    mon = monitor(nvml, clock)
    settle(mon, clock)
    nvml.pids[0] = [ME, child, grandchild]
    clock.t += 0.5
    mon.sample()
    assert mon.idle(GPU) and mon.snapshot()[GPU]["foreign_pids"] == []

    worker_only = monitor(nvml, clock, own={child})  # own_pids() gives the worker; its child is included
    nvml.pids[0] = [child, grandchild]
    settle(worker_only, clock)
    assert worker_only.idle(GPU)
    nvml.pids[0] = [child, grandchild, ME]
    clock.t += 0.5
    worker_only.sample()
    assert not worker_only.idle(GPU) and worker_only.snapshot()[GPU]["foreign_pids"] == [ME]


def test_utilization_at_or_above_threshold_is_busy(nvml: FakeNvml, clock: Clock) -> None:
    metrics = Metrics()
    mon = monitor(nvml, clock, metrics=metrics)
    settle(mon, clock)
    nvml.util[0] = 37  # a game started: no compute process, only utilization shows it
    clock.t += 0.5
    mon.sample()
    assert not mon.idle(GPU)
    assert mon.snapshot()[GPU]["reason"] == "utilization 37% >= 10%"
    assert metrics.registry.get_sample_value("gpunode_device_utilization_pct", {"device": GPU}) == 37
    assert metrics.registry.get_sample_value("gpunode_device_idle", {"device": GPU}) == 0
    nvml.util[0] = 10  # the threshold itself is busy
    settle(mon, clock, 120)
    assert not mon.idle(GPU)
    nvml.util[0] = 9
    settle(mon, clock, 30)
    nvml.util[0] = 50  # a spike restarts the quiet period
    clock.t += 0.5
    mon.sample()
    nvml.util[0] = 9
    settle(mon, clock, 59.5)
    assert not mon.idle(GPU)
    clock.t += 0.5
    mon.sample()
    assert mon.idle(GPU)


def test_nvml_errors_mean_busy_and_are_retried(nvml: FakeNvml, clock: Clock) -> None:
    mon = monitor(nvml, clock)
    settle(mon, clock)
    handles = nvml.handles
    nvml.fail[0] = nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
    clock.t += 0.5
    mon.sample()
    assert not mon.idle(GPU)
    assert mon.snapshot()[GPU]["reason"] == "NVML read failed: NVMLError_GpuIsLost: GPU is lost"
    del nvml.fail[0]
    settle(mon, clock, 59.5)
    assert not mon.idle(GPU) and nvml.handles == handles + 1  # looked up again once, after the error
    clock.t += 0.5
    mon.sample()
    assert mon.idle(GPU)

    down = FakeNvml()
    down.init_error = nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    mon = monitor(down, clock, idle_seconds=0)
    mon.sample()
    assert not mon.idle(GPU) and mon.snapshot()[GPU]["reason"].startswith("NVML unavailable: ")
    down.init_error = None
    mon.sample()
    assert mon.idle(GPU) and down.inits == 2

    def broken() -> set[int]:
        raise RuntimeError("pool gone")

    mon = IdleMonitor(nvml, {GPU: 0}, threshold_pct=10, idle_seconds=0, own_pids=broken, clock=clock)
    mon.sample()
    assert not mon.idle(GPU) and "own worker pids unknown: RuntimeError: pool gone" in mon.snapshot()[GPU]["reason"]


def test_mig_instance_by_uuid_uses_processes_only(nvml: FakeNvml, clock: Clock) -> None:
    mon = monitor(nvml, clock, devices={MIG: MIG_UUID})
    settle(mon, clock)
    assert mon.idle(MIG)  # utilization NotSupported is not an error: it never becomes known on MIG
    snap = mon.snapshot()[MIG]
    assert snap["utilization_pct"] is None and snap["watts"] is None
    nvml.pids[MIG_UUID] = [OTHER]
    clock.t += 0.5
    mon.sample()
    assert not mon.idle(MIG)


def test_stalled_sampling_is_not_idle(nvml: FakeNvml, clock: Clock) -> None:
    mon = monitor(nvml, clock)
    settle(mon, clock)
    assert mon.idle(GPU)
    clock.t += mon.stale_after_s + 1  # the poller hung in a driver call: the last answer is too old
    assert not mon.idle(GPU)
    assert mon.snapshot()[GPU]["reason"].startswith("no NVML sample for ")
    mon.sample()
    assert mon.idle(GPU)


def test_snapshot_contents(nvml: FakeNvml, clock: Clock) -> None:
    mon = monitor(nvml, clock)
    assert mon.snapshot() == {
        GPU: {"utilization_pct": None, "foreign_pids": [], "idle": False, "idle_for_s": 0.0,
              "reason": "not sampled yet", "watts": None},
        "cpu": {"utilization_pct": None, "foreign_pids": [], "idle": True, "idle_for_s": None,
                "reason": "not a GPU: idle_only applies to GPUs", "watts": None},
    }
    settle(mon, clock, 12)
    nvml.util[0], nvml.pids[0] = 3, [OTHER, ME, 1]
    clock.t += 0.5
    mon.sample()
    assert mon.snapshot()[GPU] == {"utilization_pct": 3.0, "foreign_pids": sorted([1, OTHER]), "idle": False,
                                   "idle_for_s": 0.0, "watts": 250.4,
                                   "reason": f"foreign processes pid {', '.join(map(str, sorted([1, OTHER])))}"}


def test_transitions_are_logged_once(nvml: FakeNvml, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node.compute.idle")
    mon = monitor(nvml, clock)
    settle(mon, clock)
    for pct in (40, 55, 70, 55):  # busy for several samples, the number changing each time
        nvml.util[0] = pct
        clock.t += 0.5
        mon.sample()
    nvml.fail[0] = nvml_error(pynvml.NVML_ERROR_UNKNOWN)
    for _ in range(3):
        clock.t += 0.5
        mon.sample()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("INFO", f"{GPU} idle: quiet for 60s, new work may start there"),
        ("INFO", f"{GPU} busy: utilization 40% >= 10%; no new work starts there"),
        ("WARNING", f"{GPU}: NVML read failed: NVMLError_Unknown: Unknown Error; treating it as busy"),
    ]
    assert all(r.device == GPU for r in caplog.records)


async def test_run_survives_errors_and_stops_when_cancelled(nvml: FakeNvml) -> None:
    seen = asyncio.Event()
    reads = 0
    real = nvml.compute_processes

    def flaky(handle: object) -> list[tuple[int, int | None]]:
        nonlocal reads
        reads += 1
        if reads >= 4:
            seen.set()
        if reads % 2:
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        return real(handle)

    nvml.compute_processes = flaky  # type: ignore[method-assign]
    mon = IdleMonitor(nvml, {GPU: 0}, threshold_pct=10, idle_seconds=3600, own_pids=lambda: {ME}, poll_s=0.01)
    task = asyncio.create_task(mon.run())
    await asyncio.wait_for(seen.wait(), 30)  # kept sampling after errors
    assert not task.done() and not mon.idle(GPU)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        IdleMonitor(None, {}, threshold_pct=10, idle_seconds=60, own_pids=set, poll_s=0)
