"""Child side of a device worker (the only place torch runs), the wire protocol both ends share, and the parent's
synchronous process-control helpers (spawn, signal, watch for exit); the asyncio side is ``workers.py``.

This module is the ``multiprocessing`` (spawn) target. It deliberately does not import torch at module level:
``CUDA_VISIBLE_DEVICES`` has to be set before torch (and the CUDA driver) see the process, and the spawn
bootstrap imports this module before calling :func:`main`.

Wire protocol. Parent -> child messages are pickled tuples sent with ``Connection.send``: the parent is trusted and
sends only plain data it has checked (:func:`check_plain`). Child -> parent messages are JSON bytes sent with
``send_bytes`` and read with :func:`read_reply`: the child runs untrusted code that can write anything to the pipe,
and the parent must never unpickle that.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib
import json
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

DETAIL_LIMIT = 2048
JOBS_STARTED = 0  # jobs this process has started; targets may read it (tests use it to prove process reuse)
_SCALARS = (str, int, float, bool, bytes, type(None))
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_MAX_DEPTH = 32


class ProtocolError(Exception):
    """The child broke the wire protocol (oversized or malformed reply): its pipe can no longer be trusted."""


def truncate(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


def check_plain(value: Any, path: str = "kwargs", depth: int = 0) -> None:
    """Raise ValueError unless ``value`` is plain data: str/int/float/bool/bytes/None, lists, str-keyed dicts.
    Exact types only: a subclass could carry a custom ``__reduce__`` into the worker."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {_MAX_DEPTH}")
    if type(value) in _SCALARS:
        return
    if type(value) is list:
        for i, item in enumerate(value):
            check_plain(item, f"{path}[{i}]", depth + 1)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"{path}: dict key {key!r} is not a str")
            check_plain(item, f"{path}[{key!r}]", depth + 1)
    else:
        raise ValueError(f"{path}: {type(value).__name__} is not plain data")


def check_job(target: str, kwargs: Any) -> None:
    """Parent side: raise ValueError for a bad target syntax, non-plain kwargs or a ``device`` kwarg."""
    if type(target) is not str or not _TARGET.match(target):
        raise ValueError(f"target {target!r} is not 'package.module:function'")
    if type(kwargs) is not dict or "device" in kwargs:
        raise ValueError("kwargs must be a dict without 'device' (the worker passes it)")
    check_plain(kwargs)


def read_reply(conn: Connection, msg: tuple[Any, ...] | None, seq: int | None, max_bytes: int) -> dict[str, Any]:
    """Parent side, blocking (run it in a thread): send ``msg``, return the child's reply to ``seq``, skipping
    stale replies. Raises EOFError/OSError when the child is gone, ProtocolError when it misbehaves."""
    if msg is not None:
        conn.send(msg)
    while True:
        try:
            raw = conn.recv_bytes(max_bytes)
        except OSError as exc:
            if "bad message length" in str(exc):
                raise ProtocolError(f"worker reply larger than {max_bytes} bytes") from None
            raise
        try:
            reply = json.loads(raw)
        except ValueError:
            raise ProtocolError("worker sent a reply that is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("kind"), str):
            raise ProtocolError("worker sent a malformed reply")
        if seq is None or reply.get("seq") == seq:
            return reply


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _send(conn: Connection, msg: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(msg, allow_nan=False).encode())


# -- parent side: process control (synchronous helpers for workers.py) -------------------------------------------

LIVE: set[BaseProcess] = set()  # started and not yet reaped


def spawn(config: dict[str, Any]) -> tuple[BaseProcess, Connection]:
    """Start a worker process running :func:`main`. Quick (fork-exec of a fresh interpreter); the slow part, the
    torch import, happens in the child, which reports ``ready`` when done."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=main, args=(child_conn, {**config, "parent_pid": os.getpid()}),
                       name=f"gpunode-worker-{config['name']}")
    proc.start()
    child_conn.close()  # so that the parent sees EOF when the child dies
    LIVE.add(proc)
    return proc, parent_conn


def signal_group(proc: BaseProcess, sig: int) -> None:
    """Signal the worker's process group (it calls setpgrp, so this reaches whatever the job forked), and the worker
    itself if it is not reaped yet (it may not have made its group yet; a reaped pid may belong to someone else)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # type: ignore[arg-type]
    if proc.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)  # type: ignore[arg-type]


def watch_exit(proc: BaseProcess, loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Future[None], Callable[[], None]]:
    """A future resolved (by ``loop.add_reader``, no thread) when ``proc`` exits, and an idempotent ``release`` that
    resolves it and unregisters the fd. It watches a pidfd where the kernel has them (Linux 5.3+): the multiprocessing
    sentinel is a pipe that whatever the job forks inherits, which would hide the worker's death until that grandchild
    exits too."""
    died: asyncio.Future[None] = loop.create_future()
    try:
        fd, owned = os.pidfd_open(proc.pid), True  # type: ignore[arg-type]
    except (AttributeError, OSError):
        fd, owned = proc.sentinel, False

    def release() -> None:
        if not died.done():
            loop.remove_reader(fd)
            if owned:
                os.close(fd)
            died.set_result(None)

    loop.add_reader(fd, release)
    return died, release


def in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run blocking pipe I/O in a daemon thread. Not an executor: its threads are joined at interpreter exit, before
    atexit kills leftover workers, so a node exiting with a job running would hang on the blocked read."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # read by the caller, or abandoned with a child

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def body() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting side
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=body, name="gpunode-worker-io", daemon=True).start()
    return fut


