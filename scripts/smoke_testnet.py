"""A full job round trip against any EVM JSON-RPC endpoint (a public testnet, or anvil): the smoke test.

The unit and end-to-end tests run on anvil with the chain clock in their hands; a testnet adds real block
times, a fee market, rate-limited RPCs and keys that must be funded. This script walks the path an operator
and a requester would, with keys from files, and exits 0 only if the provider was paid:

  preflight (chain id, key files, ETH) -> deploy or load the contracts -> tokens (mint or check)
  -> register + stake -> a real `gpunode run` subprocess -> post a matmul-int8 offer addressed to it
  -> it claims, runs, submits -> signed download of the result -> Freivalds check -> accept (or wait out the
  challenge window) -> the node withdraws to the payout address -> the payout's balance grew by payment - fee.

Nothing is sent before every preflight check passed. Exit codes: 0 paid; 1 a step failed; 2 bad usage or a
preflight problem (wrong chain, unfunded key, unreadable key file): nothing was sent; 3 the result failed
verification (it was not accepted). Keys come only from files; the RPC URL is shown without path or query,
where providers put API keys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eth_account import Account
from web3 import Web3

from node.chain import provider as op
from node.chain.deploy import DeployError, ProtocolParams, deploy_protocol
from node.chain.deployments import DeploymentError, default_path, load_deployment, save_deployment
from node.chain.fees import GWEI, FeePolicy
from node.chain.keys import KeystoreError, Signer, keystore_info, parse_private_key
from node.chain.protocol import Protocol
from node.chain.rpc import redact

TOKEN = 10**18
WORKLOAD = "matmul-int8/v1"
PRICE_FLOOR = 10**14  # registered units per GPU-second: the node's default price
# Where each role's keystore password is looked for by default: as in gpunode run, scripts/deploy.py and
# gpunode request.
PASSWORD_ENVS = {"deployer": "GPUNODE_WALLET_PASSWORD", "operator": "GPUNODE_WALLET_PASSWORD",
                 "requester": "GPUNODE_REQUESTER_PASSWORD"}
OPERATOR_PASSWORD_ENV = "SMOKE_OPERATOR_KEYSTORE_PASSWORD"  # handed to the node; not a GPUNODE_* name
# Gas each role may spend (measured on anvil, plus margin); times the current fee bid = the ETH it needs.
GAS_BUDGET = {"deployer": 10_000_000, "operator": 1_000_000, "requester": 500_000}


@dataclass(frozen=True)
class Network:
    name: str
    faucet: str
    confirmations: int  # what docs/testnets.md and examples/ recommend


NETWORKS = {
    31337: Network("anvil", "anvil's dev accounts, which start with 10000 ETH", 1),
    11155111: Network("Sepolia", "a Sepolia faucet, e.g. https://cloud.google.com/application/web3/faucet/"
                      "ethereum/sepolia or https://www.alchemy.com/faucets/ethereum-sepolia", 3),
    84532: Network("Base Sepolia", "a Base Sepolia faucet (listed at https://docs.base.org/chain/network-faucets), "
                   "or bridge Sepolia ETH to Base Sepolia", 10),
}


class SmokeError(RuntimeError):
    """Why the round trip stopped; `code` becomes the exit status (see the module docstring)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def scrub(text: str, url: str) -> str:
    """`text` without the URL's path and query: HTTP errors and the node's log repeat them, API key and all."""
    parts = urlsplit(url)
    secret = parts.path + (f"?{parts.query}" if parts.query else "")
    text = text.replace(url, redact(url))
    return text.replace(secret, "/...") if len(secret) > 1 else text


