"""The download refuses a server that sends more than the result can be, before it fills the disk."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from node.compute.commitment import commit_bytes
from node.requester.download import download_result
from node.requester.errors import RequesterError

JOB = "0x" + "ab" * 32


class _Flood(BaseHTTPRequestHandler):
    size = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\x01" * self.size)

    def log_message(self, *args):
        pass


@pytest.fixture
def flood():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("size", [4096, 4097])
def test_a_result_larger_than_its_cap_is_refused_and_not_kept(flood, tmp_path: Path, size: int) -> None:
    _Flood.size = size
    out = tmp_path / "result.bin"
    url = f"http://127.0.0.1:{flood.server_address[1]}"
    root = commit_bytes(b"\x01" * size).root
    if size <= 4096:
        assert download_result(url, JOB, dict, root, out, timeout=5, max_bytes=4096).read_bytes() == b"\x01" * size
    else:
        with pytest.raises(RequesterError, match="more than 4,096 bytes"):
            download_result(url, JOB, dict, root, out, timeout=5, max_bytes=4096)
        assert list(tmp_path.iterdir()) == []
