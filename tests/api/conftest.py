from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from node.api.server import create_app
from tests.api.fakes import FakeNode


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path)
    try:
        yield fake
    finally:
        fake.journal.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_750_000_000.0)


@pytest_asyncio.fixture(loop_scope="function")
async def client(node: FakeNode, clock: Clock) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(node, clock=clock), host="127.0.0.1", port=0)) as c:
        yield c
