"""Input fetching against a real local HTTP server: caps, redirects, timeouts, hashes and the store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.compute.inputs import NO_INPUT_HASH, InputError, InputFailure, fetch_input, stored_path

GOOD = b"input bytes \x00\x01\x02" * 1000
GOOD_SHA = hashlib.sha256(GOOD).digest()
CAP = 64 * 1024


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[TestServer, Counter[str]]]:
    hits: Counter[str] = Counter()

    async def good(request: web.Request) -> web.Response:
        return web.Response(body=GOOD)

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no Content-Length: only the streaming cap can stop this
        await resp.prepare(request)
        while True:
            await resp.write(b"x" * 8192)
            hits["endless_chunks"] += 1

    async def big_declared(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (CAP + 1))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=GOOD)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', 0)) + 1}")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        hits[request.path] += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    for path, handler in [("/good", good), ("/endless", endless), ("/big", big_declared), ("/slow", slow),
                          ("/redirect", redirect), ("/loop", loop), ("/missing", missing)]:  # fmt: skip
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server, hits
    finally:
        await server.close()


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


def store_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file())


async def expect(reason: InputFailure, store: Path, uri: str, sha: bytes = GOOD_SHA, **kw: object) -> InputError:
    kw.setdefault("max_bytes", CAP)
    with pytest.raises(InputError) as err:
        await fetch_input(uri, sha, store, **kw)  # type: ignore[arg-type]
    assert err.value.reason is reason, err.value
    assert store_files(store) == []  # failures leave nothing behind, not even partial files
    return err.value


async def test_http_fetch_and_reuse(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        path = await fetch_input(url(server, "/good"), GOOD_SHA, tmp_path, max_bytes=CAP)
        assert path == stored_path(tmp_path, GOOD_SHA) == tmp_path / "sha256" / GOOD_SHA.hex()
        assert path.read_bytes() == GOOD
        again = await fetch_input(url(server, "/good"), GOOD_SHA, tmp_path, max_bytes=CAP)
        assert again == path
        assert hits["/good"] == 1  # the second job was served from the store
        assert store_files(tmp_path) == [path]


async def test_shared_session_and_redirect(tmp_path: Path) -> None:
    async with serve() as (server, hits), aiohttp.ClientSession() as session:
        uri = url(server, "/redirect") + "?to=" + quote(url(server, "/good"), safe="")
        path = await fetch_input(uri, GOOD_SHA, tmp_path, max_bytes=CAP, session=session)
        assert path is not None and path.read_bytes() == GOOD
        assert hits["/redirect"] == 1 and hits["/good"] == 1
        assert not session.closed


async def test_wrong_hash_stores_nothing(tmp_path: Path) -> None:
    async with serve() as (server, _):
        err = await expect(InputFailure.HASH_MISMATCH, tmp_path, url(server, "/good"), sha=bytes(range(32)))
        assert GOOD_SHA.hex() in err.detail


async def test_streamed_oversize_stops_early(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        await expect(InputFailure.TOO_LARGE, tmp_path, url(server, "/endless"))
        await expect(InputFailure.TOO_LARGE, tmp_path, url(server, "/big"))
        await asyncio.sleep(0.05)
        # the client hung up soon after the cap, it did not drain an endless body
        assert hits["endless_chunks"] < 1000


async def test_redirect_to_file_rejected(tmp_path: Path) -> None:
    async with serve() as (server, _):
        uri = url(server, "/redirect") + "?to=" + quote("file:///etc/passwd", safe="")
        await expect(InputFailure.SCHEME_NOT_ALLOWED, tmp_path, uri, allow_file=True)


async def test_redirect_limit(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        err = await expect(InputFailure.FETCH_FAILED, tmp_path, url(server, "/loop"))
        assert "redirects" in err.detail
        assert hits["/loop"] == 6  # the original request plus five redirects


async def test_http_errors(tmp_path: Path) -> None:
    async with serve() as (server, _):
        await expect(InputFailure.FETCH_FAILED, tmp_path, url(server, "/missing"))
        gone = url(server, "/good")
    # the server is closed now: connection refused
    await expect(InputFailure.FETCH_FAILED, tmp_path, gone)


async def test_slow_server_times_out(tmp_path: Path) -> None:
    async with serve() as (server, _):
        loop = asyncio.get_running_loop()
        start = loop.time()
        await expect(InputFailure.TIMEOUT, tmp_path, url(server, "/slow"), timeout_s=0.3)
        assert loop.time() - start < 5


async def test_data_uris(tmp_path: Path) -> None:
    b64 = "data:application/octet-stream;base64," + base64.b64encode(GOOD).decode()
    path = await fetch_input(b64, GOOD_SHA, tmp_path, max_bytes=CAP)
    assert path is not None and path.read_bytes() == GOOD

    text = b"hello, world/\xff"
    pct = "data:," + quote(text, safe="")
    path = await fetch_input(pct, hashlib.sha256(text).digest(), tmp_path / "s2", max_bytes=CAP)
    assert path is not None and path.read_bytes() == text

    await expect(InputFailure.TOO_LARGE, tmp_path / "s3", b64, max_bytes=100)
    await expect(InputFailure.BAD_URI, tmp_path / "s4", "data:;base64,@@@@")
    await expect(InputFailure.BAD_URI, tmp_path / "s5", "data:no-comma")
    await expect(InputFailure.HASH_MISMATCH, tmp_path / "s6", "data:,other")


async def test_file_scheme(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(GOOD)
    store = tmp_path / "store"
    await expect(InputFailure.SCHEME_NOT_ALLOWED, store, src.as_uri())
    path = await fetch_input(src.as_uri(), GOOD_SHA, store, max_bytes=CAP, allow_file=True)
    assert path is not None and path.read_bytes() == GOOD
    await expect(InputFailure.FETCH_FAILED, tmp_path / "s2", (tmp_path / "nope").as_uri(), allow_file=True)
    await expect(InputFailure.TOO_LARGE, tmp_path / "s3", src.as_uri(), allow_file=True, max_bytes=10)
    await expect(InputFailure.BAD_URI, tmp_path / "s4", "file://otherhost/etc/passwd", allow_file=True)


async def test_local_read_bounded_by_deadline(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer appears
    await expect(InputFailure.TIMEOUT, tmp_path / "store", fifo.as_uri(), allow_file=True, timeout_s=0.3)
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the reader thread


async def test_no_input_and_bad_uris(tmp_path: Path) -> None:
    assert await fetch_input("", NO_INPUT_HASH, tmp_path, max_bytes=CAP) is None
    await expect(InputFailure.BAD_URI, tmp_path, "")
    await expect(InputFailure.BAD_URI, tmp_path, "data:,x", sha=NO_INPUT_HASH)
    await expect(InputFailure.BAD_URI, tmp_path, "no-scheme-here")
    await expect(InputFailure.BAD_URI, tmp_path, "http://exa mple.com/x")
    await expect(InputFailure.BAD_URI, tmp_path, "data:,x", sha=b"short")
    await expect(InputFailure.SCHEME_NOT_ALLOWED, tmp_path, "ftp://example.com/x")
    await expect(InputFailure.SCHEME_NOT_ALLOWED, tmp_path, "gopher://example.com/x")
