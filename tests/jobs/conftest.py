"""A real journal in the test's own directory (test_journal.py overrides it with a controllable clock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.jobs.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "node.db")
    yield j
    j.close()
