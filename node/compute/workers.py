"""Device workers: untrusted PyTorch jobs run in long-lived child processes, one per device, never in the node.

Why processes: a job can segfault, leak, hang or exhaust memory; in a child that costs one worker, which is killed
and replaced, instead of the node. Why long-lived: importing torch and creating a CUDA context take seconds, so each
worker pays that once and then serves jobs one at a time. Why spawn: forking after torch/CUDA is unsafe, and a fresh
interpreter lets the child pin its device (``CUDA_VISIBLE_DEVICES``) before torch loads.

Why park: a warm worker holds torch (about 200 MB of RAM) and, on a GPU, a CUDA context in the owner's VRAM,
which an idle node should not keep. After ``idle_stop`` seconds without a job the worker exits; the next job
starts it again and pays the start-up once. A parked worker is not a failure: it is neither up nor restarted.

The event loop never blocks on a worker: pipe I/O runs in a small per-worker thread pool, and process death is
watched with ``loop.add_reader`` on a pidfd. Replies are JSON (see ``worker_main``): the node never unpickles
anything a job could have written.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from node.compute import worker_main
from node.compute.worker_main import ProtocolError, check_job, describe_exit, signal_group, truncate

log = logging.getLogger(__name__)


class FailureReason(enum.StrEnum):
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    OUT_OF_MEMORY = "out_of_memory"
    ERROR = "error"
    CANCELLED = "cancelled"
    QUEUE_FULL = "queue_full"
    WORKER_START_FAILED = "worker_start_failed"


@dataclass(frozen=True)
class DeviceSpec:
    """One device and its caps. ``index`` is the host's CUDA ordinal (None for the CPU device).

    ``cpu_memory_mib`` (CPU workers only) is enforced with RLIMIT_AS, which counts *virtual* memory: the worker
    measures its own size after importing torch and warming its thread pool and caps it at that plus this budget.
    Thread stacks and malloc arenas a job creates count too, so keep the budget generous."""

    name: str
    index: int | None
    memory_fraction: float = 0.9
    cpu_memory_mib: int = 4096
    threads: int | None = None


@dataclass(frozen=True)
class JobRequest:
    """``target`` ("package.module:function") is imported in the worker and called as
    ``fn(device=<torch device string>, **kwargs)``; it must return a JSON-able dict."""

    job_id: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    ok: bool
    result: dict[str, Any] | None
    reason: FailureReason | None
    detail: str
    seconds: float
    pid: int | None = None  # the worker process that ran (or was running) the job


class WorkerStartError(RuntimeError):
    """The worker could not be started (torch import failed, no CUDA, start timeout...)."""


class _WorkerDied(Exception):
    """The child exited (or its pipe broke) without replying."""


def validate_request(request: JobRequest, timeout: float = 1.0) -> None:
    """Raise ValueError for a request that must not reach a worker (see ``worker_main.check_job``)."""
    check_job(request.target, request.kwargs)
    if not timeout > 0:
        raise ValueError("timeout must be positive")


def make_outcome(job_id: str, reason: FailureReason | None, detail: str = "", started: float | None = None,
                 result: dict[str, Any] | None = None, pid: int | None = None) -> JobOutcome:
    seconds = time.monotonic() - started if started is not None else 0.0
    return JobOutcome(job_id, reason is None, result, reason, detail, seconds, pid)


@dataclass(eq=False)
class _Child:
    proc: BaseProcess
    conn: Connection
    died: asyncio.Future[None]  # resolved by a reader on the child's exit fd
    on_exit: Callable[[], None]  # resolves ``died`` and releases the exit fd; idempotent
    io: asyncio.Future[dict[str, Any]] | None = None  # the pipe exchange in flight, if any


class DeviceWorker:
    """One worker process for one device. ``run`` serialises jobs (FIFO); a job that times out, crashes, is cancelled
    or leaves the device unusable gets its worker killed and replaced in the background (the next job waits).
    With ``idle_stop`` > 0 the worker is parked (stopped) after that many seconds without a job."""

    def __init__(self, spec: DeviceSpec, *, start_timeout: float = 300.0, stop_timeout: float = 5.0,
                 kill_grace: float = 1.0, max_result_bytes: int = 64 << 20, idle_stop: float = 0.0) -> None:
        if idle_stop < 0:
            raise ValueError("idle_stop must not be negative")
        self.spec = spec
        self.start_timeout, self.stop_timeout, self.kill_grace = start_timeout, stop_timeout, kill_grace
        self.idle_stop = idle_stop
        self.parked = False  # stopped for idleness; the next job starts it (not counted as a restart)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._parking: asyncio.Task[None] | None = None
        self._last_used = time.monotonic()
        self.max_result_bytes = max_result_bytes
        self.jobs_done = self.restarts = 0
        self.info: dict[str, Any] = {}  # what the child reported when ready (pid, torch version, memory limit)
        self._child: _Child | None = None
        self._lock = asyncio.Lock()  # FIFO: waiters are served in arrival order
        self._starting: asyncio.Task[None] | None = None
        self.current_job: str | None = None  # read-only for callers
        self._cancel_requested = self._stopped = self._ever_started = False
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child else None

    async def start(self) -> None:
        """Start the worker and wait until torch is imported and the caps applied. Raises WorkerStartError."""
        self._stopped = False
        await self._ensure_started()
        self._used()

    async def run(self, request: JobRequest, timeout: float) -> JobOutcome:
        """Run one job; ``timeout`` counts from when a ready worker has it (not the wait for the lock or a restart).
        Job failures come back as outcomes, never exceptions; raises ValueError for a bad request or timeout, and
        CancelledError if the caller is cancelled (a started job's worker is killed and replaced)."""
        validate_request(request, timeout)
        try:
            async with self._lock:
                return await self._run_locked(request, timeout)
        finally:
            self._used()

    # -- parking an idle worker --------------------------------------------------------------------------------

    def _used(self) -> None:
        """Restarts the idle clock: the worker is parked ``idle_stop`` seconds after the last job ended."""
        self._last_used = time.monotonic()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.idle_stop > 0 and not self._stopped:
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle_stop, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._stopped or self._parking is not None or self._lock.locked():
            return  # a job runs or waits: it re-arms the clock when it ends
        self._parking = asyncio.create_task(self._park())
        self._parking.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _park(self) -> None:
        try:
            async with self._lock:
                child = self._child
                idle_for = time.monotonic() - self._last_used
                if self._stopped or child is None or child.died.done() or idle_for < self.idle_stop:
                    return  # stopped, already gone (restarted when needed), or used meanwhile
                await self._stop_child()
                self.parked = True
                log.info("worker for %s parked after %.0f s without a job; the next job starts it again",
                         self.spec.name, idle_for)
        finally:
            self._parking = None

    def cancel(self, job_id: str) -> bool:
        """Kill the worker if it is running ``job_id``; that ``run`` then returns a CANCELLED outcome."""
        if self.current_job != job_id or self._child is None:
            return False
        self._cancel_requested = True
        signal_group(self._child.proc, signal.SIGKILL)
        return True

    async def stop(self) -> None:
        """Ask the worker to exit, wait ``stop_timeout``, then kill it. A running job ends CANCELLED."""
        self._stopped = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        if self.current_job is not None:
            self.cancel(self.current_job)
        async with self._lock:
            await self._stop_child()

    async def _stop_child(self) -> None:
        """Asks the idle child to exit, waits ``stop_timeout``, then reaps it (killed if it has not gone).
        Called with the lock held, so no job is running."""
        child = self._child
        if child is not None and not child.died.done():
            with contextlib.suppress(OSError):
                child.conn.send(("stop",))  # tiny, and the idle child is reading: does not block
            await asyncio.wait({child.died}, timeout=self.stop_timeout)
        await self._reap()

    async def _run_locked(self, request: JobRequest, timeout: float) -> JobOutcome:
        job_id = request.job_id
        if self._stopped:
            return make_outcome(job_id, FailureReason.WORKER_START_FAILED, "worker is stopped")
        try:
            await self._ensure_started()
        except WorkerStartError as exc:
            return make_outcome(job_id, FailureReason.WORKER_START_FAILED, truncate(str(exc)))
        assert self._child is not None
        started, pid, proc = time.monotonic(), self.pid, self._child.proc  # the clock starts once a worker is ready
        self._seq += 1
        self.current_job, self._cancel_requested = job_id, False
        try:
            reply = await self._wait_reply(("job", self._seq, job_id, request.target, request.kwargs), timeout)
        except asyncio.CancelledError:
            signal_group(proc, signal.SIGKILL)
            self._restart_in_background()
            raise
        except (_WorkerDied, ProtocolError) as exc:
            code = await self._reap()
            self._restart_in_background()
            if self._cancel_requested:
                return make_outcome(job_id, FailureReason.CANCELLED, "job cancelled", started, pid=pid)
            if isinstance(exc, ProtocolError):
                return make_outcome(job_id, FailureReason.ERROR, str(exc), started, pid=pid)
            return make_outcome(job_id, FailureReason.CRASHED, f"worker {pid} {describe_exit(code)}", started, pid=pid)
        finally:
            self.current_job = None
            self.jobs_done += 1
        if reply is None or reply.get("healthy") is not True:  # timeout, or device state unusable (child exits)
            await self._reap(grace=self.kill_grace)
            self._restart_in_background()
        if reply is None:
            detail = f"no result within {timeout:g}s; worker {pid} killed"
            return make_outcome(job_id, FailureReason.TIMEOUT, detail, started, pid=pid)
        kind, result = reply["kind"], reply.get("result")
        if kind == "ok" and isinstance(result, dict):
            return make_outcome(job_id, None, "", started, result=result, pid=pid)
        reason = FailureReason.OUT_OF_MEMORY if kind == "oom" else FailureReason.ERROR
        return make_outcome(job_id, reason, truncate(str(reply.get("detail", f"bad reply {kind!r}"))), started, pid=pid)

    async def _wait_reply(self, msg: tuple[Any, ...] | None, timeout: float) -> dict[str, Any] | None:
        """Send ``msg`` (a job, or None to await the start-up report) and wait for the reply. Returns None on
        timeout; raises _WorkerDied or ProtocolError."""
        child = self._child
        assert child is not None
        seq = self._seq if msg is not None else None
        child.io = io = worker_main.in_thread(worker_main.read_reply, child.conn, msg, seq, self.max_result_bytes)
        done, _ = await asyncio.wait({io, child.died}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if io not in done and child.died in done:  # a reply sent just before exiting may still be in the pipe
            done, _ = await asyncio.wait({io}, timeout=0.5)
        if io in done:
            exc = io.exception()
            if isinstance(exc, EOFError | OSError):
                raise _WorkerDied from exc
            return io.result()  # or raises ProtocolError
        if child.died.done():
            raise _WorkerDied
        return None

    async def _ensure_started(self) -> None:
        if self._child is None or self._child.died.done():  # first start, or died while idle (kernel OOM killer?)
            self._restart_in_background()
        task = self._starting
        if task is None:
            return
        try:
            await asyncio.shield(task)  # one start shared by all waiters; a cancelled waiter does not cancel it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise WorkerStartError(f"worker for {self.spec.name} was stopped while starting") from None
            raise
        finally:
            if task.done() and self._starting is task:
                self._starting = None

    def _restart_in_background(self) -> None:
        if self._stopped or self._starting is not None:
            return

        async def respawn() -> None:
            await self._reap()
            self.restarts += self._ever_started and not self.parked
            await self._spawn()
            self._ever_started, self.parked = True, False

        self._starting = asyncio.create_task(respawn())
        self._starting.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _spawn(self) -> None:
        spec = self.spec
        config = {**asdict(spec), "max_result_bytes": self.max_result_bytes}
        try:
            proc, parent_conn = worker_main.spawn(config)
        except OSError as exc:  # fork-exec failed: process or fd limits
            raise WorkerStartError(f"worker for {spec.name} failed to start: {exc!r}") from exc
        self._child = _Child(proc, parent_conn, *worker_main.watch_exit(proc, asyncio.get_running_loop()))
        try:
            reply = await self._wait_reply(None, self.start_timeout)
        except (_WorkerDied, ProtocolError) as exc:
            code = await self._reap()
            raise WorkerStartError(f"worker for {spec.name} {describe_exit(code)} while starting ({exc})") from None
        except BaseException:
            signal_group(proc, signal.SIGKILL)  # cancelled: whoever cancelled us reaps it
            raise
        if reply is None or reply["kind"] != "ready":
            await self._reap(grace=self.kill_grace)
            detail = "timed out" if reply is None else truncate(str(reply.get("detail", reply["kind"])))
            raise WorkerStartError(f"worker for {spec.name} failed to start: {detail}")
        self.info = {k: v for k, v in reply.items() if k != "kind"}

    async def _reap(self, grace: float = 0.0) -> int | None:
        """Make sure the current child is dead (SIGTERM, ``grace``, SIGKILL), collect it, release its pipe."""
        child, self._child = self._child, None
        if child is None:
            return None
        proc, code = child.proc, None
        try:
            if grace > 0 and not child.died.done():
                signal_group(proc, signal.SIGTERM)
                await asyncio.wait({child.died}, timeout=grace)
            signal_group(proc, signal.SIGKILL)
            await asyncio.wait({child.died}, timeout=10.0)
            for _ in range(200):  # a sentinel closes a moment before the child can be waited for
                if proc.exitcode is not None:
                    break
                await asyncio.sleep(0.01)
            worker_main.wake_reader(child.conn)
            if child.io is not None and not child.io.done():
                await asyncio.wait({child.io}, timeout=2.0)
        finally:  # also when cancelled half-way: leave no live process, open pipe or registered fd behind
            signal_group(proc, signal.SIGKILL)
            if child.io is None or child.io.done():
                child.conn.close()  # never while a thread may still be reading it
            code = proc.exitcode
            if code is not None:
                worker_main.LIVE.discard(proc)
                child.on_exit()
                proc.close()
        return code
