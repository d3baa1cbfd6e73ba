"""A loopback TCP proxy between the node and its RPC endpoint, so a test can take the RPC away.

The node's ``rpc_urls`` point here, the proxy forwards to anvil. Three modes, switched at any time:

- ``PASS``: bytes flow both ways.
- ``REFUSE``: the listening socket is closed, so a new connection gets ECONNREFUSED at once, and every open
  connection is reset. This is an RPC provider that is down: the client fails fast and retries.
- ``BLACKHOLE``: the listening socket stays open and accepts, but nothing is forwarded in either direction,
  and open connections go silent instead of closing. This is the nastier outage: a network path that
  swallows packets, where only the client's own timeouts help. A connection silenced once stays silent
  (half a request may have been swallowed); leaving BLACKHOLE closes those connections.

Why not iptables or a fault-injecting library: a test must run unprivileged on any machine, and a proxy in
the test's own process lets the harness switch modes at the exact moment it chose (seeded), and count
what happened. Each connection is two threads copying bytes; RPC traffic from one node is a few
connections, so threads are the simplest thing that works.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
from dataclasses import dataclass, field


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


@dataclass
class ProxyStats:
    connections: int = 0  # accepted and forwarded (in PASS)
    refused: int = 0  # connections reset when REFUSE began
    swallowed: int = 0  # connections accepted in BLACKHOLE (never answered)
    mode_changes: list[tuple[Mode, Mode]] = field(default_factory=list)


class RpcProxy:
    """``RpcProxy(upstream_port).start()``; ``url`` is what the node is given; ``set_mode(Mode.X)``."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.mode = Mode.PASS
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()  # every open socket (both sides), so a mode change can cut them
        self._silenced: set[socket.socket] = set()  # sockets of connections caught by BLACKHOLE
        self._accept_thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> RpcProxy:
        self._listen()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_listening()
            conns, self._conns = set(self._conns), set()
        for s in conns:
            _close(s)

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- modes -----------------------------------------------------------------------------------------
    def set_mode(self, mode: Mode) -> None:
        """Switches mode. Leaving PASS cuts the open connections (reset for REFUSE, silenced for BLACKHOLE);
        leaving BLACKHOLE closes the silenced ones."""
        with self._lock:
            old, self.mode = self.mode, mode
            if old is mode:
                return
            self.stats.mode_changes.append((old, mode))
            cut: set[socket.socket] = set()
            if mode is Mode.BLACKHOLE:
                self._silenced |= self._conns
            else:
                cut, self._silenced = set(self._silenced), set()
            if mode is Mode.REFUSE:
                self._stop_listening()
                self.stats.refused += len(self._conns - cut) // 2
                cut |= self._conns
            self._conns -= cut
        for s in cut:
            _reset(s)
        if mode is not Mode.REFUSE:
            self._listen()  # back from REFUSE: listen again on the same port

    # -- internals -------------------------------------------------------------------------------------
    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._closed:
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(64)
            self.port = s.getsockname()[1]
            self._listener = s
            self._accept_thread = threading.Thread(target=self._accept, args=(s,), daemon=True, name="proxy-accept")
            self._accept_thread.start()

    def _stop_listening(self) -> None:
        """Caller holds the lock. shutdown() wakes the accept thread; close() frees the port for REFUSE."""
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            _close(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed (REFUSE or close())
            with self._lock:
                mode = self.mode
                if self._listener is not listener:
                    _reset(client)
                    return
                self._conns.add(client)
                if mode is Mode.BLACKHOLE:
                    self._silenced.add(client)
                    self.stats.swallowed += 1
                    continue  # held open, never read: the client waits for its own timeout
                self.stats.connections += 1
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._drop(client)
                continue
            with self._lock:
                self._conns.add(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True, name="proxy-pipe").start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Copies src -> dst until either side closes. Once silenced, the bytes read are thrown away, so the
        connection looks alive to both ends but carries nothing."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if src in self._silenced:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        if src not in self._silenced:
            self._drop(src)
            self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        _close(s)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.close()


def _reset(s: socket.socket) -> None:
    """Closes with RST instead of FIN (SO_LINGER 0), as a crashed server's kernel would."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(s)


__all__ = ["Mode", "ProxyStats", "RpcProxy"]
