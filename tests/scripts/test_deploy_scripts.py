"""scripts/deploy.py and scripts/devnet.py against real anvil instances."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from eth_account import Account
from web3 import Web3

from node.chain.contracts import REPO_ROOT
from node.chain.deployments import load_deployment
from node.chain.devnet import Anvil, dev_keys
from node.chain.protocol import Protocol
from scripts import deploy


@pytest.fixture
def fresh_anvil():
    with Anvil(chain_id=424242) as node:
        yield node


def _keystore(tmp_path, password: str) -> tuple:
    key = dev_keys(1)[0]
    path = tmp_path / "deployer.json"
    path.write_text(json.dumps(Account.encrypt(key, password)))
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    return path, pw


def test_deploy_writes_file_and_refuses_twice(fresh_anvil, tmp_path, capsys):
    keystore, pw = _keystore(tmp_path, "correct horse")
    args = ["--rpc-url", fresh_anvil.url, "--keystore", str(keystore), "--password-file", str(pw),
            "--deployments-dir", str(tmp_path / "dep"), "--fee-bps", "100"]
    assert deploy.main(args) == 0
    out = capsys.readouterr().out
    assert "JobMarket" in out and "total gas" in out and "correct horse" not in out
    dep = load_deployment(tmp_path / "dep" / "424242.json", expected_chain_id=424242)
    proto = Protocol(Web3(Web3.HTTPProvider(fresh_anvil.url)), dep)
    assert proto.market.functions.feeBps().call() == 100
    assert proto.registry.functions.market().call() == dep.market

    assert deploy.main(args) == 2
    assert "already has a deployment" in capsys.readouterr().err
    assert deploy.main(args + ["--force"]) == 0
    assert load_deployment(tmp_path / "dep" / "424242.json").market != dep.market


def test_deploy_wrong_password_is_a_clear_error(fresh_anvil, tmp_path):
    keystore, _ = _keystore(tmp_path, "right")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    with pytest.raises(SystemExit, match="wrong password"):
        deploy.main(["--rpc-url", fresh_anvil.url, "--keystore", str(keystore), "--password-file", str(wrong),
                     "--deployments-dir", str(tmp_path)])


def test_deploy_unreachable_rpc(tmp_path, capsys):
    keystore, pw = _keystore(tmp_path, "x")
    rc = deploy.main(["--rpc-url", "http://127.0.0.1:9", "--keystore", str(keystore), "--password-file", str(pw)])
    assert rc == 2 and "cannot reach" in capsys.readouterr().err


def test_devnet_script_deploys_funds_and_stops_cleanly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.devnet", "--chain-id", "31338", "--accounts", "3",
         "--deployments-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops anvil" in line:
                break
        text = "".join(lines)
        assert "Ctrl-C stops anvil" in text, text
        url = next(w for w in text.split() if w.startswith("http://127.0.0.1:"))
        dep = load_deployment(tmp_path / "31338.json", expected_chain_id=31338)
        proto = Protocol(Web3(Web3.HTTPProvider(url)), dep)
        for key in dev_keys(3):
            assert proto.balance(Account.from_key(key).address) == 1_000_000 * 10**18
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(OSError):  # anvil is gone: nothing listens on its port any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
