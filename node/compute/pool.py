"""The device workers as one pool: one DeviceWorker per device, a bounded queue per device, cancel by job id.

Why a bound: an offer the node cannot start soon should be turned down early (QUEUE_FULL), not queued for
an hour behind the device's other jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from node.compute.workers import (
    DeviceSpec,
    DeviceWorker,
    FailureReason,
    JobOutcome,
    JobRequest,
    make_outcome,
    validate_request,
)


class WorkerPool:
    """One DeviceWorker per device. Jobs for a device run one at a time in submission order (the worker's FIFO lock
    is the queue); at most ``max_queue`` wait besides the running one, and ``submit`` beyond that returns
    QUEUE_FULL at once, so that the node can turn offers down early."""

    def __init__(self, specs: Iterable[DeviceSpec], *, max_queue: int = 8, **worker_options: Any) -> None:
        specs = list(specs)
        self.workers = {spec.name: DeviceWorker(spec, **worker_options) for spec in specs}
        if len(self.workers) != len(specs):
            raise ValueError("device names must be unique")
        self.max_queue = max_queue
        self._inflight = dict.fromkeys(self.workers, 0)  # queued + running, per device
        self._jobs: dict[str, tuple[str, asyncio.Task[JobOutcome]]] = {}  # job id -> (device, its run task)
        self._open = False

    async def start(self) -> dict[str, str]:
        """Start every worker concurrently. Returns {device: error} for those that failed; their jobs retry the
        start and get WORKER_START_FAILED while it keeps failing."""
        self._open = True
        results = await asyncio.gather(*(w.start() for w in self.workers.values()), return_exceptions=True)
        return {name: str(r) for name, r in zip(self.workers, results, strict=True) if isinstance(r, BaseException)}

    async def submit(self, device_name: str, request: JobRequest, timeout: float) -> JobOutcome:
        """Queue a job and wait for its outcome. Raises ValueError for an unknown device, a bad request or a job id
        already in flight, RuntimeError if the pool is not running."""
        worker = self.workers.get(device_name)
        if worker is None:
            raise ValueError(f"unknown device {device_name!r}")
        validate_request(request, timeout)
        if not self._open:
            raise RuntimeError("pool is not running")
        if request.job_id in self._jobs:
            raise ValueError(f"job {request.job_id!r} is already queued or running")
        if self._inflight[device_name] > self.max_queue:
            detail = f"{device_name}: {self.max_queue} jobs waiting"
            return make_outcome(request.job_id, FailureReason.QUEUE_FULL, detail)
        task = asyncio.create_task(worker.run(request, timeout))  # tasks start, and queue on the lock, in order
        self._jobs[request.job_id] = (device_name, task)
        self._inflight[device_name] += 1
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()  # waiting: leaves the line; running: the worker is killed and replaced
            raise
        finally:
            self._inflight[device_name] -= 1
            del self._jobs[request.job_id]
        if task.cancelled():
            return make_outcome(request.job_id, FailureReason.CANCELLED, "cancelled")
        return task.result()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; its ``submit`` returns a CANCELLED outcome."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        device_name, task = entry
        if not self.workers[device_name].cancel(job_id):  # not running (yet): take it out of the line
            task.cancel()
        return True

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: {"pid": w.pid, "jobs_done": w.jobs_done, "restarts": w.restarts, "running": w.current_job,
                       "queued": max(0, self._inflight[name] - (w.current_job is not None)), "parked": w.parked}
                for name, w in self.workers.items()}

    async def stop(self) -> None:
        """Cancel queued jobs, stop every worker (a running job ends CANCELLED), wait for the submitters' tasks."""
        self._open = False
        for job_id, (device_name, task) in list(self._jobs.items()):
            if self.workers[device_name].current_job != job_id:
                task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers.values()), return_exceptions=True)
        await asyncio.gather(*(task for _, task in self._jobs.values()), return_exceptions=True)
