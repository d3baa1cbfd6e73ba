"""Supervised tasks: a failing loop is restarted with backoff and counted; the others keep running."""

from __future__ import annotations

import asyncio

from node.supervisor import Supervisor


async def test_a_failing_task_is_restarted_with_growing_delay_and_does_not_stop_the_others():
    restarts: list[str] = []
    sup = Supervisor(on_restart=restarts.append, backoff_s=0.01, max_backoff_s=0.04)
    runs = 0
    steady_ticks = 0
    gaps: list[float] = []
    loop = asyncio.get_running_loop()
    last = loop.time()

    async def flaky() -> None:
        nonlocal runs, last
        runs += 1
        gaps.append(loop.time() - last)
        last = loop.time()
        if runs < 5:
            raise RuntimeError(f"boom {runs}")
        await asyncio.sleep(3600)

    async def steady() -> None:
        nonlocal steady_ticks
        while True:
            steady_ticks += 1
            await asyncio.sleep(0.005)

    sup.spawn("flaky", flaky)
    sup.spawn("steady", steady)
    async with asyncio.timeout(30):  # a supervisor that stops restarting fails here instead of hanging
        while runs < 5:
            await asyncio.sleep(0.01)
    status = sup.status()
    assert status["flaky"] == {"running": True, "restarts": 4, "last_error": "RuntimeError: boom 4"}
    assert status["steady"]["running"] and status["steady"]["restarts"] == 0 and steady_ticks > 5
    assert restarts == ["flaky"] * 4
    assert gaps[4] >= 0.04 - 0.005 and gaps[2] >= 0.02 - 0.005  # 0.01, 0.02, 0.04, 0.04: doubled, capped
    await sup.stop()
    assert not sup.running("flaky") and not sup.running("steady")


async def test_a_task_that_returns_is_done_and_may_be_spawned_again():
    sup = Supervisor()
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1

    sup.spawn("once", once)
    await asyncio.sleep(0.05)
    assert calls == 1 and not sup.running("once") and sup.status()["once"]["restarts"] == 0
    sup.spawn("once", once)
    await asyncio.sleep(0.05)
    assert calls == 2
    await sup.stop()


async def test_stop_ends_tasks_that_swallow_a_cancel_or_turn_it_into_an_error():
    """A loop that catches the first cancel and goes on, and one whose library turns the cancel into an
    ordinary error, both end on stop(); neither is restarted."""
    restarts: list[str] = []
    sup = Supervisor(on_restart=restarts.append, backoff_s=0.01)
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    async def converting() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("request aborted") from None

    sup.spawn("stubborn", stubborn)
    sup.spawn("converting", converting)
    await asyncio.sleep(0.01)
    async with asyncio.timeout(30):
        await sup.stop()
    assert swallowed == 2
    assert restarts == []
    assert not sup.running("stubborn") and not sup.running("converting")
