"""The input server serves exactly the registered files and nothing else; the command line refuses bad
arguments with exit 2 and missing keys with one line and exit 1, before touching a chain."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from node.requester.cli import main
from node.requester.serve import InputServer


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw_get(port: int, path: str, method: str = "GET") -> int:
    """A request with the path exactly as written (urllib would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_serves_registered_files_only(tmp_path: Path) -> None:
    data = tmp_path / "in put.bin"
    data.write_bytes(bytes(range(256)) * 1000)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    with InputServer([data]) as server:
        url = server.url_for(data)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/in%20put.bin")
        assert get(url) == (200, data.read_bytes())
        assert raw_get(server.port, "/in%20put.bin", "HEAD") == 200
        for path in ("/", "/secret.txt", "/../secret.txt", "/%2e%2e/secret.txt", "/in%20put.bin/../secret.txt",
                     f"/{tmp_path}/secret.txt"):
            assert raw_get(server.port, path) == 404, path
        assert raw_get(server.port, "/in%20put.bin", "POST") == 501
        with pytest.raises(KeyError):
            server.url_for(secret)
        data.unlink()  # a file gone after registration is a 404, not a crash
        assert raw_get(server.port, "/in%20put.bin") == 404
    with pytest.raises(OSError):
        get(url)  # stopped: nothing listens any more


def test_directory_mode_and_name_clashes(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    (tmp_path / "d" / "sub" / "a.bin").write_bytes(b"b")
    with InputServer(tmp_path / "d") as server:
        assert sorted(server.files) == ["a.bin", "sub/a.bin"]
        assert get(server.url_for(tmp_path / "d" / "sub" / "a.bin")) == (200, b"b")
        assert get(server.url_for("a.bin")) == (200, b"a")
    with pytest.raises(ValueError, match="two files named"):
        InputServer([tmp_path / "d" / "a.bin", tmp_path / "d" / "sub" / "a.bin"])
    with pytest.raises(FileNotFoundError):
        InputServer([tmp_path / "missing"])


def test_cli_usage_and_key_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--m", "8"]) == 2  # --payment is required
    assert main(["offer", "--payment", "-1", "--seed", "1"]) == 2
    assert main(["follow", "0x12", "--until", "Nope"]) == 2
    assert main(["offer", "--payment", "1", "--duration", "0"]) == 2
    capsys.readouterr()

    key = tmp_path / "key.hex"
    key.write_text("0x" + "zz" * 32)
    assert main(["offer", "--key-file", str(key), "--payment", "1", "--seed", "1", "--rpc", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "gpunode request offer: error: a private key must be 64 hex digits, optionally prefixed with 0x"
    assert "zz" not in "".join(err)

    assert main(["--json", "accept", "0x" + "11" * 32]) == 1
    captured = capsys.readouterr()
    assert "this command signs with the requester's key" in captured.err
    assert '"ok": false' in captured.out