def read_key(path: Path, password_env: str) -> tuple[bytes, bool]:
    """A private key from a raw hex file (owner-only) or a v3 keystore unlocked with $password_env.
    Returns (key, is_keystore); errors name the file, never its contents."""
    try:
        text, mode = path.read_text(encoding="utf-8"), stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise SmokeError(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}", 2) from None
    try:
        if not text.lstrip().startswith("{"):
            if mode & 0o077:
                raise SmokeError(f"{path} holds a plain private key but is readable by others (mode {mode:04o}); "
                                 f"run chmod 600 {path}", 2)
            return parse_private_key(text), False
        keystore_info(path)  # the v3 shape, checked before any password is looked for
        if password_env not in os.environ:
            raise SmokeError(f"{path} is a keystore: put its password in ${password_env}", 2)
        try:
            return Account.decrypt(json.loads(text), os.environ[password_env]), True
        except ValueError:
            raise SmokeError(f"wrong password for {path} (from ${password_env})", 2) from None
    except KeystoreError as exc:
        raise SmokeError(f"{path}: {exc}", 2) from None


def free_port_or(port: int) -> int:
    """`port` if it is free (so a rerun keeps the registered endpoint and sends no update), else a free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node's server binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Smoke:
    """One round trip, stage by stage; `summary` is what the JSON report says."""

    def __init__(self, args: argparse.Namespace, out: Any) -> None:
        self.args, self.out, self.t0 = args, out, time.monotonic()
        self.txs: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {"ok": False, "stage": "preflight"}
        self.node: Any = None

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", file=self.out, flush=True)

    def stage(self, name: str) -> None:
        self.summary["stage"] = name
        self.say(f"== {name}")

    def sent(self, role: str, step: op.Step | None) -> None:
        """Record a mined transaction and hold on until it has the asked-for confirmations."""
        if step is not None:
            self.txs.append({"role": role, **asdict(step)})
            self.say(f"  {role}: {step}")
            self.until_block(self.w3.eth.get_transaction_receipt(step.tx_hash)["blockNumber"])

    def until_block(self, mined_in: int) -> None:
        deadline, want = time.monotonic() + self.args.timeout, mined_in + self.args.confirmations - 1
        while self.w3.eth.block_number < want:
            if time.monotonic() > deadline:
                raise SmokeError(f"block {want} not reached within {self.args.timeout:g} s: is the chain moving?")
            time.sleep(min(1.0, self.args.poll_interval))

    # -- preflight: nothing is sent until all of it passed ------------------------------------------------
    def preflight(self) -> None:
        a = self.args
        roles = (["deployer"] if a.deploy else []) + ["operator", "requester"]
        self.keys = {r: read_key(getattr(a, f"{r}_key_file"), getattr(a, f"{r}_password_env")) for r in roles}
        self.signers = {role: Signer(Account.from_key(key)) for role, (key, _) in self.keys.items()}
        os.environ.pop(PASSWORD_ENVS["requester"], None)  # read; the node it starts has no use for it
        if self.signers["operator"].address == self.signers["requester"].address:
            raise SmokeError("the operator and the requester key are the same account; use two keys", 2)
        self.w3 = Web3(Web3.HTTPProvider(a.rpc_url, request_kwargs={"timeout": 30}))
        try:
            chain_id = self.w3.eth.chain_id
        except Exception as exc:  # connection refused, DNS, TLS, HTTP errors: all mean "not reachable"
            raise SmokeError(f"cannot reach the RPC at {redact(a.rpc_url)}: {type(exc).__name__}", 2) from None
        net = NETWORKS.get(chain_id, Network(f"chain {chain_id}", "a faucet for this chain", 2))
        self.summary.update(chain_id=chain_id, network=net.name, rpc=redact(a.rpc_url))
        if chain_id != a.chain_id:
            raise SmokeError(f"the RPC at {redact(a.rpc_url)} reports chain {chain_id} ({net.name}), but "
                             f"--chain-id is {a.chain_id}: wrong endpoint or wrong network; nothing was sent", 2)
        self.say(f"chain {chain_id} ({net.name}) at {redact(a.rpc_url)}, head {self.w3.eth.block_number}, "
                 f"{a.confirmations} confirmation(s) per step")
        if a.confirmations < net.confirmations:
            self.say(f"  note: {net.name} runs are safer with --confirmations {net.confirmations}")
        self.fees = FeePolicy(int(a.max_fee_gwei * GWEI), int(a.priority_fee_gwei * GWEI))
        bid = self.fees.market(self.w3.eth.fee_history(5, "latest", [50])).max_fee
        short = []
        for role, signer in self.signers.items():
            have, need = self.w3.eth.get_balance(signer.address), GAS_BUDGET[role] * bid
            self.say(f"  {role:<9} {signer.address}  {have / 10**18:.6f} ETH")
            if have < need:
                short.append(f"{role} {signer.address} holds {have / 10**18:.6f} ETH, needs about "
                             f"{need / 10**18:.6f} ETH ({GAS_BUDGET[role]:,} gas at {bid / GWEI:g} gwei)")
        if short:
            raise SmokeError("not enough ETH for gas: " + "; ".join(short) + f". Get some from {net.faucet}", 2)

    # -- contracts and tokens ------------------------------------------------------------------------------
    def contracts(self) -> None:
        a = self.args
        if a.deploy:
            self.stage("deploy")
            last: dict[str, Any] = {}

            def progress(name: str, receipt: Any) -> None:
                last.update(receipt)
                fee = receipt["gasUsed"] * receipt.get("effectiveGasPrice", 0)
                self.txs.append({"role": "deployer", "name": name, "tx_hash": receipt["transactionHash"].to_0x_hex(),
                                 "gas_used": receipt["gasUsed"], "fee_wei": fee})
                self.say(f"  deployer: {name}: gas {receipt['gasUsed']:,}")

            params = ProtocolParams(fee_bps=a.fee_bps, challenge_window_s=a.challenge_window)
            try:
                dep = deploy_protocol(self.w3, self.keys["deployer"][0], params, progress=progress)
            except DeployError as exc:
                raise SmokeError(f"deploy: {exc}") from None
            self.until_block(last["blockNumber"])
            self.deployments = a.deployments_out or default_path(dep.chain_id, self.work / "deployments")
            save_deployment(dep, self.deployments)
            self.say(f"  wrote {self.deployments}")
        else:
            self.deployments = a.deployments
            try:
                dep = load_deployment(a.deployments, expected_chain_id=a.chain_id)
            except DeploymentError as exc:
                raise SmokeError(str(exc), 2) from None
            if not self.w3.eth.get_code(dep.market):
                raise SmokeError(f"no contract at the market address {dep.market} on chain {a.chain_id}: "
                                 f"{a.deployments} is from another deployment", 2)
        self.chain = op.OperatorChain(self.w3, dep, self.fees)
        self.decimals = self.chain.token.functions.decimals().call()
        self.summary.update(deployed=a.deploy, deployments=str(self.deployments),
                            contracts={"token": dep.token, "registry": dep.registry, "market": dep.market})

    def tokens(self, units: int) -> str:
        return f"{op.tokens(units, self.decimals)} GPU"

    def funds(self) -> None:
        """Mint what is missing when the deployer owns the token; otherwise say exactly what to fund."""
        a, token = self.args, self.chain.token.functions
        operator, requester = self.signers["operator"].address, self.signers["requester"].address
        want = {requester: a.payment, operator: max(0, a.stake - self.chain.provider(operator)["stake"])}
        deployer = self.signers.get("deployer")
        minter = deployer if deployer and token.owner().call() == deployer.address else None
        short = []
        for role, who in (("requester", requester), ("operator", operator)):
            have = token.balanceOf(who).call()
            if have >= want[who]:
                continue
            if minter is None:
                short.append(f"{role} {who} holds {self.tokens(have)}, needs {self.tokens(want[who])}")
            else:
                amount = max(want[who] - have, a.mint)
                self.sent("deployer", self.chain.send(minter, token.mint(who, amount), "mint"))
        if short:
            raise SmokeError("not enough GPU tokens: " + "; ".join(short) + ". Ask the owner of the token "
                             f"{self.chain.token.address} to mint them (GpuToken.mint), or transfer them", 2)

    # -- provider ------------------------------------------------------------------------------------------
    def provider(self) -> None:
        from scripts.localnode import ensure_bench, provision

        a, operator = self.args, self.signers["operator"]
        current = self.chain.provider(operator.address)
        registered = urlsplit(current["endpoint"]).port if current["active"] else None
        port = a.api_port or free_port_or(registered or 0)
        payout = a.payout or (current["payout"] if current["active"] else Account.create().address)
        bench = a.bench or self.work / "bench.json"
        self.say(f"  benchmark {bench}{'' if bench.exists() else ' (measuring, about half a minute)'}")
        ensure_bench(bench)
        capacity = op.capacity_from_attestation(op.load_attestation(bench))
        want = op.Registration(payout, capacity, PRICE_FLOOR, f"http://127.0.0.1:{port}")
        try:
            steps = op.register_provider(self.chain, operator, want, stake_total=a.stake, token_decimals=self.decimals,
                                         say=lambda m: self.say(f"  {m.split(' — ')[0]}"))
        except op.OperatorError as exc:
            raise SmokeError(f"register: {exc}") from None
        for step in steps:
            self.sent("operator", step)
        self.payout = Web3.to_checksum_address(payout)
        self.summary.update(operator=operator.address, payout=self.payout, bench=str(bench))

        settings: dict[str, dict[str, Any]] = {
            "chain": {"confirmations": a.confirmations, "poll_interval_s": a.poll_interval,
                      "start_block": self.w3.eth.block_number, "max_fee_gwei": a.max_fee_gwei,
                      "priority_fee_gwei": a.priority_fee_gwei},
            "payout": {"withdraw_threshold": "0"}}
        data_dir, (key, is_keystore) = self.work / "node", self.keys["operator"]
        (data_dir / "key.json").unlink(missing_ok=True)  # our copy from an earlier run in this work dir
        if is_keystore:  # the node unlocks the operator's own keystore, not a dev-grade copy of the key
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(a.operator_key_file, data_dir / "key.json")
            os.chmod(data_dir / "key.json", 0o600)
            os.environ[OPERATOR_PASSWORD_ENV] = os.environ[a.operator_password_env]
            settings["wallet"] = {"password_env": OPERATOR_PASSWORD_ENV}
        self.stage("start the node")
        self.node = provision(Protocol(self.w3, self.chain.deployment), a.rpc_url, self.deployments,
                              "0x" + bytes(key).hex(), payout, data_dir, bench=bench, settings=settings, port=port)
        self.node.start(timeout=a.timeout)
        self.say(f"  node {self.node.address} ready at {self.node.api} (log {self.node.log_path})")

    # -- the job -------------------------------------------------------------------------------------------
    def job(self) -> None:
        """The requester's half, exactly as `gpunode request run` does it, stopping before the verdict."""
        from node.requester.client import Requester
        from node.requester.pipeline import JobSpec, run_job

        a = self.args
        self.requester = req = Requester.connect(a.rpc_url, self.deployments, self.signers["requester"],
                                                 chain_id=a.chain_id, max_fee_gwei=a.max_fee_gwei,
                                                 state_dir=self.work / "requester")
        params = json.dumps({"m": a.size, "k": a.size, "n": a.size, "seed": a.seed}, separators=(",", ":")).encode()
        self.credited_before = self.chain.market.functions.balanceOf(self.payout).call()
        self.balance_before = self.chain.token.functions.balanceOf(self.payout).call()
        self.summary.update(requester=req.address, payment=str(a.payment))
        self.say(f"  {WORKLOAD} {a.size}x{a.size} seed {a.seed}, payment {self.tokens(a.payment)}, bond "
                 f"{self.tokens(a.bond)}, addressed to {self.node.address}")
        spec = JobSpec(WORKLOAD, params, a.payment, a.bond, provider=self.node.address)
        outcome = run_job(req, spec, out=self.work / "result.bin", timeout=a.timeout, settle=False, emit=self.event)
        self.txs += [{"role": "requester", **asdict(step)} for step in outcome.steps]
        assert outcome.report is not None  # run_job returns after verifying
        self.summary["verification"] = outcome.report.to_json()
        if outcome.wrong:
            raise SmokeError(f"the result of {self.job_id} failed verification: {outcome.report.detail}; not "
                             f"accepted (`gpunode request dispute {self.job_id}` disputes it)", 3)
        job = req.job(self.job_id)
        if a.finalize_after_window:
            self.stage("wait out the challenge window")
            self.settle_after_window(int(job["due"]))
        elif job["state"] == "Submitted":
            self.stage("accept")
            self.sent("requester", req.accept(self.job_id))
            self.summary["settled_by"] = "requester accept"
        else:  # a short window, and the node was quicker: payment() checks that it is Finalized
            self.summary["settled_by"] = f"already {job['state']}"

    def event(self, name: str, message: str, fields: dict[str, Any]) -> None:
        """run_job's progress; a dead node ends a wait at once instead of at the timeout."""
        if name == "signed":
            self.job_id = self.summary["job_id"] = fields["job_id"]
        if self.node.proc is not None and self.node.proc.poll() is not None:
            raise SmokeError(f"the node exited with code {self.node.proc.returncode}")
        self.say(f"  {message}")
        stage = {"posted": "wait for the node to claim, run and submit", "fetched": "verify the result"}.get(name)
        if stage:
            self.stage(stage)

    def settle_after_window(self, due: int) -> None:
        """The node's settler finalizes due jobs itself; only if the job is still Submitted 30 s of chain time
        after the window does the requester finalize it (anyone may)."""
        chain_now = lambda: self.w3.eth.get_block("latest")["timestamp"]  # noqa: E731
        state = lambda: self.requester.job(self.job_id)["state"]  # noqa: E731
        self.say(f"  the window ends in {max(0, due - chain_now())} s of chain time")
        deadline = time.monotonic() + max(0, due - chain_now()) + self.args.timeout
        while state() == "Submitted" and chain_now() < due + 30:
            if time.monotonic() > deadline:
                raise SmokeError(f"the chain clock did not pass the window's end ({due}) in time")
            time.sleep(self.args.poll_interval)
        self.summary["settled_by"] = "node finalize"
        if state() == "Submitted":
            self.summary["settled_by"] = "requester finalize"
            call = self.chain.market.functions.finalize(bytes.fromhex(self.job_id[2:]))
            try:
                self.sent("requester", self.chain.send(self.signers["requester"], call, "finalize"))
            except op.OperatorError as exc:  # the node finalized it between the read and the send
                if state() != "Finalized":
                    raise SmokeError(f"finalize: {exc}") from None

    # -- payment -------------------------------------------------------------------------------------------
    def payment(self) -> None:
        a = self.args
        self.stage("payout")
        job = self.requester.job(self.job_id)
        if job["state"] != "Finalized":
            raise SmokeError(f"job {self.job_id} is {job['state']} on chain, not Finalized")
        fee = job["payment"] * job["feeBps"] // 10_000
        try:
            self.node.wait_states([self.job_id], {"paid"}, timeout=a.payout_timeout)
            withdrawn_by = "node"
        except TimeoutError:
            self.say(f"  the node did not withdraw within {a.payout_timeout:g} s: withdrawing here")
            self.sent("operator", op.withdraw_earnings(self.chain, self.signers["operator"], self.payout)[1])
            withdrawn_by = "script"
        expected = self.credited_before + job["payment"] - fee  # withdrawFor moves the whole credited balance
        grown = self.chain.token.functions.balanceOf(self.payout).call() - self.balance_before
        self.summary.update(job_state=job["state"], fee=str(fee), paid=str(grown), expected=str(expected),
                            withdrawn_by=withdrawn_by, node_gas=self.node_gas())
        if grown != expected:
            raise SmokeError(f"the payout {self.payout} received {self.tokens(grown)}, expected {self.tokens(expected)}"
                             f" (payment {self.tokens(job['payment'])} - fee {self.tokens(fee)})")
        self.say(f"  {self.payout} received {self.tokens(grown)} = payment - fee ({job['feeBps'] / 100:g} %), "
                 f"withdrawn by the {withdrawn_by}")

    def node_gas(self) -> dict[str, int]:
        """Gas of the node's own transactions (claim, submit, withdraw), from its metrics: the operator's cost."""
        _, body, _ = self.node.request("/metrics")
        found = re.findall(r'^gpunode_gas_used_total\{step="(\w+)"\} ([0-9.e+]+)$', body.decode(), re.MULTILINE)
        return {step: int(float(value)) for step, value in found}

    # -- the whole run -------------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        try:
            self.preflight()
            self.work = a.work_dir or Path(tempfile.mkdtemp(prefix="gpunode-smoke-"))
            self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.summary["work_dir"] = str(self.work)
            self.contracts()
            for name, step in (("fund", self.funds), ("register", self.provider), ("post the offer", self.job)):
                self.stage(name)
                step()
            self.payment()
            self.summary["ok"], self.summary["stage"] = True, "done"
            return 0
        except SmokeError as exc:
            self.summary["error"], code = str(exc), exc.code
        except KeyboardInterrupt:
            self.summary["error"], code = "interrupted", 130
        except Exception as exc:  # a library error with its own message (and hint): still a clear report
            hint = getattr(exc, "hint", "")
            error = f"{type(exc).__name__}: {exc}" + (f" (hint: {hint})" if hint else "")
            self.summary["error"] = scrub(error, a.rpc_url)
            code = 3 if type(exc).__name__ == "ResultMismatch" else 1  # served bytes are not the committed ones
        finally:
            self.finish()
        return code

    def finish(self) -> None:
        if not self.summary["ok"]:
            self.say(f"FAILED in {self.summary['stage']}: {self.summary.get('error', 'stopped')}")
        if self.node is not None:
            if not self.summary["ok"]:
                tail = scrub(self.node.tail(40), self.args.rpc_url)
                self.say(f"node log (last lines of {self.node.log_path}):\n{tail}")
            try:
                self.node.stop(timeout=60)
            except RuntimeError as exc:
                self.say(str(exc))
        self.summary.update(transactions=self.txs, gas_used=sum(t["gas_used"] for t in self.txs),
                            fees_eth=sum(t["fee_wei"] for t in self.txs) / 10**18,
                            wall_s=round(time.monotonic() - self.t0, 1))


