"""scripts/smoke_testnet.py against a testnet-like anvil: a chain id that is not anvil's, 2 s blocks, keys in
files. The script runs as an operator would run it (a subprocess, `python -m scripts.smoke_testnet`), and
the chain is asked afterwards whether it really did what the JSON summary claims."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from node.chain.contracts import REPO_ROOT
from node.chain.deployments import load_deployment
from node.chain.devnet import Anvil, dev_keys
from node.chain.protocol import Protocol
from tests.e2e.nodenet import shared_bench

CHAIN_ID = 7357  # neither anvil's 31337 nor a real network's
TOKEN = 10**18
FEE_BPS = 250
PAID = TOKEN - TOKEN * FEE_BPS // 10_000  # what the payout gets for one job of the default payment
FINALIZED = 6  # JobMarket.JobState.Finalized


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    with Anvil(chain_id=CHAIN_ID, block_time=2, log_path=tmp_path_factory.mktemp("anvil") / "anvil.log") as anvil:
        yield anvil


def key_file(directory: Path, name: str, key: str, mode: int = 0o600) -> Path:
    path = directory / f"{name}.key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def keystore_file(directory: Path, name: str, key: str, password: str) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(Account.encrypt(key, password, kdf="pbkdf2", iterations=1000)))
    path.chmod(0o600)
    return path


def smoke(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The script in a session of its own, so a timeout also takes down the node it started."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GPUNODE_")}, **(env or {})}
    cmd = [sys.executable, "-m", "scripts.smoke_testnet", *args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script stops its node and prints what it has
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"smoke test timed out after {timeout:g} s; output:\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def nonces(w3: Web3, keys: list[str]) -> list[int]:
    return [w3.eth.get_transaction_count(Account.from_key(k).address) for k in keys]


@pytest.fixture(scope="module")
def first_run(testnet, tmp_path_factory):
    """Deploy + the whole round trip with raw key files: dev accounts 0 (deployer), 1 (operator), 2 (requester)."""
    root = tmp_path_factory.mktemp("first")
    keys = dev_keys(3)
    files = [key_file(root, role, key) for role, key in zip(("deployer", "operator", "requester"), keys, strict=True)]
    run = smoke("--rpc-url", testnet.url, "--chain-id", str(CHAIN_ID), "--deploy", "--fee-bps", str(FEE_BPS),
                "--deployer-key-file", str(files[0]), "--operator-key-file", str(files[1]),
                "--requester-key-file", str(files[2]), "--work-dir", str(root / "work"), "--poll-interval", "0.5",
                "--bench", str(shared_bench(tmp_path_factory)), "--json")
    return root, keys, run


def test_round_trip_deploys_runs_a_job_and_pays_the_payout(testnet, first_run):
    root, (deployer, operator, requester), run = first_run
    assert run.returncode == 0, run.stderr[-6000:]
    summary = json.loads(run.stdout)
    assert summary["ok"] and summary["chain_id"] == CHAIN_ID and summary["deployed"]

    # The chain agrees with the summary: the job is Finalized and the fresh payout address holds exactly
    # payment - fee, withdrawn from the market (nothing left credited there).
    dep = load_deployment(Path(summary["deployments"]), expected_chain_id=CHAIN_ID)
    proto = Protocol(Web3(Web3.HTTPProvider(testnet.url)), dep)
    job = proto.job(bytes.fromhex(summary["job_id"][2:]))
    assert job["state"] == FINALIZED
    assert job["requester"] == Account.from_key(requester).address
    payout = summary["payout"]
    assert proto.balance(payout) == PAID == int(summary["paid"])
    assert proto.withdrawable(payout) == 0
    assert summary["operator"] == Account.from_key(operator).address
    assert summary["verification"]["ok"] is True and summary["settled_by"] == "requester accept"
    assert summary["withdrawn_by"] == "node" and summary["node_gas"]["claim"] > 0
    names = [t["name"] for t in summary["transactions"]]
    assert {"register", "stake", "approve", "postOffer", "accept"} <= set(names), names
    # Progress went to stderr, stage by stage; no key ever appears in the output.
    for stage in ("deploy", "fund", "register", "start the node", "post the offer",
                  "wait for the node to claim, run and submit", "verify the result", "accept", "payout"):
        assert f"== {stage}" in run.stderr
    for key in (deployer, operator, requester):
        assert key[2:] not in run.stdout + run.stderr


def test_rerun_on_that_deployment_with_keystores_sends_only_the_job(testnet, first_run, tmp_path):
    """What a second testnet run looks like: an existing deployments file, v3 keystores unlocked from the
    environment, and nothing sent for registration or stake, which are already on chain."""
    root, (_, operator, requester), first = first_run
    assert first.returncode == 0, "the first run failed; see its test"
    before = json.loads(first.stdout)
    env = {"OPERATOR_PW": "operator secret", "GPUNODE_REQUESTER_PASSWORD": "requester secret"}
    op_keystore = keystore_file(tmp_path, "operator", operator, env["OPERATOR_PW"])
    req_keystore = keystore_file(tmp_path, "requester", requester, env["GPUNODE_REQUESTER_PASSWORD"])
    run = smoke("--rpc-url", testnet.url, "--chain-id", str(CHAIN_ID), "--deployments", before["deployments"],
                "--operator-key-file", str(op_keystore), "--operator-password-env", "OPERATOR_PW",
                "--requester-key-file", str(req_keystore),
                "--bench", before["bench"], "--work-dir", str(tmp_path / "work"),
                "--poll-interval", "0.5", "--json", env=env)
    assert run.returncode == 0, run.stderr[-6000:]
    summary = json.loads(run.stdout)
    assert not summary["deployed"] and summary["payout"] == before["payout"]  # the registered payout is kept
    assert [t["name"] for t in summary["transactions"]] == ["approve", "postOffer", "accept"]
    dep = load_deployment(Path(before["deployments"]))
    proto = Protocol(Web3(Web3.HTTPProvider(testnet.url)), dep)
    assert proto.job(bytes.fromhex(summary["job_id"][2:]))["state"] == FINALIZED
    assert proto.balance(summary["payout"]) == 2 * PAID
    # The node ran on the operator's own keystore (a byte-for-byte copy), not on a re-encrypted key.
    assert (tmp_path / "work" / "node" / "key.json").read_bytes() == op_keystore.read_bytes()
    assert all(secret not in run.stdout + run.stderr for secret in env.values())


def test_wrong_chain_id_stops_before_anything_is_sent(testnet, tmp_path):
    keys = dev_keys(6)[3:]  # accounts the round trips do not use
    w3 = Web3(Web3.HTTPProvider(testnet.url))
    before = nonces(w3, keys)
    files = [key_file(tmp_path, f"k{i}", k) for i, k in enumerate(keys)]
    run = smoke("--rpc-url", testnet.url, "--chain-id", "11155111", "--deploy", "--deployer-key-file",
                str(files[0]), "--operator-key-file", str(files[1]), "--requester-key-file", str(files[2]),
                "--json", timeout=60)
    assert run.returncode == 2, run.stderr
    summary = json.loads(run.stdout)
    assert summary["ok"] is False and summary["stage"] == "preflight"
    assert f"reports chain {CHAIN_ID}" in summary["error"] and "--chain-id is 11155111" in summary["error"]
    assert "nothing was sent" in summary["error"] and summary["transactions"] == []
    assert nonces(w3, keys) == before


def test_unfunded_key_and_open_key_file_are_clear_errors(testnet, tmp_path):
    operator, requester = dev_keys(6)[4:]
    broke = Account.create().key.to_0x_hex()
    dep_file = tmp_path / "dep.json"
    dep_file.write_text(json.dumps({"chain_id": CHAIN_ID, "deploy_block": 0, "token": "0x" + "11" * 20,
                                    "registry": "0x" + "22" * 20, "market": "0x" + "33" * 20}))
    common = ("--rpc-url", testnet.url, "--chain-id", str(CHAIN_ID), "--deployments", str(dep_file),
              "--operator-key-file", str(key_file(tmp_path, "op", operator)))

    run = smoke(*common, "--requester-key-file", str(key_file(tmp_path, "broke", broke)), timeout=60)
    assert run.returncode == 2
    assert "not enough ETH for gas: requester" in run.stdout and "Get some from a faucet" in run.stdout

    run = smoke(*common, "--requester-key-file", str(key_file(tmp_path, "open", requester, 0o644)), timeout=60)
    assert run.returncode == 2 and "readable by others" in run.stdout and "chmod 600" in run.stdout
    assert requester[2:] not in run.stdout + run.stderr


def test_rpc_api_keys_are_cut_from_what_the_script_prints():
    from scripts.smoke_testnet import redact, scrub

    url = "https://eth-sepolia.g.alchemy.com/v2/s3cr3t-key?x=1"
    assert redact(url) == "https://eth-sepolia.g.alchemy.com"
    error = f"Max retries exceeded with url: /v2/s3cr3t-key?x=1; node: RPC endpoint {url} failed"
    assert "s3cr3t" not in scrub(error, url) and "eth-sepolia.g.alchemy.com" in scrub(error, url)
    assert scrub("http://127.0.0.1:8545 failed", "http://127.0.0.1:8545") == "http://127.0.0.1:8545 failed"


def test_key_files_raw_or_keystore_and_their_errors(tmp_path, monkeypatch):
    from scripts.smoke_testnet import SmokeError, read_key

    key = dev_keys(1)[0]
    assert read_key(key_file(tmp_path, "raw", key), "UNUSED") == (bytes.fromhex(key[2:]), False)
    store = keystore_file(tmp_path, "store", key, "right")
    monkeypatch.setenv("SMOKE_TEST_PW", "right")
    assert read_key(store, "SMOKE_TEST_PW") == (bytes.fromhex(key[2:]), True)
    cases = {"readable by others": (key_file(tmp_path, "open", key, 0o640), "SMOKE_TEST_PW"),
             "put its password in $NO_SUCH_VAR": (store, "NO_SUCH_VAR"),
             "64 hex digits": (key_file(tmp_path, "short", key[:40]), "SMOKE_TEST_PW"),
             "cannot read key file": (tmp_path / "missing.key", "SMOKE_TEST_PW")}
    for message, (path, env) in cases.items():
        with pytest.raises(SmokeError, match=re.escape(message)) as err:
            read_key(path, env)
        assert err.value.code == 2 and key[2:] not in str(err.value)
    monkeypatch.setenv("SMOKE_TEST_PW", "wrong")
    with pytest.raises(SmokeError, match="wrong password"):
        read_key(store, "SMOKE_TEST_PW")
