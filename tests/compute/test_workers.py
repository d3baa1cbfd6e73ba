"""Device workers against real spawned processes with real torch (CPU here; the CUDA test runs where there is one).

Starting a worker costs a torch import (several seconds on a small machine), so two workers are module-scoped and
started concurrently: the ``pool``'s worker, which tests also drive directly as ``worker``, for jobs that leave it
alive, and ``victim`` for jobs that kill it (each such test waits for the replacement and checks it, and starts by
making sure the victim is up, so that the tests pass in any order). Every test asserts only on its own jobs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from node.compute.pool import WorkerPool
from node.compute.workers import (
    DeviceSpec,
    DeviceWorker,
    FailureReason,
    JobRequest,
    WorkerStartError,
    validate_request,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

T = "tests.compute.worker_targets:"
CPU = DeviceSpec("cpu", None, cpu_memory_mib=512, threads=1)
JOB_TIMEOUT = 120.0  # generous: a job may wait behind a worker restart (a torch import) on a slow machine


def job(job_id: str, name: str, **kwargs: object) -> JobRequest:
    return JobRequest(job_id, T + name, dict(kwargs))


def gone(pid: int | None) -> bool:
    assert pid is not None
    multiprocessing.active_children()  # reaps anything finished
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Workers:
    def __init__(self) -> None:
        self.pool = WorkerPool([CPU], max_queue=3)
        self.victim = DeviceWorker(CPU, kill_grace=0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def started() -> AsyncIterator[Workers]:
    w = Workers()
    failures, _ = await asyncio.gather(w.pool.start(), w.victim.start())
    assert failures == {}
    yield w
    await asyncio.gather(w.pool.stop(), w.victim.stop())


@pytest.fixture
def pool(started: Workers) -> WorkerPool:
    return started.pool


@pytest.fixture
def worker(started: Workers) -> DeviceWorker:
    return started.pool.workers["cpu"]


@pytest_asyncio.fixture(loop_scope="session")
async def victim(started: Workers) -> DeviceWorker:
    await started.victim.start()  # no-op when it is up; restarts it if the stop test ran first
    return started.victim


async def test_job_runs_and_returns_its_result(worker: DeviceWorker) -> None:
    out = await worker.run(job("echo-1", "echo", text="hi", n=3, xs=[1.5, None], raw=b"\x01"), JOB_TIMEOUT)
    assert out.ok and out.reason is None and out.job_id == "echo-1"
    assert out.result == {"device": "cpu", "kwargs": {"text": "hi", "n": 3, "xs": [1.5, None], "raw": "01"}}
    assert out.pid == worker.pid and out.seconds >= 0


async def test_torch_is_imported_once_per_worker(worker: DeviceWorker) -> None:
    first = await worker.run(job("info-1", "torch_info"), JOB_TIMEOUT)
    second = await worker.run(job("info-2", "torch_info"), JOB_TIMEOUT)
    assert first.ok and second.ok and first.result and second.result
    assert first.result["pid"] == second.result["pid"] == worker.pid
    assert first.result["torch_was_loaded"] and second.result["torch_was_loaded"]  # loaded at start, not by a job
    assert second.result["jobs_started"] == first.result["jobs_started"] + 1
    assert first.result["cuda_visible_devices"] == ""
    assert first.result["threads"] == 1
    assert worker.info["pid"] == worker.pid and worker.info["vm_limit_bytes"] > 512 << 20


async def test_matmul_runs_on_the_worker_device(worker: DeviceWorker) -> None:
    out = await worker.run(job("mm", "matmul", n=64), JOB_TIMEOUT)
    assert out.ok and out.result == {"trace": 64.0 * 64}


async def test_error_reports_type_and_message_and_keeps_the_worker(worker: DeviceWorker) -> None:
    pid = worker.pid
    out = await worker.run(job("err", "raise_error", message="kaboom " * 1000), JOB_TIMEOUT)
    assert not out.ok and out.reason is FailureReason.ERROR
    assert out.detail.startswith("ValueError: kaboom") and "Traceback" not in out.detail
    assert len(out.detail) <= 2048
    after = await worker.run(job("after-err", "echo"), JOB_TIMEOUT)
    assert after.ok and after.pid == pid == worker.pid


async def test_non_json_result_is_an_error(worker: DeviceWorker) -> None:
    out = await worker.run(job("nj", "not_json"), JOB_TIMEOUT)
    assert out.reason is FailureReason.ERROR and "TypeError" in out.detail


async def test_allocation_beyond_the_cpu_cap_is_out_of_memory(worker: DeviceWorker) -> None:
    pid = worker.pid
    out = await worker.run(job("oom", "allocate", mib=2048), JOB_TIMEOUT)
    assert out.reason is FailureReason.OUT_OF_MEMORY, out
    small = await worker.run(job("small", "allocate", mib=64), JOB_TIMEOUT)  # the cap is a cap, not a ban
    assert small.ok and small.result == {"bytes": 64 << 20, "first": 1} and small.pid == pid


async def test_event_loop_stays_responsive_during_a_job(worker: DeviceWorker) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        out = await worker.run(job("slow", "sleep", seconds=1.5), JOB_TIMEOUT)
    finally:
        task.cancel()
    assert out.ok
    assert ticks >= 20


@pytest.mark.parametrize("kwargs", [{"x": object()}, {"x": (1, 2)}, {"x": {1: "a"}}, {"x": {1, 2}},
                                    {"x": type("S", (str,), {})("s")}, {"device": "cuda:0"}])
async def test_non_plain_kwargs_are_rejected(worker: DeviceWorker, pool: WorkerPool, kwargs: dict) -> None:
    request = JobRequest("bad", T + "echo", kwargs)
    with pytest.raises(ValueError):
        validate_request(request)
    with pytest.raises(ValueError):
        await worker.run(request, JOB_TIMEOUT)
    with pytest.raises(ValueError):
        await pool.submit("cpu", request, JOB_TIMEOUT)


@pytest.mark.parametrize("target", ["echo", "os.system", "a:b:c", "x:1y", "mod:fn()"])
async def test_bad_targets_are_rejected(target: str) -> None:
    with pytest.raises(ValueError):
        validate_request(JobRequest("bad", target, {}))


async def test_timeout_kills_the_worker_and_the_next_job_gets_a_new_one(victim: DeviceWorker) -> None:
    pid, restarts = victim.pid, victim.restarts
    out = await victim.run(job("hang", "sleep", seconds=60), timeout=1.0)
    assert out.reason is FailureReason.TIMEOUT and out.pid == pid
    assert 1.0 <= out.seconds < 30
    nxt = await victim.run(job("after-hang", "torch_info"), JOB_TIMEOUT)
    assert nxt.ok and nxt.result and nxt.result["pid"] != pid and victim.restarts == restarts + 1
    assert gone(pid)


async def test_segfault_is_a_crash_and_the_next_job_works(victim: DeviceWorker) -> None:
    pid = victim.pid
    out = await victim.run(job("segv", "segfault"), JOB_TIMEOUT)
    assert out.reason is FailureReason.CRASHED and "SIGSEGV" in out.detail, out
    nxt = await victim.run(job("after-segv", "echo"), JOB_TIMEOUT)
    assert nxt.ok and nxt.pid != pid and gone(pid)


async def test_cancelling_the_caller_kills_and_restarts_the_worker(victim: DeviceWorker) -> None:
    pid = victim.pid
    task = asyncio.create_task(victim.run(job("long", "sleep", seconds=60), JOB_TIMEOUT))
    while victim.current_job != "long":
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    nxt = await victim.run(job("after-cancel", "echo"), JOB_TIMEOUT)
    assert nxt.ok and nxt.pid != pid and gone(pid)


async def test_start_timeout_is_worker_start_failed() -> None:
    w = DeviceWorker(CPU, start_timeout=0.05)
    with pytest.raises(WorkerStartError):
        await w.start()
    out = await w.run(job("no-worker", "echo"), JOB_TIMEOUT)  # retries the start, which fails the same way
    assert out.reason is FailureReason.WORKER_START_FAILED and not out.ok
    await w.stop()
    assert w.pid is None and w.restarts == 0


async def test_queue_full_beyond_max_queue_plus_the_running_job(pool: WorkerPool) -> None:
    outs = await asyncio.gather(*(pool.submit("cpu", job(f"q{i}", "sleep", seconds=0.2), JOB_TIMEOUT)
                                  for i in range(6)))
    assert [o.ok for o in outs] == [True] * 4 + [False] * 2
    assert all(o.reason is FailureReason.QUEUE_FULL and o.seconds == 0 for o in outs[4:])


async def test_jobs_run_one_at_a_time_in_fifo_order(pool: WorkerPool) -> None:
    first = asyncio.create_task(pool.submit("cpu", job("f0", "sleep", seconds=0.3), JOB_TIMEOUT))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(pool.submit("cpu", job(f"f{i}", "torch_info"), JOB_TIMEOUT)) for i in (1, 2, 3)]
    await asyncio.sleep(0.1)
    stats = pool.stats()["cpu"]
    assert stats["running"] == "f0" and stats["queued"] == 3
    outs = [await first] + [await t for t in rest]
    assert all(o.ok for o in outs)
    counters = [o.result["jobs_started"] for o in outs[1:] if o.result]
    assert counters == sorted(counters) and len(set(counters)) == 3


async def test_cancel_a_queued_job(pool: WorkerPool) -> None:
    running = asyncio.create_task(pool.submit("cpu", job("c0", "sleep", seconds=0.5), JOB_TIMEOUT))
    queued = asyncio.create_task(pool.submit("cpu", job("c1", "echo"), JOB_TIMEOUT))
    await asyncio.sleep(0.05)
    pid = pool.stats()["cpu"]["pid"]
    assert pool.cancel("c1") and not pool.cancel("nope")
    assert (await queued).reason is FailureReason.CANCELLED
    assert (await running).ok and pool.stats()["cpu"]["pid"] == pid  # the worker was not touched


async def test_pool_stop_cancels_jobs_and_leaves_no_process(victim: DeviceWorker) -> None:
    pool = WorkerPool([CPU], max_queue=2)
    pool.workers["cpu"] = victim  # reuse a started worker (a torch import saved): this test is about stopping
    await pool.start()
    pid = pool.stats()["cpu"]["pid"]
    running = asyncio.create_task(pool.submit("cpu", job("s0", "sleep", seconds=60), JOB_TIMEOUT))
    queued = asyncio.create_task(pool.submit("cpu", job("s1", "echo"), JOB_TIMEOUT))
    while pool.stats()["cpu"]["running"] != "s0":
        await asyncio.sleep(0.01)
    await pool.stop()
    assert (await running).reason is FailureReason.CANCELLED
    assert (await queued).reason is FailureReason.CANCELLED
    assert gone(pid) and pool.stats()["cpu"]["pid"] is None
    with pytest.raises(RuntimeError):
        await pool.submit("cpu", job("late", "echo"), JOB_TIMEOUT)


async def _until_parked(w: DeviceWorker, limit: float = 60.0) -> None:
    for _ in range(int(limit / 0.1)):
        if w.parked:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not parked after {limit:.0f} s")


async def test_an_idle_worker_is_parked_and_the_next_job_starts_it_again() -> None:
    """An idle node gives its memory back: after idle_stop seconds without a job the worker exits; a job
    started later brings it back (not counted as a restart), and a job longer than idle_stop is never cut."""
    w = DeviceWorker(CPU, idle_stop=1.0)
    try:
        await w.start()
        first = w.pid
        await _until_parked(w)
        assert w.pid is None and gone(first) and w.restarts == 0

        out = await w.run(job("after-park", "sleep", seconds=2.5), JOB_TIMEOUT)  # longer than idle_stop
        assert out.ok and out.pid not in (None, first)
        assert not w.parked and w.restarts == 0 and w.pid == out.pid  # still up: the clock restarts at the end

        await _until_parked(w)
        assert gone(out.pid) and w.restarts == 0
    finally:
        await w.stop()
    assert w.pid is None


def test_a_negative_idle_stop_is_refused() -> None:
    with pytest.raises(ValueError, match="idle_stop"):
        DeviceWorker(CPU, idle_stop=-1)


@pytest.mark.skipif(not os.path.exists("/dev/nvidiactl"), reason="needs a CUDA device")
async def test_cuda_worker_pins_its_device_and_caps_memory() -> None:
    gpu = DeviceWorker(DeviceSpec("cuda:0", 0, memory_fraction=0.05))
    try:
        await gpu.start()
        info = await gpu.run(job("g-info", "torch_info"), JOB_TIMEOUT)
        assert info.ok and info.result and info.result["cuda_visible_devices"] == "0"
        assert info.result["device"] == "cuda:0" and info.result["cuda_available"]
        assert (await gpu.run(job("g-mm", "matmul", n=1024), JOB_TIMEOUT)).ok
        oom = await gpu.run(job("g-oom", "allocate", mib=64 << 10), JOB_TIMEOUT)
        assert oom.reason is FailureReason.OUT_OF_MEMORY, oom
        assert (await gpu.run(job("g-after", "allocate", mib=256), JOB_TIMEOUT)).ok
    finally:
        await gpu.stop()
