"""Malformed HTTP to every route of the real node's API (node/api/server.py): wrong methods, paths, query
strings, headers, signed-request headers, bodies and content types through a real client, and broken HTTP
written straight to a socket. The node must answer 4xx with a reason (a JSON ``error``/``detail`` or an
offer's ``code``/``reason``; the bare status line where aiohttp refuses the request before any route), never
5xx, and keep answering (the ``healthy`` fixture checks it, and that nothing was logged as an error).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.api.auth import sign_result_request
from node.api.server import MAX_OFFER_BYTES
from tests.fuzz.events import Feeder
from tests.fuzz.offers import digest, keys, sign
from tests.fuzz.profile import fuzz
from tests.fuzz.stack import PARAMS, Stack
from tests.fuzz.tally import TALLY

ROUTES = ["/healthz", "/readyz", "/metrics", "/status", "/jobs", "/jobs/{id}", "/offers", "/results/{id}"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]
_TOKEN = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
_HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


def _ids() -> st.SearchStrategy[str]:
    hex_id = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
    return st.one_of(hex_id, hex_id.map(str.upper), hex_id.map(lambda s: s[:-1]), hex_id.map(lambda s: s + "0"),
                     st.text(max_size=80).map(lambda s: quote(s, safe="")), st.sampled_from(
                         ["", "..", "%2e%2e", "%00", "0x", "-1", "0x" + "g" * 64, "x" * 5000]))


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:  # no route at all
        segs = draw(st.lists(st.text(max_size=20).map(lambda s: quote(s, safe="")), max_size=4))
        path = "/" + "/".join(segs)
    else:
        path = draw(st.sampled_from(ROUTES)).replace("{id}", draw(_ids()))
        path += draw(st.sampled_from(["", "", "/", "//", "/extra", "%20", ";x=1"]))
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.sampled_from(["state", "limit", "x", ""]) | st.text(max_size=8),
                                        st.text(max_size=30) | st.sampled_from(
                                            ["0", "1001", "-1", "99999", "1e3", "validated", "bogus", "%"])),
                              max_size=4))
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    return path


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    names = ["Content-Type", "Accept", "Authorization", "X-Gpunode-Timestamp", "X-Gpunode-Signature",
             "Content-Encoding", "Accept-Encoding", "Cookie", "Origin", "X-Forwarded-For", "Range", "Expect"]
    out = {}
    for name in draw(st.lists(st.sampled_from(names) | _TOKEN.map(lambda s: "X-" + s), max_size=5, unique=True)):
        out[name] = draw(_HEADER_VALUE | st.sampled_from(
            ["application/json", "text/plain", "multipart/form-data; boundary=x", "gzip", "deflate", "br",
             "Bearer x", "0", "99999999999", "0x" + "11" * 65, "0x" + "ff" * 65, "bytes=0-1"]))
    return out


def _bodies() -> st.SearchStrategy[bytes | None]:
    return st.one_of(st.none(), st.binary(max_size=2048), st.just(b"{}"), st.just(b'{"offer": 1}'),
                     st.integers(MAX_OFFER_BYTES - 8, MAX_OFFER_BYTES + 4096).map(lambda n: b"{" * 4 + b"x" * n))


def check_answer(status: int, body: bytes, method: str, path: str, content_type: str = "application/json") -> None:
    where = f"{method} {path[:120]} -> {status} {body[:200]!r}"
    assert status < 500, where
    if status < 400 or method == "HEAD":
        return
    if not content_type.startswith("application/json"):  # refused by aiohttp's parser before any route
        assert status in (400, 417) and body.strip(), where  # 417: an Expect header aiohttp does not know
        return
    reply = json.loads(body)  # every refusal that reached the app is JSON
    assert isinstance(reply, dict), where
    if "error" in reply:
        assert isinstance(reply["error"], str) and reply["error"] and str(reply.get("detail", "")).strip(), where
    else:  # an offer refused by the node's checks
        assert reply.get("accepted") is False and reply.get("code") and str(reply.get("reason", "")).strip(), where


@fuzz(ci=250, long=4000)
@given(method=st.sampled_from(METHODS) | _TOKEN.map(str.upper), path=paths(), hdrs=headers(), body=_bodies())
def test_malformed_requests_get_a_4xx_with_a_reason(healthy: Stack, method: str, path: str,
                                                    hdrs: dict[str, str], body: bytes | None) -> None:
    conn = healthy.connection()
    try:
        try:
            conn.request(method, path, body=body, headers=hdrs)
        except (ValueError, http.client.InvalidURL):  # http.client refuses to send it: nothing to test
            return
        try:
            resp = conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # aiohttp answers a too-large body early and closes; the client may see the close first
            assert body is not None and len(body) > MAX_OFFER_BYTES, f"{method} {path}: connection dropped"
            TALLY.http["client: closed on a large body"] += 1
            return
        data = resp.read()
    finally:
        conn.close()
    check_answer(resp.status, data, method, path, resp.getheader("Content-Type", ""))
    TALLY.http[f"client: HTTP {resp.status}"] += 1


@pytest.fixture(scope="module")
def known_jobs(stack: Stack) -> list[str]:
    """Jobs in the node's journal (rejected: a forged OfferPosted each), so a download request for them gets
    past "unknown job" to the signer and result checks."""
    feeder, t = Feeder(stack), stack.target()
    jobs = []
    for n in range(3):
        offer = stack.offer()
        feeder.deliver(feeder.event(offer, PARAMS, sign(offer, f"0x{n + 7:064x}", t.domain), digest(offer, t.domain)))
        jobs.append("0x" + digest(offer, t.domain).hex())
    return jobs


@pytest.mark.parametrize("mode", ["junk", "foreign", "stale", "requester"])
@fuzz(ci=10, long=150)
@given(key=keys,
       ts=st.one_of(st.none(), st.integers(-(2**40), 2**45).map(str), _HEADER_VALUE),
       sig=st.one_of(st.none(), st.binary(min_size=0, max_size=70).map(lambda b: "0x" + b.hex()), _HEADER_VALUE),
       age=st.integers(121, 10**9), pick=st.integers(0, 10**6))
def test_result_downloads_with_bad_signatures_are_refused(healthy: Stack, known_jobs: list[str], mode: str, key: str,
                                                          ts: str | None, sig: str | None, age: int, pick: int) -> None:
    """GET /results/{id} with junk headers, another key's signature, a stale one, or the requester's own for
    a job that has no result (every fuzzed job is rejected): 401, 403 or 404 with a reason, never a file."""
    job = known_jobs[pick % len(known_jobs)] if pick % 5 else "0x" + f"{pick:064x}"
    if mode == "junk":
        hdrs = {k: v for k, v in (("X-Gpunode-Timestamp", ts), ("X-Gpunode-Signature", sig)) if v is not None}
    else:
        signer = healthy.requester_key if mode == "requester" else key
        when = int(time.time()) - (age if mode == "stale" else 0)
        hdrs = sign_result_request(signer, job, healthy.provider, healthy.chain_id, when)
    status, body, _ = healthy.request("GET", f"/results/{job}", headers=hdrs)
    assert status in (401, 403, 404), (mode, status, body)
    check_answer(status, body, "GET", f"/results/{job}")
    TALLY.http[f"signed download ({mode}): HTTP {status}"] += 1


# ---------------------------------------------------------------------------------------------- raw bytes
RAW = {
    "garbage line": b"GARBAGE\r\n\r\n",
    "http/0.9": b"GET /healthz\r\n\r\n",
    "http/9.9": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "bad header line": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "header too long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "url too long": b"GET /jobs/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "many headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(400)) + b"\r\n",
    "nul bytes": b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
    "control chars in header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "CL and TE": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n",
    "two content-lengths": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "negative content-length": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "non-numeric content-length": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n",
    "bad chunk size": b"POST /offers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunked past the limit": b"POST /offers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                              + b"".join(b"1000\r\n" + b"a" * 4096 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n",
    "declared too large": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{}" % (MAX_OFFER_BYTES + 1),
    "gzip that is not": b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\n"
                        b"notgzip!",
    "unknown transfer-encoding": b"POST /offers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n\r\n",
    "http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "tls client hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64,
    "absolute uri": b"GET http://example.invalid/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "lf only": b"GET /status HTTP/1.1\nHost: x\n\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "upgrade websocket": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "pipelined junk": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n\r\nJUNK\r\n\r\n",
}


def raw_exchange(stack: Stack, data: bytes, *, half_close: bool = False, wait: float = 5.0) -> bytes:
    """Writes ``data`` (then ends the write side if ``half_close``: aiohttp then drops the connection without
    an answer) and reads until the server closes, or is quiet for a moment once it has answered."""
    with socket.create_connection((stack.api_host, stack.api_port), timeout=wait) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed mid-send
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                sock.settimeout(0.3)  # a kept-alive connection after a complete answer: stop waiting soon
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def statuses(reply: bytes) -> list[int]:
    return [int(line.split()[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.") and
            len(line.split()) >= 2 and line.split()[1].isdigit()]


@pytest.mark.parametrize("name", sorted(RAW))
def test_broken_http_on_a_socket(healthy: Stack, name: str) -> None:
    reply = raw_exchange(healthy, RAW[name])
    codes = statuses(reply)
    assert all(c < 500 for c in codes), (name, reply[:300])
    if codes and codes[-1] >= 400:  # a refusal says why: a reason phrase at least
        first = next(line for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1."))
        assert len(first.split(b" ", 2)) == 3 and first.split(b" ", 2)[2].strip(), (name, first)
    TALLY.http[f"raw: {'HTTP ' + str(codes[-1]) if codes else 'no answer (closed or silent)'}"] += 1
    TALLY.raw[name] = f"HTTP {codes[-1]}" if codes else "no answer (closed or silent)"


@fuzz(ci=50, long=800)
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST /offers HTTP/1.1\r\n"
                                                              b"Host: x\r\nContent-Length: 100\r\n\r\n"]),
       half_close=st.booleans())
def test_random_bytes_on_a_socket(healthy: Stack, data: bytes, prefix: bytes, half_close: bool) -> None:
    reply = raw_exchange(healthy, prefix + data, half_close=half_close, wait=0.2)
    codes = statuses(reply)
    assert all(c < 500 for c in codes), reply[:300]
    TALLY.http[f"raw random: {'HTTP ' + str(codes[-1]) if codes else 'no answer'}"] += 1


def test_a_short_body_then_close_and_slow_clients_do_not_stall_the_node(healthy: Stack) -> None:
    """A body shorter than its Content-Length with the connection then closed, and many clients that send
    half a request and stop: the node must neither fail the request with a 5xx nor stop answering others."""
    lying = b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"offer\":"
    assert all(c < 500 for c in statuses(raw_exchange(healthy, lying)))
    slow = [socket.create_connection((healthy.api_host, healthy.api_port), timeout=5) for _ in range(50)]
    try:
        for i, s in enumerate(slow):
            s.sendall(b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{" if i % 2
                      else b"GET /status HTTP/1.1\r\nHo")
        for _ in range(20):
            assert healthy.alive()
    finally:
        for s in slow:
            s.close()
    TALLY.http["raw: short body + 50 stalled clients"] += 1