def wake_reader(conn: Connection) -> None:
    """Shut the socket down so that a thread blocked reading it returns, even if a grandchild holds it open."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@atexit.register
def _kill_leftovers() -> None:
    """Workers are not daemonic (a daemonic process may not start DataLoader workers), so multiprocessing joins them
    at exit: a node that exits without stopping its workers must not hang on a busy one."""
    for proc in list(LIVE):
        signal_group(proc, signal.SIGKILL)


# -- child side ----------------------------------------------------------------------------------------------------

def _vm_bytes() -> int:
    """Virtual size of this process (what RLIMIT_AS counts), 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _describe(exc: BaseException) -> str:
    return truncate(f"{type(exc).__name__}: {exc}")


def _is_oom(exc: BaseException, torch: Any) -> bool:
    """MemoryError (Python), torch.OutOfMemoryError (CUDA and, in recent torch, some CPU paths), or the plain
    RuntimeError that the CPU allocator raises when RLIMIT_AS refuses the mapping."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "CUDA out of memory" in str(exc)
    )


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILLed if the node dies (even by SIGKILL), instead of running on as an orphan. The signal
    fires when the parent *thread* that started us exits, so the node starts workers from its event loop."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _setup(config: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """Pin the device, import torch once, apply the caps. Returns (torch, device string, ready info)."""
    is_gpu = config["index"] is not None
    # NVML numbers GPUs in PCI bus order, CUDA fastest-first unless told otherwise: make the index mean the
    # same device in detection, configuration and here.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(config["index"]) if is_gpu else ""
    import torch  # noqa: PLC0415 - must come after CUDA_VISIBLE_DEVICES

    info: dict[str, Any] = {"pid": os.getpid(), "torch": torch.__version__}
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    if is_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(f"CUDA is not available in the worker for {config['name']}")
        torch.cuda.set_per_process_memory_fraction(float(config["memory_fraction"]), 0)
        torch.zeros(1, device="cuda:0")  # create the CUDA context now, not in the first job
        return torch, "cuda:0", info
    # Warm up the intra-op thread pool first: its thread stacks and malloc arenas are virtual memory that
    # RLIMIT_AS counts, so they belong in the baseline, not in the job's budget.
    torch.ones(64, 64) @ torch.ones(64, 64)
    baseline = _vm_bytes()
    cap = int(config["cpu_memory_mib"]) << 20
    if baseline and cap > 0:
        import resource  # noqa: PLC0415 - POSIX only

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = baseline + cap if hard == resource.RLIM_INFINITY else min(baseline + cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # hard too: the job cannot raise it back
        info["vm_limit_bytes"] = limit
    info["vm_baseline_bytes"] = baseline
    return torch, "cpu", info


def _run_job(conn: Connection, msg: tuple[Any, ...], torch: Any, device: str, config: dict[str, Any]) -> bool:
    """Run one job and send its reply. Returns False when the process should exit (device state unusable)."""
    global JOBS_STARTED
    _, seq, job_id, target, kwargs = msg
    JOBS_STARTED += 1
    head: dict[str, Any] = {"seq": seq, "job_id": job_id}
    encoded = ""
    try:
        module_name, _, fn_name = target.partition(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        result = fn(device=device, **kwargs)
        if not isinstance(result, dict):
            raise TypeError(f"target returned {type(result).__name__}, expected a dict")
        encoded = json.dumps(result, allow_nan=False)  # inside the try: a non-JSON result is the job's error
        head["kind"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - anything the job raises is reported, never fatal
        traceback.print_exc(limit=8)  # the trace goes to the worker's stderr (the node's log), not the outcome
        head["kind"] = "oom" if _is_oom(exc, torch) else "error"
        head["detail"] = _describe(exc)
    # Reset state a job may have changed, and give memory back so the next job gets the full cap.
    gc.collect()
    healthy = True
    if device.startswith("cuda"):
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a sticky CUDA error: this context is dead, restart the worker
            healthy = False
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    torch.set_grad_enabled(True)
    head["healthy"] = healthy
    text = json.dumps(head)
    if encoded:  # splice the already-encoded result in rather than encoding a large result twice
        text = text[:-1] + ', "result": ' + encoded + "}"
    data = text.encode()
    if len(data) > config["max_result_bytes"]:  # the parent would refuse it and kill us; say why instead
        head.update(kind="error", detail=f"result is {len(data)} bytes, more than {config['max_result_bytes']}")
        data = json.dumps(head).encode()
    conn.send_bytes(data)
    return healthy


def main(conn: Connection, config: dict[str, Any]) -> None:
    """Worker entry point: set up once, then serve jobs until told to stop or the parent goes away."""
    os.dup2(2, 1)  # job prints go to the node's stderr, never into its stdout
    with contextlib.suppress(OSError):
        os.setpgrp()  # own process group: the parent can kill whatever the job forks, and Ctrl-C skips us
    _die_with_parent(int(config["parent_pid"]))
    try:
        torch, device, info = _setup(config)
    except BaseException as exc:  # noqa: BLE001
        _send(conn, {"kind": "fatal", "detail": _describe(exc)})
        sys.exit(1)
    gc.collect()
    gc.freeze()  # torch's objects are permanent: without this, the gc.collect() after each job takes ~1 s
    _send(conn, {"kind": "ready", **info})
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # parent is gone
        if msg[0] == "stop":  # nothing to clean up that process exit does not: skip the slow interpreter teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if msg[0] == "job":
            if not _run_job(conn, msg, torch, device, config):
                print(f"worker {os.getpid()}: device state unusable after a job; exiting", file=sys.stderr)
                os._exit(3)
