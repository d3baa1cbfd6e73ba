"""One node per data directory: a second one is refused with a message naming the first."""

from __future__ import annotations

import os

import pytest

from node.datadir import DataDir, DataDirLocked


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    first = DataDir(tmp_path / "d")
    first.lock()
    assert (tmp_path / "d" / "node.lock").read_text().strip() == str(os.getpid())
    assert (tmp_path / "d").stat().st_mode & 0o077 == 0
    with pytest.raises(DataDirLocked, match=rf"another gpunode \(pid {os.getpid()}\)"):
        DataDir(tmp_path / "d").lock()
    first.unlock()
    again = DataDir(tmp_path / "d")
    again.lock()
    again.unlock()
