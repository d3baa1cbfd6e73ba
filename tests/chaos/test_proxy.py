"""The chaos run's RPC proxy does what each mode promises, so an outage in the chaos table is the outage
it says: PASS forwards, REFUSE refuses new connections and resets open ones, BLACKHOLE accepts and
swallows (a silent path), and PASS afterwards works again on the same port."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.chaos.proxy import Mode, RpcProxy


@pytest.fixture
def echo():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _echo(conn):
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(data)
        except OSError:
            pass  # the proxy reset the connection (REFUSE): that is the point


def _roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return sock.recv(4096)


def test_each_mode_does_what_it_says(echo):
    with RpcProxy(echo) as proxy:
        port = proxy.port
        open_conn = socket.create_connection(("127.0.0.1", port), timeout=2)
        assert _roundtrip(open_conn) == b"ping"

        proxy.set_mode(Mode.BLACKHOLE)
        with pytest.raises(TimeoutError):  # the open connection goes silent, it is not closed
            open_conn.settimeout(0.5)
            _roundtrip(open_conn)
        silent = socket.create_connection(("127.0.0.1", port), timeout=2)  # new ones are accepted ...
        silent.settimeout(0.5)
        with pytest.raises(TimeoutError):  # ... and never answered
            _roundtrip(silent)

        proxy.set_mode(Mode.REFUSE)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)

        proxy.set_mode(Mode.PASS)
        assert proxy.port == port
        again = socket.create_connection(("127.0.0.1", port), timeout=2)
        assert _roundtrip(again, b"pong") == b"pong"
        for s in (open_conn, silent, again):
            s.close()
        assert proxy.stats.mode_changes == [(Mode.PASS, Mode.BLACKHOLE), (Mode.BLACKHOLE, Mode.REFUSE),
                                            (Mode.REFUSE, Mode.PASS)]


def test_refuse_resets_open_connections(echo):
    with RpcProxy(echo) as proxy:
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert _roundtrip(conn) == b"ping"
        proxy.set_mode(Mode.REFUSE)
        try:
            reply = _roundtrip(conn)
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
        assert reply == b""  # reset (or closed): never an answer
        conn.close()
