"""A local chain for development and tests: anvil from the pinned npm package, on a free loopback port.

Everything here is for devnets only; the well-known anvil mnemonic below guards no real money.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from web3 import Web3

from node.chain.contracts import REPO_ROOT

DEV_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_NPM_BIN = REPO_ROOT / "contracts" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


class DevnetError(RuntimeError):
    """anvil is missing or did not come up."""


def find_anvil() -> Path:
    """The anvil binary: $ANVIL_BIN, else the npm package that ``make`` installs, else PATH."""
    candidates = [os.environ.get("ANVIL_BIN"), str(ANVIL_NPM_BIN), shutil.which("anvil")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise DevnetError("anvil not found: run `make` (installs it from npm into contracts/node_modules) "
                      "or set ANVIL_BIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_keys(count: int) -> list[str]:
    """Private keys of anvil's default accounts (derived from the public dev mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.to_0x_hex()
            for i in range(count)]


@dataclass
class Anvil:
    """A running anvil process; use as a context manager so it is always stopped."""

    chain_id: int = 31337
    accounts: int = 10
    block_time: float | None = None
    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Anvil:
        self.port = self.port or free_port()
        cmd = [str(find_anvil()), "--host", self.host, "--port", str(self.port), "--chain-id", str(self.chain_id),
               "--accounts", str(self.accounts), "--mnemonic", DEV_MNEMONIC, "--silent"]
        if self.block_time:
            cmd += ["--block-time", str(self.block_time)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 2}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DevnetError(f"anvil exited at start with code {self.process.returncode}: {' '.join(cmd)}")
            try:
                if w3.eth.chain_id == self.chain_id:
                    return self
            except Exception:  # not listening yet
                time.sleep(0.1)
        self.stop()
        raise DevnetError(f"anvil did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Anvil:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
