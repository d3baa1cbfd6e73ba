"""Fetch a job's input by URI into a content-addressed store, verified against the on-chain hash.

Why content-addressed: the offer commits to the input's SHA-256, so the hash -- not the URI -- is the
input's identity. Bytes are only ever used after they hashed to the committed value, a second job with
the same input reuses the stored file without touching the network, and a stored file's name is its
proof: files are renamed into place (atomically, after fsync) only once their hash was checked.

URIs are requester-controlled, so the fetcher is defensive: only http(s) and ``data:`` (``file:`` when
the operator allows it), the size cap is enforced while streaming (a lying or missing Content-Length
does not matter), redirects are followed by hand so that they can never leave http(s), and one total
deadline covers the whole fetch.

A requester must not be able to make the node fetch from the owner's LAN, the node's own services or a
cloud metadata endpoint (169.254.169.254) -- server-side request forgery. Unless ``allow_private`` is
set, every hop's host is checked: an IP literal before the request, a host name inside the connector's
resolver (``PublicResolver``), so the address that was checked is the address connected to and a DNS
answer that changes between a check and the connect (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult  # aiohttp >= 3.10

NO_INPUT_HASH = bytes(32)
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not is_private, still not the internet
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # DNS64 answers on IPv6-only networks: judge the IPv4 inside
_PRIVATE_HINT = "private addresses are refused unless allowed (policy.allow_private_inputs)"


class InputFailure(enum.Enum):
    BAD_URI = "bad_uri"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    TOO_LARGE = "too_large"
    HASH_MISMATCH = "hash_mismatch"
    FETCH_FAILED = "fetch_failed"
    TIMEOUT = "timeout"
    PRIVATE_ADDRESS = "private_address"


class InputError(Exception):
    """The input could not be obtained; ``reason`` classifies why (for metrics and job failure codes)."""

    def __init__(self, reason: InputFailure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is ("loopback", "private", ...), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return address_problem(embedded)
    for kind, hit in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                      ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("shared (CGNAT)", ip in _CGNAT), ("private", ip.is_private),
                      ("reserved", ip.is_reserved), ("non-public", not ip.is_global)):
        if hit:
            return kind
    return None


def _address(text: str) -> IPAddress | None:
    """An IP address from a URL host or resolver answer (IPv6 scope "%eth0" allowed), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        try:
            return ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            return None


class BlockedAddressError(OSError):
    """A host name resolved to a non-public address (an OSError, so aiohttp reports it as a DNS failure)."""


class PublicResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the whole answer when any address in it is not public.

    The connector connects only to addresses this returns, so the check and the connection see the same
    answer. Refusing (rather than dropping the bad addresses) keeps the rule simple to explain: a host
    that points anywhere private is not fetched from.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        for answer in answers:
            ip = _address(answer["host"])
            problem = "unparseable" if ip is None else address_problem(ip)
            if problem:
                raise BlockedAddressError(f"{host.rstrip('.')} resolves to {answer['host']}, a {problem} address; "
                                          + _PRIVATE_HINT)
        return answers

    async def close(self) -> None:
        await self.inner.close()


class PublicConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every host name goes through ``PublicResolver``."""

    def __init__(self, resolver: AbstractResolver | None = None, **kwargs: object) -> None:
        super().__init__(resolver=PublicResolver(resolver), **kwargs)  # type: ignore[arg-type]


def input_session(*, allow_private: bool = False, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A session to share between fetches (call inside the event loop; close it when done).

    ``allow_private`` must match the fetches it serves: with False its connector refuses non-public
    addresses. Environment proxies are ignored (``trust_env=False``): a proxy would connect for us,
    out of reach of the check.
    """
    connector = aiohttp.TCPConnector(resolver=resolver) if allow_private else PublicConnector(resolver)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def _check_host(url: str, allow_private: bool, where: str = "") -> None:
    """Refuse a URL whose host is a non-public IP literal (aiohttp connects to literals without resolving).

    Host names are left to ``PublicResolver``, which sees the very answer the connection uses.
    """
    host = urlsplit(url).hostname
    if not host:
        raise InputError(InputFailure.BAD_URI, f"{where}URL without a host: {url}")
    ip = _address(host)
    if ip is None and ":" in host:  # only IPv6 literals have ':' in the host; never let one go unchecked
        raise InputError(InputFailure.BAD_URI, f"{where}invalid IPv6 address in {url}")
    if ip is not None and not allow_private and (problem := address_problem(ip)):
        raise InputError(InputFailure.PRIVATE_ADDRESS, f"{where}{host} is a {problem} address; {_PRIVATE_HINT}")


