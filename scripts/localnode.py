"""A provider node on a local chain, as a real subprocess: provision it, start it, ask it, stop it.

Used by ``make demo`` and the end-to-end tests, so both drive the daemon exactly as an operator would:
a keystore on disk, a config file, ``gpunode run`` in its own process, and the HTTP API to watch it.
Dev-only shortcuts are marked: the keystore uses a cheap KDF so each start unlocks in milliseconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak

from node.chain.devnet import free_port
from node.chain.keys import create_keystore
from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
from node.chain.protocol import Capacity, Protocol
from node.chain.verify import SignedOffer

TOKEN = 10**18
PASSWORD_ENV = "GPUNODE_WALLET_PASSWORD"
DEV_PASSWORD = "devnet-only-password"
REPO = Path(__file__).resolve().parents[1]


def ensure_bench(path: Path) -> dict[str, Any]:
    """A quick benchmark of this machine (what `gpunode bench --quick` writes), made once and reused.

    Callers in several processes (parallel test workers) may share one path: a lock beside it makes the
    first one measure while the others wait, and the file appears whole (written elsewhere, then renamed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            subprocess.run([sys.executable, "-m", "node.cli", "bench", "--quick", "--out", str(partial)], check=True,
                           stdout=subprocess.DEVNULL, cwd=REPO, timeout=600)
            os.replace(partial, path)
    return json.loads(path.read_text())


@dataclass
class LocalNode:
    data_dir: Path
    config: Path
    api: str
    address: str
    payout: str
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    # -- process ---------------------------------------------------------------------------------------
    def start(self, *, wait_ready: bool = True, timeout: float = 180.0) -> LocalNode:
        env = dict(os.environ, **{PASSWORD_ENV: DEV_PASSWORD, "GPUNODE_CONFIG": str(self.config)})
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()
        if wait_ready:
            self.wait(lambda: self.ready(), timeout, "node ready (/readyz)")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}; log:\n{self.tail()}")
        try:
            return bool(self.get("/readyz").get("ready"))
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"node did not stop within {timeout:.0f} s; log:\n{self.tail()}") from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- API -------------------------------------------------------------------------------------------
    def request(self, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.api + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get(self, path: str) -> dict[str, Any]:
        status, body, _ = self.request(path)
        data = json.loads(body)
        if status >= 500 and path != "/readyz":
            raise RuntimeError(f"GET {path}: {status} {data}")
        return data

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {j["job_id"]: j for j in self.get("/jobs?limit=1000")["jobs"]}

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; node log:\n{self.tail()}")
            time.sleep(poll)

    def wait_states(self, job_ids: list[str], states: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        def all_there() -> dict[str, dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}; log:\n{self.tail()}")
            jobs = self.jobs()
            return jobs if all(jobs.get(j, {}).get("state") in states for j in job_ids) else None

        return self.wait(all_there, timeout, f"jobs {[j[:10] for j in job_ids]} to reach {sorted(states)}")


def provision(proto: Protocol, rpc_url: str, deployments: Path, operator_key: str, payout: str, data_dir: Path, *,
              bench: Path, stake: int = 1000 * TOKEN, price_per_gpu_second: str = "0.0001",
              settings: dict[str, dict[str, Any]] | None = None, port: int | None = None) -> LocalNode:
    """Keystore, benchmark, registration, stake and config for a node in ``data_dir`` (not started)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    keystore = data_dir / "key.json"
    if not keystore.exists():  # dev-only: pbkdf2 with few rounds, so unlocking takes no time
        create_keystore(keystore, DEV_PASSWORD, private_key=bytes.fromhex(operator_key.removeprefix("0x")),
                        kdf="pbkdf2", iterations=1000)
    attestation = ensure_bench(bench)
    shutil.copyfile(bench, data_dir / "bench.json")
    operator = proto.account(operator_key).address
    port = port or free_port()
    if not proto.registry.functions.isActive(operator).call():  # the endpoint requesters download results from
        cap = Capacity("cpu (local)", 1, 0, 0, 0, bytes.fromhex(attestation["benchmark_hash"][2:]))
        proto.register(operator_key, payout, cap, price_floor=10**12, endpoint=f"http://127.0.0.1:{port}")
        proto.stake(operator_key, stake)
    cfg: dict[str, dict[str, Any]] = {
        "node": {"data_dir": str(data_dir), "log_level": "info", "shutdown_grace_s": 60.0},
        "chain": {"chain_id": proto.deployment.chain_id, "rpc_urls": [rpc_url], "deployments": str(deployments),
                  "poll_interval_s": 0.2, "confirmations": 1, "start_block": proto.deployment.deploy_block,
                  "bump_after_blocks": 3},
        "wallet": {"keystore": str(keystore), "password_env": PASSWORD_ENV},
        "hardware": {"allow_cpu": True, "cpu_worker_memory_mb": 4096},
        "pricing": {"price_per_gpu_second": price_per_gpu_second},
        "policy": {"allow_private_inputs": True},
        "api": {"host": "127.0.0.1", "port": port},
        "payout": {"address": payout},
    }
    for section, values in (settings or {}).items():
        cfg.setdefault(section, {}).update(values)
    config = data_dir / "config.toml"
    config.write_text(_toml(cfg))
    return LocalNode(data_dir, config, f"http://127.0.0.1:{port}", operator, payout, data_dir / "node.log")


def _toml(cfg: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in cfg.items():
        out.append(f"[{section}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- requester
def offer(proto: Protocol, requester_key: str, params: bytes, *, nonce: int, payment: int = 1 * TOKEN,
          bond: int = 1 * TOKEN, max_duration: int = 3600, expires_in: int = 3600, provider: str = ZERO_ADDRESS,
          workload: str = "matmul-int8/v1", input_uri: str = "", input_hash: bytes = b"\x00" * 32
          ) -> tuple[JobOffer, bytes]:
    """A signed offer; the signature is the requester's EIP-712 signature over it."""
    now = proto.w3.eth.get_block("latest")["timestamp"]
    o = JobOffer(requester=proto.account(requester_key).address, provider=provider, workload=workload_id(workload),
                 paramsHash=keccak(params), inputHash=input_hash, inputURI=input_uri, payment=payment,
                 providerBond=bond, maxDuration=max_duration, expiry=now + expires_in, nonce=nonce)
    return o, proto.sign(requester_key, o)


def envelope(proto: Protocol, o: JobOffer, params: bytes, signature: bytes) -> bytes:
    """The wire form of a direct offer (POST /offers)."""
    signed = SignedOffer(o, signature, proto.deployment.chain_id, proto.deployment.market, params)
    return json.dumps(signed.to_json()).encode()


def job_id(proto: Protocol, o: JobOffer) -> str:
    return "0x" + proto.job_id(o).hex()
