"""Regressions found by the fuzzing (tests/fuzz/test_http.py): what a client breaks is answered 4xx and is not
logged as the node's error. Before: a body not in its declared Content-Encoding was answered 500, a client
hanging up mid-body was logged as an API failure, and every unparseable request left an ERROR traceback
from aiohttp in the operator's log (anyone who can reach the port could flood it)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from node.api.server import start_api
from tests.api.fakes import FakeNode


@pytest_asyncio.fixture(loop_scope="function")
async def port(node: FakeNode) -> AsyncIterator[int]:
    runner = await start_api(node, "127.0.0.1", 0)  # start_api, not create_app: the fix is in its runner
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes, *, hang_up: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if hang_up:
            return b""
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.asyncio(loop_scope="function")
async def test_a_body_not_in_its_content_encoding_is_a_400(port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reply = await exchange(port, b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                                 b"Content-Length: 8\r\n\r\nnotgzip!")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply
    assert json.loads(body)["error"] == "bad_body"
    await asyncio.sleep(0.2)  # aiohttp drains the rest of the body after answering: that must not log either
    assert errors(caplog) == []


@pytest.mark.asyncio(loop_scope="function")
async def test_unparseable_requests_are_answered_400_and_logged_at_debug(port: int,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for raw in (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
                b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        assert (await exchange(port, raw)).startswith(b"HTTP/1.0 400"), raw
    assert errors(caplog) == []
    assert any(r.name == "aiohttp.server" and r.levelno == logging.DEBUG for r in caplog.records)


@pytest.mark.asyncio(loop_scope="function")
async def test_a_client_hanging_up_mid_body_is_not_an_api_failure(port: int, node: FakeNode,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await exchange(port, b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"offer\":",
                   hang_up=True)
    await asyncio.sleep(0.3)
    assert errors(caplog) == [] and node.bodies == []
    assert (await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 200")
