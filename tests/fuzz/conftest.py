"""Fuzz fixtures: the Hypothesis profile (from GPUNODE_FUZZ), one real node stack per test process, and the
printed totals. See tests/fuzz/stack.py for what the stack is and profile.py for the two profiles."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.e2e.nodenet import shared_bench
from tests.fuzz.profile import LONG, PROFILE, SEED
from tests.fuzz.stack import Stack, start_stack
from tests.fuzz.tally import TALLY


class ErrorLog(logging.Handler):
    """Everything the node logs at ERROR or above while fuzzed: an exception that a route or the intake
    caught and logged is still a crash for the fuzzing's purpose (0 crashes)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def shown(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "") for r in self.records]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        with start_stack(tmp_path_factory.mktemp("fuzz"), bench=shared_bench(tmp_path_factory)) as s:
            s.errors = errors
            yield s
    finally:
        logging.getLogger().removeHandler(errors)


@pytest.fixture
def healthy(stack: Stack) -> Iterator[Stack]:
    """The stack, checked after the test: still answering, no task restarted, nothing logged as an error,
    and nothing the fuzzing sent taken as a job (only the valid controls may be)."""
    before = len(stack.errors.records)
    yield stack
    assert stack.alive(), "the node's API stopped answering"
    assert stack.errors.shown()[before:] == [], "the node logged errors while fuzzed"
    restarts = {s.labels["task"]: s.value for m in stack.node.metrics.task_restarts.collect() for s in m.samples
                if s.name.endswith("_total") and s.value}
    assert restarts == {}, f"supervised tasks restarted: {restarts}"
    taken = {r.job_id: r.state.value for r in stack.taken_jobs() if r.job_id not in stack.controls}
    assert taken == {}, f"fuzz input was taken as a job: {taken}"


def pytest_report_header(config: pytest.Config) -> str:
    return f"fuzz profile: {PROFILE}" + (f" (seed {SEED}; replay with GPUNODE_FUZZ_SEED={SEED})" if LONG else "")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if TALLY.total_offers() or TALLY.http:
        terminalreporter.section(f"fuzz totals ({PROFILE} profile{f', seed {SEED}' if LONG else ''})")
        for line in TALLY.lines():
            terminalreporter.write_line(line)