def _tokens(text: str) -> int:
    try:
        units = Decimal(text) * TOKEN
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if units < 0 or units != units.to_integral_value():
        raise argparse.ArgumentTypeError(f"not an amount >= 0 with at most 18 decimals: {text!r}")
    return int(units)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scripts.smoke_testnet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--rpc-url", "--rpc", required=True, help="JSON-RPC endpoint (http/https)")
    add("--chain-id", type=int, required=True, help="the chain id the RPC must report")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--deploy", action="store_true", help="deploy fresh contracts with --deployer-key-file")
    src.add_argument("--deployments", type=Path, metavar="FILE", help="use this deployment (addresses file)")
    add("--deployments-out", type=Path, metavar="FILE",
        help="with --deploy: where to write the addresses (default <work dir>/deployments/<chain id>.json)")
    for role in ("deployer", "operator", "requester"):
        add(f"--{role}-key-file", type=Path, metavar="FILE", required=role != "deployer",
            help=f"{role} key: 64 hex digits (mode 600) or a v3 keystore" + " (with --deploy)" * (role == "deployer"))
        add(f"--{role}-password-env", default=PASSWORD_ENVS[role], metavar="NAME",
            help=f"environment variable holding the {role} keystore's password (default %(default)s)")
    add("--payout", metavar="ADDR", help="earnings address (default: the registered one, else a fresh address)")
    add("--confirmations", type=int, default=1, help="blocks each step waits: 1 anvil, 3 Sepolia, 10 Base Sepolia")
    add("--max-fee-gwei", type=float, default=200.0, help="fee ceiling per gas, script and node (default 200)")
    add("--priority-fee-gwei", type=float, default=1.0, help="tip per gas, at least (default 1)")
    add("--challenge-window", type=int, default=3600, help="with --deploy: seconds, 60 .. 30 days (default 3600)")
    add("--fee-bps", type=int, default=250, help="with --deploy: protocol fee in basis points (default 250)")
    add("--finalize-after-window", action="store_true",
        help="wait out the challenge window (the node finalizes) instead of accepting at once")
    add("--payment", type=_tokens, default=TOKEN, metavar="TOKENS", help="job payment (default 1)")
    add("--bond", type=_tokens, default=TOKEN, metavar="TOKENS", help="provider bond (default 1)")
    add("--stake", type=_tokens, default=10 * TOKEN, metavar="TOKENS", help="operator's total stake (default 10)")
    add("--mint", type=_tokens, default=100 * TOKEN, metavar="TOKENS",
        help="with --deploy: least amount minted to a key short of tokens (default 100)")
    add("--size", type=int, default=64, help="matmul-int8 dimension, m = k = n (default 64)")
    add("--seed", type=int, default=7, help="matmul-int8 input seed (default 7)")
    add("--bench", type=Path, metavar="FILE", help="bench attestation, measured into it when missing (default "
        "<work dir>/bench.json)")
    add("--api-port", type=int, default=0, help="node API port (default: the registered one if free)")
    add("--poll-interval", type=float, default=1.0, help="seconds between chain polls, script and node")
    add("--timeout", type=float, default=600.0, help="seconds each wait may take (default 600)")
    add("--payout-timeout", type=float, default=120.0, help="seconds the node gets to withdraw before the script "
        "does it (default 120)")
    add("--work-dir", type=Path, help="node data, logs, result (default: a new temp dir, kept)")
    add("--json", action="store_true", help="progress on stderr, a JSON summary on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.deploy and not args.deployer_key_file:
        ap.error("--deploy needs --deployer-key-file")
    if not args.deploy and (args.deployer_key_file or args.deployments_out):
        ap.error("--deployer-key-file and --deployments-out go only with --deploy")
    if args.confirmations < 1 or args.size < 1 or args.poll_interval <= 0 or args.payment == 0:
        ap.error("--confirmations and --size must be >= 1, --poll-interval > 0 and --payment > 0")
    if args.deployments_out and args.deployments_out.exists():  # as scripts/deploy.py: never orphan a live market
        ap.error(f"{args.deployments_out} exists; choose another --deployments-out (or use it with --deployments)")
    if args.payout and not Web3.is_address(args.payout):
        ap.error(f"--payout is not an address: {args.payout!r}")
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM, too, stops the node subprocess on the way out
    smoke = Smoke(args, sys.stderr if args.json else sys.stdout)
    code = smoke.run()
    s = smoke.summary
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(f"\n{'PAID' if code == 0 else 'FAILED'}: job {s.get('job_id', '-')} on {s.get('network', '?')}; "
              f"{s['gas_used']:,} gas, {s['fees_eth']:.6f} ETH in fees, {s['wall_s']} s; work dir "
              f"{s.get('work_dir', '-')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
