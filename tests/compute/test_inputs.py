"""Input fetching against a real local HTTP server: caps, redirects, timeouts, hashes, the store, and the
refusal of private addresses. The servers listen on loopback, so tests that are about something else pass
allow_private=True; the private-address tests count server hits to prove no request was ever made."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from node.compute import inputs
from node.compute.inputs import (
    NO_INPUT_HASH,
    InputError,
    InputFailure,
    address_problem,
    fetch_input,
    input_session,
    stored_path,
)

GOOD = b"input bytes \x00\x01\x02" * 1000
GOOD_SHA = hashlib.sha256(GOOD).digest()
CAP = 64 * 1024


@asynccontextmanager
async def serve(host: str = "127.0.0.1") -> AsyncIterator[tuple[TestServer, Counter[str]]]:
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
    server = TestServer(app, host=host, port=0)
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
        path = await fetch_input(url(server, "/good"), GOOD_SHA, tmp_path, max_bytes=CAP, allow_private=True)
        assert path == stored_path(tmp_path, GOOD_SHA) == tmp_path / "sha256" / GOOD_SHA.hex()
        assert path.read_bytes() == GOOD
        again = await fetch_input(url(server, "/good"), GOOD_SHA, tmp_path, max_bytes=CAP, allow_private=True)
        assert again == path
        assert hits["/good"] == 1  # the second job was served from the store
        assert store_files(tmp_path) == [path]


async def test_shared_session_and_redirect(tmp_path: Path) -> None:
    async with serve() as (server, hits), input_session(allow_private=True) as session:
        uri = url(server, "/redirect") + "?to=" + quote(url(server, "/good"), safe="")
        path = await fetch_input(uri, GOOD_SHA, tmp_path, max_bytes=CAP, session=session, allow_private=True)
        assert path is not None and path.read_bytes() == GOOD
        assert hits["/redirect"] == 1 and hits["/good"] == 1
        assert not session.closed


async def test_wrong_hash_stores_nothing(tmp_path: Path) -> None:
    async with serve() as (server, _):
        err = await expect(InputFailure.HASH_MISMATCH, tmp_path, url(server, "/good"), sha=bytes(range(32)),
                           allow_private=True)
        assert GOOD_SHA.hex() in err.detail


async def test_streamed_oversize_stops_early(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        await expect(InputFailure.TOO_LARGE, tmp_path, url(server, "/endless"), allow_private=True)
        await expect(InputFailure.TOO_LARGE, tmp_path, url(server, "/big"), allow_private=True)
        await asyncio.sleep(0.05)
        # the client hung up soon after the cap, it did not drain an endless body
        assert hits["endless_chunks"] < 1000


async def test_redirect_to_file_rejected(tmp_path: Path) -> None:
    async with serve() as (server, _):
        uri = url(server, "/redirect") + "?to=" + quote("file:///etc/passwd", safe="")
        await expect(InputFailure.SCHEME_NOT_ALLOWED, tmp_path, uri, allow_file=True, allow_private=True)


async def test_redirect_limit(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        err = await expect(InputFailure.FETCH_FAILED, tmp_path, url(server, "/loop"), allow_private=True)
        assert "redirects" in err.detail
        assert hits["/loop"] == 6  # the original request plus five redirects


async def test_http_errors(tmp_path: Path) -> None:
    async with serve() as (server, _):
        await expect(InputFailure.FETCH_FAILED, tmp_path, url(server, "/missing"), allow_private=True)
        gone = url(server, "/good")
    # the server is closed now: connection refused
    await expect(InputFailure.FETCH_FAILED, tmp_path, gone, allow_private=True)


async def test_slow_server_times_out(tmp_path: Path) -> None:
    async with serve() as (server, _):
        loop = asyncio.get_running_loop()
        start = loop.time()
        await expect(InputFailure.TIMEOUT, tmp_path, url(server, "/slow"), timeout_s=0.3, allow_private=True)
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


# --- private addresses ---


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("fc00::1", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"), ("2002:a00:1::1", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
    ("64:ff9b::808:808", None),  # DNS64 answer for a public IPv4 host on an IPv6-only network
])
def test_address_classification(address: str, kind: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == kind


async def test_private_hosts_refused_before_any_request(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        port = server.port
        cases = [
            (url(server, "/good"), "127.0.0.1 is a loopback address"),
            (f"http://[::1]:{port}/good", "::1 is a loopback address"),
            (f"http://[::ffff:127.0.0.1]:{port}/good", "loopback"),
            (f"http://localhost:{port}/good", "localhost resolves to 127.0.0.1, a loopback address"),
            # nothing listens at these: were they tried, the fetch would end in TIMEOUT or FETCH_FAILED
            ("http://10.0.0.7/input.bin", "10.0.0.7 is a private address"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
            ("https://100.64.0.1/x", "shared (CGNAT)"),
        ]
        for uri, detail in cases:
            err = await expect(InputFailure.PRIVATE_ADDRESS, tmp_path, uri, timeout_s=3)
            assert detail in err.detail, (uri, err.detail)
            assert "allow_private_inputs" in err.detail
        assert sum(hits.values()) == 0


async def test_allow_private_reaches_a_local_server_by_name(tmp_path: Path) -> None:
    async with serve() as (server, hits):
        uri = f"http://localhost:{server.port}/good"
        path = await fetch_input(uri, GOOD_SHA, tmp_path, max_bytes=CAP, allow_private=True)
        assert path is not None and path.read_bytes() == GOOD and hits["/good"] == 1


class NamesResolver(AbstractResolver):
    """DNS answers for made-up names: the seam aiohttp itself offers, standing in for real DNS."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.names.get(host.rstrip("."))
        if address is None:
            raise OSError(f"unknown test name {host}")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@pytest.fixture
