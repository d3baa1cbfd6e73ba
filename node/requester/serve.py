"""A tiny read-only HTTP server for job inputs, for devnets and trusted networks.

An offer names its input by URL and commits to its SHA-256, so any server will do; this one is for when the
input is a file on the requester's own machine and a public host would be overkill. It serves exactly the
files it was given (a directory means the regular files under it when the server starts) and nothing else:
no listing, no path resolution against the disk (a request path is looked up in a table of registered
names, so ``..`` or a symlink cannot reach another file), GET and HEAD only.

It binds 127.0.0.1 by default: a provider on the same machine (a devnet) can reach it, and the node refuses
loopback and private addresses unless its operator sets ``policy.allow_private_inputs`` (devnets do).
To serve a provider elsewhere, bind a reachable address (``host="0.0.0.0"``) or put the file on a public
host and pass its URL as the input URI instead.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

_READ = 1 << 20


class InputServer:
    """Serves registered files at ``url_for(path)``; a context manager (``start``/``stop`` otherwise).

    ``files``: a directory (every regular file under it, by its relative path) or files (by file name;
    two files with the same name are refused, since their URLs would collide)."""

    def __init__(self, files: Path | str | Iterable[Path | str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._names: dict[str, Path] = {}  # URL path (unquoted, no leading slash) -> file
        self._by_file: dict[Path, str] = {}
        if isinstance(files, str | Path) and Path(files).is_dir():
            root = Path(files).resolve()
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                self._add(path, path.relative_to(root).as_posix())
        else:
            for item in [files] if isinstance(files, str | Path) else files:
                path = Path(item)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: not a file to serve")
                self._add(path.resolve(), path.name)
        if not self._names:
            raise ValueError("no files to serve")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _add(self, path: Path, name: str) -> None:
        if name in self._names:
            raise ValueError(f"two files named {name!r}: their URLs would be the same; serve a directory instead")
        self._names[name] = path
        self._by_file[path] = name

    @property
    def files(self) -> dict[str, Path]:
        return dict(self._names)

    def url_for(self, path: Path | str) -> str:
        """The http URL of a registered file (by its path, or by its name in the server)."""
        if self._server is None:
            raise RuntimeError("the server is not running: start it first (or use it as a context manager)")
        name = self._by_file.get(Path(path).resolve()) if Path(path).exists() else None
        name = name or (str(path) if str(path) in self._names else None)
        if name is None:
            raise KeyError(f"{path} is not served here")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{quote(name)}"

    def start(self) -> InputServer:
        names = self._names

        class Handler(_FileHandler):
            registered = names

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="input-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> InputServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _FileHandler(BaseHTTPRequestHandler):
    registered: dict[str, Path] = {}
    server_version = "gpunode-inputs"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = self.registered.get(unquote(urlsplit(self.path).path).lstrip("/"))
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not served here")
            return
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after the headers depend on it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "file is gone")
            return
        with fh:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
            self.end_headers()
            if body:
                try:
                    shutil.copyfileobj(fh, self.wfile, _READ)
                except (BrokenPipeError, ConnectionResetError):  # the client went away: its problem
                    pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        """Quiet: a served file is not news, and stderr belongs to the command's own progress lines."""