def stored_path(store_dir: Path, sha256: bytes) -> Path:
    """Where the input with this SHA-256 lives once fetched."""
    return Path(store_dir) / "sha256" / sha256.hex()


class _Sink:
    """Temp file in the store plus a running hash and size cap; committed only when the hash matches."""

    def __init__(self, store_dir: Path, max_bytes: int) -> None:
        self.dir = Path(store_dir) / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".partial-")
        self.file = os.fdopen(fd, "wb")
        self.tmp = Path(name)
        self.hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InputError(InputFailure.TOO_LARGE, f"input exceeds {self.max_bytes} bytes")
        self.hash.update(data)
        self.file.write(data)

    def commit(self, expected: bytes, final: Path) -> Path:
        digest = self.hash.digest()
        if digest != expected:
            raise InputError(InputFailure.HASH_MISMATCH, f"got sha256 {digest.hex()}, expected {expected.hex()}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, final)
        return final

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


async def _fetch_http(url: str, sink: _Sink, session: aiohttp.ClientSession, timeout_s: float,
                      allow_private: bool) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for hop in range(MAX_REDIRECTS + 1):
        where = f"redirect to {url}: " if hop else ""
        _check_host(url, allow_private, where)
        try:
            async with session.get(url, allow_redirects=False, timeout=timeout) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise InputError(InputFailure.FETCH_FAILED, f"redirect {resp.status} without Location")
                    url = urljoin(url, location)
                    scheme = urlsplit(url).scheme.lower()
                    if scheme not in ("http", "https"):
                        raise InputError(InputFailure.SCHEME_NOT_ALLOWED, f"redirect to {scheme!r} URI refused")
                    continue
                if resp.status != 200:
                    raise InputError(InputFailure.FETCH_FAILED, f"HTTP {resp.status} from {url}")
                if resp.content_length is not None and resp.content_length > sink.max_bytes:
                    raise InputError(InputFailure.TOO_LARGE, f"Content-Length {resp.content_length} exceeds cap")
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    sink.write(chunk)
                return
        except TimeoutError:
            raise  # aiohttp's own timeouts subclass both; the caller maps them to TIMEOUT
        except aiohttp.InvalidURL as e:
            raise InputError(InputFailure.BAD_URI, f"invalid URL: {e}") from e
        except aiohttp.ClientError as e:
            blocked = getattr(e, "os_error", None)
            if isinstance(blocked, BlockedAddressError):
                raise InputError(InputFailure.PRIVATE_ADDRESS, f"{where}{blocked}") from e
            raise InputError(InputFailure.FETCH_FAILED, f"{type(e).__name__}: {e}") from e
    raise InputError(InputFailure.FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")


def _decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """RFC 2397 ``data:[<mediatype>][;base64],<data>``."""
    header, sep, payload = uri[len("data:") :].partition(",")
    if not sep:
        raise InputError(InputFailure.BAD_URI, "data: URI without ','")
    if header.lower().endswith(";base64"):
        if len(payload) // 4 * 3 > max_bytes + 3:
            raise InputError(InputFailure.TOO_LARGE, f"input exceeds {max_bytes} bytes")
        try:
            data = base64.b64decode(unquote(payload), validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError(InputFailure.BAD_URI, f"bad base64 in data: URI: {e}") from e
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise InputError(InputFailure.TOO_LARGE, f"input exceeds {max_bytes} bytes")
    return data


def _local_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InputError(InputFailure.BAD_URI, "file: URIs must be file:///absolute/path")
    return unquote(parts.path)


def _copy_file(path: str, sink: _Sink) -> None:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sink.write(chunk)
    except OSError as e:
        raise InputError(InputFailure.FETCH_FAILED, f"cannot read {path}: {e.strerror}") from e


async def fetch_input(
    uri: str,
    expected_sha256: bytes,
    store_dir: Path,
    *,
    max_bytes: int,
    allow_file: bool = False,
    allow_private: bool = False,
    timeout_s: float = 60,
    session: aiohttp.ClientSession | None = None,
) -> Path | None:
    """Return the local path of the input whose SHA-256 is ``expected_sha256``, fetching it if needed.

    An empty URI with the all-zero hash means "this job has no input" and returns ``None``. Raises
    ``InputError``; on any failure nothing is left in the store. ``allow_private`` lets http(s) reach
    loopback, private, link-local and other non-public addresses (a devnet). A shared ``session`` must
    come from ``input_session()`` with the same ``allow_private`` (ValueError otherwise: a caller bug).
    """
    if session is not None and not allow_private and not isinstance(session.connector, PublicConnector):
        raise ValueError("fetch_input(allow_private=False) needs a session from input_session(): "
                         "only its connector checks the addresses host names resolve to")
    if not isinstance(uri, str) or any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise InputError(InputFailure.BAD_URI, "URI must be a string without spaces or control characters")
    if not isinstance(expected_sha256, bytes | bytearray) or len(expected_sha256) != 32:
        raise InputError(InputFailure.BAD_URI, "input hash must be 32 bytes")
    expected = bytes(expected_sha256)
    if not uri:
        if expected == NO_INPUT_HASH:
            return None
        raise InputError(InputFailure.BAD_URI, "input hash given without a URI")
    if expected == NO_INPUT_HASH:
        raise InputError(InputFailure.BAD_URI, "input URI given without a hash")
    scheme = urlsplit(uri).scheme.lower() if ":" in uri else ""
    if scheme not in ("http", "https", "data", "file"):
        if not scheme:
            raise InputError(InputFailure.BAD_URI, "URI has no scheme")
        raise InputError(InputFailure.SCHEME_NOT_ALLOWED, f"scheme {scheme!r} not allowed")
    if scheme == "file" and not allow_file:
        raise InputError(InputFailure.SCHEME_NOT_ALLOWED, "file: URIs are disabled on this node")
    if scheme in ("http", "https"):
        _check_host(uri, allow_private)  # names are checked when resolved: a cached input needs no lookup
    # The policy checks above come first so that a job fails the same way whether or not it is cached.
    final = stored_path(store_dir, expected)
    if final.is_file():  # its hash was verified when it was stored
        return final

    sink = await asyncio.to_thread(_Sink, store_dir, max_bytes)
    client = (session or input_session(allow_private=allow_private)) if scheme in ("http", "https") else None
    try:
        async with asyncio.timeout(timeout_s):  # one deadline for everything, redirects and local reads included
            if client is not None:
                await _fetch_http(uri, sink, client, timeout_s, allow_private)
            elif scheme == "data":
                data = await asyncio.to_thread(_decode_data_uri, uri, max_bytes)
                await asyncio.to_thread(sink.write, data)
            else:
                await asyncio.to_thread(_copy_file, _local_path(uri), sink)
            return await asyncio.to_thread(sink.commit, expected, final)
    except TimeoutError as e:
        raise InputError(InputFailure.TIMEOUT, f"input not fetched within {timeout_s} s") from e
    finally:
        if client is not None and client is not session:
            await client.close()
        await asyncio.to_thread(sink.discard)