def loopback_1_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 is a public address, so a local server can be the allowed first hop of a redirect.

    Only the classification of that one address changes; the checks, the resolver and the connections are
    the real ones. 127.0.0.2 (also loopback, a second local server) stays private.
    """
    real = inputs.address_problem
    monkeypatch.setattr(inputs, "address_problem",
                        lambda ip: None if ip == ipaddress.ip_address("127.0.0.1") else real(ip))


@pytest.mark.usefixtures("loopback_1_is_public")
async def test_redirect_to_a_private_host_is_refused(tmp_path: Path) -> None:
    names = NamesResolver({"public.test": "127.0.0.1", "internal.test": "127.0.0.2"})
    async with serve() as (outside, out_hits), serve("127.0.0.2") as (inside, in_hits):
        async with input_session(resolver=names) as session:
            # the allowed host really is fetched from, by IP literal and by name...
            path = await fetch_input(url(outside, "/good"), GOOD_SHA, tmp_path / "a", max_bytes=CAP,
                                     session=session)
            assert path is not None and path.read_bytes() == GOOD
            named = f"http://public.test:{outside.port}/good"
            assert await fetch_input(named, GOOD_SHA, tmp_path / "b", max_bytes=CAP, session=session)
            assert out_hits["/good"] == 2

            # ...but its redirects to a private host are not: an IP literal, then a name resolving there
            to_literal = url(outside, "/redirect") + "?to=" + quote(url(inside, "/good"), safe="")
            err = await expect(InputFailure.PRIVATE_ADDRESS, tmp_path / "c", to_literal, session=session)
            assert err.detail.startswith(f"redirect to {url(inside, '/good')}: 127.0.0.2 is a loopback")
            internal = f"http://internal.test:{inside.port}/good"
            to_name = f"http://public.test:{outside.port}/redirect?to=" + quote(internal, safe="")
            err = await expect(InputFailure.PRIVATE_ADDRESS, tmp_path / "d", to_name, session=session)
            assert f"redirect to {internal}: internal.test resolves to 127.0.0.2" in err.detail
            assert out_hits["/redirect"] == 2
            assert sum(in_hits.values()) == 0  # the private server never saw a request

        # the same redirect with private inputs allowed goes through to the inside server
        path = await fetch_input(to_literal, GOOD_SHA, tmp_path / "e", max_bytes=CAP, allow_private=True)
        assert path is not None and path.read_bytes() == GOOD and in_hits["/good"] == 1


async def test_shared_session_must_check_addresses(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(ValueError, match="input_session"):
            await fetch_input("http://example.com/x", GOOD_SHA, tmp_path, max_bytes=CAP, session=plain)
    async with input_session(allow_private=True) as permissive:  # a session that cannot check names
        with pytest.raises(ValueError, match="input_session"):
            await fetch_input("http://example.com/x", GOOD_SHA, tmp_path, max_bytes=CAP, session=permissive)


async def test_cached_input_still_refuses_a_private_literal(tmp_path: Path) -> None:
    async with serve() as (server, _):
        await fetch_input(url(server, "/good"), GOOD_SHA, tmp_path, max_bytes=CAP, allow_private=True)
    # the same input, stored now, is not handed out through a URI this node would refuse to fetch
    with pytest.raises(InputError) as err:
        await fetch_input("http://10.0.0.7/input.bin", GOOD_SHA, tmp_path, max_bytes=CAP)
    assert err.value.reason is InputFailure.PRIVATE_ADDRESS
