"""Supervised long-running tasks: one failing loop is logged, counted and restarted, never the node's end.

Each task is a coroutine factory, so a restart gets a fresh coroutine. The delay after a failure doubles up
to a ceiling and resets once the task has run cleanly for a while, so a loop that fails on every start
does not spin, and one that failed once a day is not held back. A task that returns normally is done (its
work ended, e.g. a drain); only an exception restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("gpunode.supervisor")


@dataclass
class TaskState:
    name: str
    factory: Callable[[], Awaitable[None]]
    task: asyncio.Task | None = None
    restarts: int = 0
    last_error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, *, on_restart: Callable[[str], None] = lambda name: None, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, healthy_after_s: float = 60.0) -> None:
        self._tasks: dict[str, TaskState] = {}
        self._stopping: set[str] = set()
        self._on_restart = on_restart
        self._backoff, self._max_backoff, self._healthy_after = backoff_s, max_backoff_s, healthy_after_s

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks and not self._tasks[name].done:
            raise ValueError(f"task {name!r} is already supervised")
        state = self._tasks[name] = TaskState(name, factory)
        state.task = asyncio.create_task(self._keep(state), name=f"supervised:{name}")

    async def _keep(self, state: TaskState) -> None:
        delay = self._backoff
        while True:
            state.started = time.monotonic()
            try:
                await state.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this is the one place that must catch everything
                if state.name in self._stopping:  # a cancel turned into an error by a library: stop, don't restart
                    state.done = True
                    return
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if time.monotonic() - state.started >= self._healthy_after:
                    delay = self._backoff
                log.error("task %s failed (%s); restart %d in %.0f s", state.name, state.last_error,
                          state.restarts, delay, exc_info=exc)
                self._on_restart(state.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            state.done = True
            return

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"running": bool(s.task and not s.task.done()), "restarts": s.restarts,
                       "last_error": s.last_error} for name, s in self._tasks.items()}

    def running(self, name: str) -> bool:
        s = self._tasks.get(name)
        return bool(s and s.task and not s.task.done())

    async def stop(self, *names: str) -> None:
        """Cancels the named tasks (all when none are named) and waits until they are gone."""
        chosen = [self._tasks[n] for n in names if n in self._tasks] if names else list(self._tasks.values())
        self._stopping.update(s.name for s in chosen)
        await cancel_and_wait([s.task for s in chosen if s.task is not None])


async def cancel_and_wait(tasks: Iterable[asyncio.Task], *, recancel_s: float = 1.0) -> None:
    """Cancels the tasks and waits until every one has ended, cancelling again while any is left.

    One cancel is not always enough: a library may swallow it (or turn it into another error) in the
    middle of a request, and on Python 3.11 a cancel that races the completion of an awaited future can be
    lost. A stop that waited on a single cancel would then hang the node (and its tests) forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
