from __future__ import annotations

import functools
import getpass
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node import __version__
from node.cli import DELEGATED, main
from tests.support.logging_state import restore_root_logging


def test_help_and_version_from_the_console_script():
    out = subprocess.run([sys.executable, "-m", "node.cli", "--help"], capture_output=True, text=True, check=True)
    assert "gpunode" in out.stdout and "config" in out.stdout
    ver = subprocess.run([sys.executable, "-m", "node.cli", "--version"], capture_output=True, text=True, check=True)
    assert ver.stdout.strip() == f"gpunode {__version__}"


def test_config_check(tmp_path, capsys):
    from node.chain.contracts import REPO_ROOT

    assert main(["config", str(REPO_ROOT / "config.example.toml")]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain]\nconfirmations = -1\nrpc_url = 'x'\n")
    assert main(["config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "chain.confirmations" in err and "chain.rpc_url" in err


def test_delegated_commands_hand_every_argument_to_their_own_parser(capsys):
    def exit_code(argv: list[str]) -> int:
        try:
            return main(argv)
        except SystemExit as done:  # argparse's own exit, where the command lets it through
            return int(done.code or 0)

    for name in DELEGATED:
        assert exit_code(["--debug", name, "--help"]) == 0
        assert f"gpunode {name}" in capsys.readouterr().out  # their own usage line, not the top-level one
        assert exit_code([name, "--no-such-option"]) == 2
        assert f"gpunode {name}" in capsys.readouterr().err


# --- gpunode keys ----------------------------------------------------------------------------------------

KEYS_PASSWORD = "cli test password"
SPEC_KEY_HEX = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"  # Web3 Secret Storage vectors
SPEC_ADDRESS = "0x008AeEda4D805471dF9b2A5B0f38A0C3bCBA786b"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def keys_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose password comes from $KEYS_TEST_PASSWORD, and cheap kdf parameters for speed."""
    from node.chain import keys

    for name in [n for n in os.environ if n.startswith("GPUNODE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KEYS_TEST_PASSWORD", KEYS_PASSWORD)
    monkeypatch.setattr(keys, "create_keystore", functools.partial(keys.create_keystore, iterations=16))
    config = tmp_path / "config.toml"
    config.write_text("[node]\ndata_dir = 'data'\n[wallet]\npassword_env = 'KEYS_TEST_PASSWORD'\n")
    return config


def keys_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["keys", *argv])
    out, err = capsys.readouterr()
    for secret in (KEYS_PASSWORD, SPEC_KEY_HEX):
        assert secret not in out + err
    return rc, out, err


def test_keys_new_show_import_round_trip(keys_config: Path, tmp_path: Path, capsys) -> None:
    conf = ("--config", str(keys_config))
    rc, out, _ = keys_cli(capsys, "new", *conf)
    assert rc == 0
    default = tmp_path / "data" / "keystore.json"
    [address] = re.findall(r"^address\s+(0x[0-9a-fA-F]{40})$", out, re.M)
    assert f"keystore {default}" in out and f'wallet.keystore = "{default}"' in out
    assert stat.S_IMODE(default.stat().st_mode) == 0o600

    rc, out, err = keys_cli(capsys, "show", *conf)
    assert rc == 0 and err == ""
    assert f"address  {address}" in out and "kdf      scrypt" in out and "mode     0600" in out
    rc, out, _ = keys_cli(capsys, "show", "--json", *conf)
    assert json.loads(out) == {"address": address, "path": str(default), "kdf": "scrypt", "mode": "0600",
                               "too_open": False}

    other = tmp_path / "elsewhere" / "node.json"
    rc, out, _ = keys_cli(capsys, "import", "--from-keystore", str(default), "--keystore", str(other), *conf)
    assert rc == 0 and f"address  {address}" in out
    assert other.read_bytes() == default.read_bytes()
    rc, out, _ = keys_cli(capsys, "show", "--json", "--keystore", str(other), *conf)
    assert json.loads(out)["address"] == address

    rc, _, err = keys_cli(capsys, "new", *conf)  # never overwrites
    assert rc == 1 and err.count("\n") == 1 and "refusing to overwrite existing" in err
    assert "Traceback" not in err


def test_keys_configured_path_needs_no_hint(keys_config: Path, tmp_path: Path, capsys) -> None:
    keys_config.write_text(keys_config.read_text() + "keystore = 'node-key.json'\n")
    rc, out, _ = keys_cli(capsys, "new", "--config", str(keys_config))
    assert rc == 0 and f"keystore {tmp_path / 'node-key.json'}" in out and "set wallet.keystore" not in out


def test_keys_import_private_key_from_file_or_hidden_prompt(keys_config: Path, tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"0x{SPEC_KEY_HEX}\n")
    dest = tmp_path / "from-file.json"
    rc, out, _ = keys_cli(capsys, "import", "--private-key-file", str(key_file), "--keystore", str(dest),
                          "--config", str(keys_config))
    assert rc == 0 and f"address  {SPEC_ADDRESS}" in out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600

    # On a terminal with no configured password: key, then the new password twice, all through getpass.
    monkeypatch.delenv("KEYS_TEST_PASSWORD")
    monkeypatch.setattr(sys, "stdin", FakeTTY())
    replies = [SPEC_KEY_HEX, KEYS_PASSWORD, KEYS_PASSWORD]
    prompts: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or replies.pop(0))
    dest = tmp_path / "prompted.json"
    rc, out, _ = keys_cli(capsys, "import", "--keystore", str(dest), "--config", str(keys_config))
    assert rc == 0 and f"address  {SPEC_ADDRESS}" in out
    assert "private key" in prompts[0] and "hidden" in prompts[0] and "repeat" in prompts[2]

    from node.chain.keys import load_signer

    assert load_signer(dest, KEYS_PASSWORD).address == SPEC_ADDRESS


def test_keys_import_rejects_bad_key_and_wrong_password(keys_config: Path, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    conf = ("--config", str(keys_config))
    key_file = tmp_path / "key.txt"
    key_file.write_text(SPEC_KEY_HEX[:-2] + "\n")
    rc, _, err = keys_cli(capsys, "import", "--private-key-file", str(key_file), *conf)
    assert rc == 1 and err.strip() == "error: a private key must be 64 hex digits, optionally prefixed with 0x"
    assert SPEC_KEY_HEX[:-2] not in err
    key_file.write_text("0" * 64)
    rc, _, err = keys_cli(capsys, "import", "--private-key-file", str(key_file), *conf)
    assert rc == 1 and "outside the secp256k1 range" in err

    src = tmp_path / "src.json"
    rc, _, _ = keys_cli(capsys, "new", "--keystore", str(src), *conf)
    monkeypatch.setenv("KEYS_TEST_PASSWORD", "wrong")
    rc, _, err = keys_cli(capsys, "import", "--from-keystore", str(src), "--keystore", str(tmp_path / "d.json"),
                          *conf)
    assert rc == 1 and err.strip() == f"error: wrong password for {src}"
    assert not (tmp_path / "d.json").exists()


def test_keys_without_terminal_or_password_says_how(keys_config: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("KEYS_TEST_PASSWORD")
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    rc, _, err = keys_cli(capsys, "new", "--config", str(keys_config))
    assert rc == 1 and err.count("\n") == 1
    assert "not a terminal" in err and "$KEYS_TEST_PASSWORD" in err and "wallet.password_file" in err
    rc, _, err = keys_cli(capsys, "import", "--config", str(keys_config))
    assert rc == 1 and "--private-key-file" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["import", SPEC_KEY_HEX],
        ["import", "--private-key", "0x" + SPEC_KEY_HEX],
        ["import", f"--private-key=0x{SPEC_KEY_HEX}"],
        ["import", "--private-key-file", SPEC_KEY_HEX],
        ["new", "--keystore", SPEC_KEY_HEX.upper()],
    ],
)
def test_keys_never_take_a_private_key_from_argv(keys_config: Path, capsys, argv: list[str]) -> None:
    rc, _, err = keys_cli(capsys, *argv, "--config", str(keys_config))
    assert rc == 2 and "refusing a private key on the command line" in err


def test_keys_usage_errors_exit_2(keys_config: Path, capsys) -> None:
    # No abbreviations: "--private-key" must not silently mean --private-key-file.
    for argv in (["import", "--private-key", "key.txt"], ["import", "--private", "key.txt"], []):
        with pytest.raises(SystemExit) as exc:
            main(["keys", *argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_keys_show_warns_when_open_and_fails_when_missing(keys_config: Path, tmp_path: Path, capsys) -> None:
    from eth_account import Account

    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(Account.encrypt(bytes.fromhex(SPEC_KEY_HEX), "pw", kdf="pbkdf2", iterations=10)))
    path.chmod(0o644)
    rc, out, err = keys_cli(capsys, "show", "--keystore", str(path), "--config", str(keys_config))
    assert rc == 0 and f"address  {SPEC_ADDRESS}" in out and "kdf      pbkdf2" in out
    assert err.startswith(f"warning: {path} is open to group or others (mode 0644)") and "chmod 600" in err
    rc, out, _ = keys_cli(capsys, "show", "--json", "--keystore", str(path), "--config", str(keys_config))
    assert json.loads(out)["too_open"] is True

    document = json.loads(path.read_text())
    del document["address"]
    path.write_text(json.dumps(document))
    rc, out, _ = keys_cli(capsys, "show", "--keystore", str(path), "--config", str(keys_config))
    assert rc == 0 and "unknown until unlocked" in out

    rc, _, err = keys_cli(capsys, "show", "--config", str(keys_config))
    assert rc == 1 and f"no keystore at {tmp_path / 'data' / 'keystore.json'}" in err and "keys new" in err


# --- shared by the commands below -------------------------------------------------------------------------

NODE_PASSWORD = "node test password"


restore_logging = pytest.fixture(autouse=True)(restore_root_logging)  # main() sets up logging


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPUNODE_* from the developer's shell; wide tables; cheap keystore kdf."""
    from node.chain import keys

    for name in [n for n in os.environ if n.startswith("GPUNODE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(keys, "create_keystore", functools.partial(keys.create_keystore, iterations=16))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    for secret in (NODE_PASSWORD, KEYS_PASSWORD, SPEC_KEY_HEX):
        assert secret not in out + err
    return rc, out, err


def one_error_line(err: str, command: str) -> str:
    """An expected failure: 'gpunode <cmd>: error: ...' (plus at most a hint line), never a traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"gpunode {command}: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: ")
    return lines[0]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- gpunode init -----------------------------------------------------------------------------------------


def test_init_non_interactive_writes_a_config_the_loader_accepts(clean_env, tmp_path: Path, capsys) -> None:
    from node.chain.keys import keystore_info, load_signer
    from node.config import load_settings

    pw = tmp_path / "pw.txt"
    pw.write_text(NODE_PASSWORD + "\n")
    config = tmp_path / "etc" / "config.toml"
    payout = "0x000000000000000000000000000000000000dEaD"
    argv = ["init", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--rpc", "http://127.0.0.1:9545",
            "--rpc", "https://b.example,https://c.example", "--chain-id", "11155111", "--payout", payout,
            "--password-file", str(pw), "--non-interactive"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    settings = load_settings(config, env={})
    assert settings.node.data_dir == tmp_path / "data"
    assert settings.chain.rpc_urls == ("http://127.0.0.1:9545", "https://b.example", "https://c.example")
    assert settings.chain.chain_id == 11155111
    assert settings.chain.deployments == Path.cwd() / "deployments" / "11155111.json"
    assert settings.payout.address == payout.lower() and settings.wallet.password_file == pw
    assert settings.wallet.keystore == tmp_path / "data" / "keystore.json"
    text = config.read_text()
    assert "[api]" not in text and "[pricing]" not in text  # only the keys given (plus the keystore path)
    assert text.count("\n# ") >= 6  # each key under its comment

    [address] = re.findall(r"^address\s+(0x[0-9a-fA-F]{40}) \(new key\)$", out, re.M)
    assert load_signer(settings.wallet.keystore, NODE_PASSWORD).address == address
    assert keystore_info(settings.wallet.keystore).mode == 0o600
    assert f"export GPUNODE_CONFIG={config}" in out and "does not exist yet" in out

    before = config.read_bytes()
    rc, _, err = run_cli(capsys, *argv)  # never replaces a config without --force
    assert rc == 1 and "refusing to overwrite existing" in one_error_line(err, "init") and "--force" in err
    assert config.read_bytes() == before

    rc, out, err = run_cli(capsys, *argv[:-1], "--force", "--chain-id", "31337")
    assert rc == 0, err
    assert f"address  {address} (existing keystore, unlocked)" in out  # the key is reused, never overwritten
    assert load_settings(config, env={}).chain.chain_id == 31337


def test_init_imports_a_raw_key_or_a_keystore_and_refuses_the_key_as_payout(clean_env, tmp_path: Path,
                                                                          capsys, monkeypatch) -> None:
    from eth_account import Account

    monkeypatch.setenv("GPUNODE_WALLET_PASSWORD", NODE_PASSWORD)
    key_file = tmp_path / "key.txt"
    key_file.write_text(SPEC_KEY_HEX + "\n")
    config = tmp_path / "a.toml"
    base = ["init", "--config", str(config), "--data-dir", str(tmp_path / "a"), "--import-key-file", str(key_file)]
    rc, _, err = run_cli(capsys, *base, "--payout", SPEC_ADDRESS)
    assert rc == 1 and "is the node's own key" in one_error_line(err, "init")
    assert not config.exists()  # nothing half-written...
    rc, out, err = run_cli(capsys, *base[:-2], "--payout", "0x" + "11" * 20)  # ...and the kept key is reused
    assert rc == 0 and f"address  {SPEC_ADDRESS} (existing keystore, unlocked)" in out, err

    config.unlink()
    rc, _, err = run_cli(capsys, *base)  # importing onto an existing keystore is refused
    assert rc == 1 and "refusing to overwrite existing" in one_error_line(err, "init")

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(Account.encrypt(bytes.fromhex(SPEC_KEY_HEX), NODE_PASSWORD, kdf="pbkdf2",
                                                  iterations=10)))
    rc, out, err = run_cli(capsys, "init", "--config", str(tmp_path / "b.toml"), "--data-dir", str(tmp_path / "b"),
                           "--import-key-file", str(foreign))
    assert rc == 0 and f"address  {SPEC_ADDRESS} (imported from {foreign})" in out, err
    assert (tmp_path / "b" / "keystore.json").read_bytes() == foreign.read_bytes()


def test_init_without_a_terminal_or_password_says_what_is_missing(clean_env, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    config = tmp_path / "config.toml"
    rc, _, err = run_cli(capsys, "init", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    line = one_error_line(err, "init")
    assert rc == 1 and "no keystore password" in line and "--password-file" in line
    assert "$GPUNODE_WALLET_PASSWORD" in line and "not a terminal" in err
    assert not config.exists() and not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []  # not even the temporary config is left

    rc, _, err = run_cli(capsys, "init", "--config", str(config), "--rpc", "ftp://x", "--non-interactive")
    assert rc == 1 and "chain.rpc_urls" in err and str(config) in err and ".tmp" not in err
    with pytest.raises(SystemExit) as exc:
        main(["init", "--payout", "0x1234"])
    assert exc.value.code == 2
    assert main(["init", "--import-key-file", SPEC_KEY_HEX]) == 2  # a key on the command line is refused
    capsys.readouterr()


def test_init_on_a_terminal_asks_for_what_no_flag_gave(clean_env, tmp_path: Path, capsys, monkeypatch) -> None:
    import builtins

    from node.config import load_settings

    monkeypatch.setattr(sys, "stdin", FakeTTY())
    answers = {"data directory": str(tmp_path / "node"), "RPC URL": "", "chain id": "",
               "deployments file": str(tmp_path / "dep.json"), "payout address": "0x" + "22" * 20}
    asked: list[str] = []

    def fake_input(prompt: str) -> str:
        asked.append(prompt)
        return next(v for k, v in answers.items() if prompt.startswith(k))

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": NODE_PASSWORD)
    config = tmp_path / "config.toml"
    rc, out, err = run_cli(capsys, "init", "--config", str(config), "--chain-id", "31337")
    assert rc == 0, err
    assert not any(p.startswith("chain id") for p in asked)  # given by a flag, so not asked
    assert any("[http://127.0.0.1:8545]" in p for p in asked)  # each prompt shows its default
    settings = load_settings(config, env={})
    assert settings.node.data_dir == tmp_path / "node" and settings.chain.deployments == tmp_path / "dep.json"
    assert settings.chain.rpc_urls == ("http://127.0.0.1:8545",) and settings.payout.address == "0x" + "22" * 20
    assert (tmp_path / "node" / "keystore.json").exists() and "(new key)" in out


# --- gpunode register / withdraw (against the conftest anvil) ---------------------------------------------


def fake_attestation(path: Path, int8_tops: float = 1.5) -> dict:
    """A CPU attestation as `gpunode bench` writes it (figures made up, hash real)."""
    from node.compute.bench import attestation_hash

    att = {"version": 1, "created": "2025-01-01T00:00:00+00:00",
           "machine": {"source": "cpu", "cpu": {"model": "Test CPU"}, "gpus": []},
           "devices": [{"device": "cpu", "name": "Test CPU", "int8_tops": int8_tops, "float_kind": "fp32",
                        "float_tflops": 0.25, "peak_int8_tops": None, "peak_bf16_tflops": None, "measurements": []}],
           "int8_proof": {"workload": "matmul-int8/v1"}}
    att["benchmark_hash"] = "0x" + attestation_hash(att).hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(att))
    return att


def node_config(chain, tmp_path: Path, monkeypatch, *, key: int = 2, payout: str | None = "", extra: str = "",
                name: str = "config.toml") -> Path:
    """A config for operator dev key `key` (keystore in <tmp>/data), with the conftest deployment."""
    from node.chain.deployments import save_deployment
    from node.chain.keys import create_keystore

    save_deployment(chain.deployment, tmp_path / "deployments" / "31337.json")
    keystore = tmp_path / "data" / "keystore.json"
    if not keystore.exists():
        create_keystore(keystore, NODE_PASSWORD, private_key=bytes.fromhex(chain.keys[key][2:]), iterations=16)
    monkeypatch.setenv("CLI_NODE_PASSWORD", NODE_PASSWORD)
    payout = chain.addr(3) if payout == "" else payout
    config = tmp_path / name
    config.write_text(f"[node]\ndata_dir = 'data'\n[chain]\nrpc_urls = ['{chain.anvil.url}']\n"
                      f"deployments = 'deployments/31337.json'\n[wallet]\npassword_env = 'CLI_NODE_PASSWORD'\n"
                      + (f"[payout]\naddress = '{payout}'\n" if payout else "") + extra)
    return config


def on_chain(chain, operator: str) -> dict:
    from node.chain.fees import FeePolicy
    from node.chain.provider import OperatorChain

    return OperatorChain(chain.w3, chain.deployment, FeePolicy(10**12, 0)).provider(operator)


def test_register_measures_registers_stakes_and_reruns_idempotently(chain, clean_env, tmp_path, capsys,
                                                                      monkeypatch) -> None:
    config = node_config(chain, tmp_path, monkeypatch)
    op = chain.addr(2)
    rc, out, err = run_cli(capsys, "register", "--config", str(config), "--stake", "100")
    assert rc == 0, err
    bench = json.loads((tmp_path / "data" / "bench.json").read_text())  # measured (quick) because it was missing
    assert "running a quick one" in out and "registered" in out and "staked 100 tokens" in out
    p = on_chain(chain, op)
    assert p["active"] and p["payout"] == chain.addr(3) and p["stake"] == 100 * 10**18
    assert p["priceFloorPerGpuSecond"] == 10**14  # pricing.price_per_gpu_second "0.0001"
    assert p["endpoint"] == "http://127.0.0.1:8600"
    model, count, vram, int8_milli, _bf16, bench_hash = p["capacity"]
    assert count == len(bench["devices"]) == 1 and model.startswith("cpu (") and vram == 0
    assert int8_milli == round(bench["devices"][0]["int8_tops"] * 1000) and "0x" + bench_hash.hex() == \
        bench["benchmark_hash"]
    assert re.search(r"gas [\d,]+", out)

    nonce = chain.w3.eth.get_transaction_count(op)
    rc, out, err = run_cli(capsys, "register", "--config", str(config), "--stake", "100")
    assert rc == 0 and "nothing to update" in out and "nothing to stake" in out, err
    assert chain.w3.eth.get_transaction_count(op) == nonce  # a re-run sends nothing

    rc, out, err = run_cli(capsys, "register", "--config", str(config), "--stake", "150.5", "--price-floor", "0.0002",
                           "--endpoint", "https://node.example:8600")
    assert rc == 0, err
    assert "updated the provider record" in out and "price floor" in out and "endpoint" in out
    assert "staking the missing 50.5 tokens to reach 150.5 tokens" in out
    p = on_chain(chain, op)
    assert p["stake"] == 1505 * 10**17 and p["priceFloorPerGpuSecond"] == 2 * 10**14
    assert p["endpoint"] == "https://node.example:8600"
    assert chain.w3.eth.get_transaction_count(op) == nonce + 3  # update, approve, stake

    rc, out, _ = run_cli(capsys, "register", "--config", str(config), "--stake", "10", "--price-floor", "0.0002",
                         "--endpoint", "https://node.example:8600")
    assert rc == 0 and "150.5 tokens already" in out and "nothing to stake" in out
    assert on_chain(chain, op)["stake"] == 1505 * 10**17  # never reduced here


def test_register_errors_are_one_clear_line(chain, clean_env, tmp_path, capsys, monkeypatch) -> None:
    bench = tmp_path / "bench.json"
    fake_attestation(bench)

    def register(config: Path, *more: str) -> str:
        rc, _, err = run_cli(capsys, "register", "--config", str(config), "--bench", str(bench), *more)
        assert rc == 1
        return one_error_line(err, "register")

    assert "no payout address" in register(node_config(chain, tmp_path, monkeypatch, payout=None))
    own = node_config(chain, tmp_path, monkeypatch, payout=chain.addr(2))
    assert "payout address must be another address than the operator" in register(own)
    assert not on_chain(chain, chain.addr(2))["active"]  # refused before anything was sent

    config = node_config(chain, tmp_path, monkeypatch)
    assert "at most 18 decimal places" in register(config, "--stake", "0.0000000000000000001")
    tampered = json.loads(bench.read_text())
    tampered["devices"][0]["int8_tops"] = 999.0
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    assert "was changed after it was measured" in register(config, "--bench", str(tmp_path / "tampered.json"))
    assert "no bench attestation at" in register(config, "--bench", str(tmp_path / "missing.json"))
    (tmp_path / "c5.toml").write_text(config.read_text().replace("[chain]\n", "[chain]\nchain_id = 5\n"))
    assert f"{chain.anvil.url} is chain 31337, but chain.chain_id is 5" in register(tmp_path / "c5.toml")
    dead = config.read_text().replace(chain.anvil.url, f"http://127.0.0.1:{closed_port()}")
    (tmp_path / "dead.toml").write_text(dead)
    assert "no RPC endpoint answered" in register(tmp_path / "dead.toml")
    (tmp_path / "deployments" / "31337.json").unlink()
    assert "not found (deploy first" in register(config)

    bad = tmp_path / "bad.toml"
    bad.write_text("[chain]\nconfirmations = -1\n")
    rc, _, err = run_cli(capsys, "register", "--config", str(bad))
    assert rc == 1 and "configuration is invalid" in err and "chain.confirmations" in err and "Traceback" not in err


def test_register_without_tokens_to_stake_says_how_much_is_missing(chain, clean_env, tmp_path, capsys,
                                                                      monkeypatch) -> None:
    config = node_config(chain, tmp_path, monkeypatch, key=7)  # dev account 7 has ETH for gas but no tokens
    fake_attestation(tmp_path / "data" / "bench.json")
    rc, out, err = run_cli(capsys, "register", "--config", str(config), "--stake", "1")
    assert rc == 1 and "registered" in out  # the record is on chain; a re-run after funding only stakes
    line = one_error_line(err, "register")
    assert "staking 1 tokens more" in line and "which holds 0 tokens" in line


def test_withdraw_moves_earnings_to_the_payout_address_once(chain, clean_env, tmp_path, capsys,
                                                              monkeypatch) -> None:
    from eth_utils import keccak

    from node.chain.offers import ZERO_ADDRESS, JobOffer, workload_id
    from tests.conftest import FEE_BPS, TOKEN, WINDOW

    config = node_config(chain, tmp_path, monkeypatch)
    fake_attestation(tmp_path / "data" / "bench.json")
    assert run_cli(capsys, "withdraw", "--config", str(config))[1].startswith("nothing to withdraw")
    assert run_cli(capsys, "register", "--config", str(config), "--stake", "100")[0] == 0
    p, payout = chain.proto, chain.addr(3)
    p.approve(chain.keys[1], p.market.address, 2**256 - 1)
    params = b'{"m":64,"k":64,"n":64,"seed":1}'  # one job, posted, claimed, submitted and finalized
    now = chain.w3.eth.get_block("latest")["timestamp"]
    offer = JobOffer(requester=chain.addr(1), provider=ZERO_ADDRESS, workload=workload_id("matmul-int8/v1"),
                     paramsHash=keccak(params), inputHash=b"\0" * 32, inputURI="", payment=50 * TOKEN,
                     providerBond=5 * TOKEN, maxDuration=3600, expiry=now + 600, nonce=0)
    p.post(chain.keys[1], offer, params, p.sign(chain.keys[1], offer))
    p.claim(chain.keys[2], p.job_id(offer))
    p.submit(chain.keys[2], p.job_id(offer), keccak(b"result"), 4096, "")
    chain.advance(WINDOW)
    p.finalize(chain.keys[1], p.job_id(offer))
    earned = 50 * TOKEN - 50 * TOKEN * FEE_BPS // 10_000
    before = p.balance(payout)
    assert p.withdrawable(payout) == earned

    rc, out, err = run_cli(capsys, "withdraw", "--config", str(config))
    assert rc == 0, err
    assert f"withdrew {earned / TOKEN:g} tokens to {payout}" in out and "withdrawFor: gas" in out
    assert p.balance(payout) == before + earned and p.withdrawable(payout) == 0
    nonce = chain.w3.eth.get_transaction_count(chain.addr(2))
    rc, out, err = run_cli(capsys, "withdraw", "--config", str(config))
    assert rc == 0 and out.startswith(f"nothing to withdraw: {payout} has no earnings") and err == ""
    assert chain.w3.eth.get_transaction_count(chain.addr(2)) == nonce


# --- gpunode status / jobs (a real HTTP server with canned answers) ---------------------------------------

JOB_A = "0x" + "ab" * 32
STATUS = {
    "node": {"name": "rig-1", "version": "0.1.0", "provider": "0x" + "aa" * 20, "payout": "0x" + "bb" * 20,
             "chain_id": 31337, "market": "0x" + "cc" * 20, "started_at": 1700000000, "uptime_s": 93784.2,
             "accepting": True, "draining": False},
    "chain": {"head": 4321, "endpoints": [{"url": "http://rpc.example", "healthy": True, "answered": 10,
                                           "failed": 0, "last_error": None}]},
    "devices": [{"name": "cuda:0", "busy_job": JOB_A, "idle": False, "utilization_pct": 97.0, "foreign_pids": [],
                 "reason": "running our job"},
                {"name": "cuda:1", "busy_job": None, "idle": False, "utilization_pct": 55.5, "foreign_pids": [4242],
                 "reason": "foreign process 4242"}],
    "jobs": {"by_state": {"submitted": 2, "finalized": 5}, "open": 2, "overdue": [JOB_A]},
    "earnings": {"token_decimals": 18, "finalized_units": "48750000000000000000", "withdrawn_units": "0",
                 "pending_units": "48750000000000000000"},
    "tasks": {"follower": {"running": True, "restarts": 0, "last_error": None},
              "settler": {"running": False, "restarts": 2, "last_error": "RPC timeout [red]x[/red]"}},
}
JOBS = {"jobs": [{"job_id": JOB_A, "state": "submitted", "requester": "0x" + "dd" * 20, "provider": "0x" + "aa" * 20,
                  "workload": "matmul-int8/v1", "payment": "2500000000000000000", "bond": "0", "deadline": None,
                  "expiry": 1700000600, "source": "chain", "device": "cuda:0", "result_root": None,
                  "reason": "result root on chain [ok]", "code": None, "created": 1700000000.5,
                  "updated": 1700000100.25}]}


@pytest.fixture
def canned_api():
    """A real HTTP server on a free loopback port answering /status and /jobs with the canned documents."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            paths.append(self.path)
            route = self.path.split("?")[0]
            status, body = {"/status": (200, STATUS), "/jobs": (200, JOBS)}.get(
                route, (500, {"error": "internal", "detail": "database is locked"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()


def test_status_renders_the_node_api_and_passes_json_through(clean_env, tmp_path, capsys, canned_api) -> None:
    port, paths = canned_api
    config = tmp_path / "config.toml"
    config.write_text(f"[api]\nport = {port}\n")  # the node's API address comes from the config
    rc, out, err = run_cli(capsys, "status", "--config", str(config))
    assert rc == 0 and err == "" and paths == ["/status"]
    for text in ("rig-1", "0x" + "aa" * 20, "4321", "1d 2h 3m 4s", "accepting jobs", "http://rpc.example (ok)",
                 "cuda:0", "0xababababab…", "foreign process 4242", "4242", "submitted", "finalized",
                 "48.75", "overdue: 0xababababab…", "settler", "RPC timeout [red]x[/red]"):
        assert text in out, text
    rc, out, _ = run_cli(capsys, "status", "--json", "--url", f"http://127.0.0.1:{port}/")
    assert rc == 0 and json.loads(out) == STATUS


def test_jobs_lists_with_filters_in_tokens(clean_env, tmp_path, capsys, canned_api) -> None:
    port, paths = canned_api
    url = f"http://127.0.0.1:{port}"
    rc, out, err = run_cli(capsys, "jobs", "--url", url, "--state", "submitted", "--limit", "5")
    assert rc == 0 and err == ""
    assert paths[-1] == "/jobs?state=submitted&limit=5"
    assert "1 job" in out and "0xababababab…" in out and "matmul-int8/v1" in out and "2.5" in out
    assert "result root on chain [ok]" in out and "cuda:0" in out
    rc, out, _ = run_cli(capsys, "jobs", "--url", url, "--json")
    assert rc == 0 and json.loads(out) == JOBS and paths[-1] == "/jobs"
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--state", "nonsense"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_status_when_the_node_is_down_or_failing_is_one_line(clean_env, tmp_path, capsys, canned_api) -> None:
    port = closed_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[api]\nport = {port}\n")
    rc, out, err = run_cli(capsys, "status", "--config", str(config))
    assert rc == 1 and out == ""
    assert err.strip() == (f"gpunode status: cannot reach the node at http://127.0.0.1:{port} (connection refused) "
                           "— is `gpunode run` running? (api.host/api.port in config)")
    config.write_text("[api]\nenabled = false\n")
    rc, _, err = run_cli(capsys, "jobs", "--config", str(config))
    assert rc == 1 and "api.enabled = false" in one_error_line(err, "jobs")

    up, _ = canned_api
    rc, _, err = run_cli(capsys, "status", "--url", f"http://127.0.0.1:{up}/broken")
    assert rc == 1 and "answered HTTP 500 for /status: database is locked" in one_error_line(err, "status")


# --- gpunode run, --debug, devnet ------------------------------------------------------------------------


def test_run_hands_the_settings_to_the_service(clean_env, tmp_path, capsys, monkeypatch) -> None:
    import types

    from node.config import Settings

    calls: list[tuple[Settings, bool]] = []
    fake = types.ModuleType("node.service")

    def run_node(settings: Settings, *, debug: bool = False) -> int:
        calls.append((settings, debug))
        return 7

    fake.run_node = run_node
    monkeypatch.setitem(sys.modules, "node.service", fake)
    config = tmp_path / "config.toml"
    config.write_text("[node]\nname = 'rig-7'\n")
    assert main(["run", "--config", str(config)]) == 7
    assert main(["--debug", "run", "--config", str(config)]) == 7
    assert main(["run", "--config", str(config), "--debug"]) == 7
    assert [(s.node.name, d) for s, d in calls] == [("rig-7", False), ("rig-7", True), ("rig-7", True)]


def test_failures_are_one_line_unless_debug(clean_env, tmp_path, capsys, monkeypatch) -> None:
    import types

    class StartupError(RuntimeError):
        pass

    fake = types.ModuleType("node.service")
    errors = iter([StartupError("wallet.keystore is not set: create one with `gpunode init`"),
                   KeyError("surprise"), KeyError("surprise")])

    def run_node(settings, *, debug=False):
        raise next(errors)

    fake.run_node = run_node
    monkeypatch.setitem(sys.modules, "node.service", fake)
    config = tmp_path / "config.toml"
    config.write_text("")
    rc, _, err = run_cli(capsys, "run", "--config", str(config))
    assert rc == 1 and err.strip() == "gpunode run: error: wallet.keystore is not set: create one with `gpunode init`"
    rc, _, err = run_cli(capsys, "run", "--config", str(config))
    assert rc == 1 and one_error_line(err, "run") == "gpunode run: error: KeyError: 'surprise'"
    assert "--debug" in err
    rc, _, err = run_cli(capsys, "--debug", "run", "--config", str(config))
    assert rc == 1 and "Traceback (most recent call last)" in err and "KeyError: 'surprise'" in err


def test_devnet_passes_its_arguments_to_the_devnet_script(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["devnet", "--help"])
    assert exc.value.code == 0
    assert "--accounts" in capsys.readouterr().out  # scripts/devnet.py's own help
    with pytest.raises(SystemExit) as exc:
        main(["status", "--accounts", "1"])  # unknown options stay errors for every other command
    assert exc.value.code == 2
    capsys.readouterr()

    import signal

    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "devnet", "--accounts", "1", "--deployments-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C stops anvil" in line:
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C, whenever it comes, stops anvil and exits 0
        rest = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(seen) + rest
    dep = json.loads((tmp_path / "31337.json").read_text())
    assert dep["chain_id"] == 31337 and any(dep["market"] in line for line in seen)


def test_capacity_from_a_gpu_attestation_sums_devices_and_reads_vram_from_nvml() -> None:
    from node.chain.protocol import Capacity
    from node.chain.provider import capacity_from_attestation, detected_vram_mib
    from tests.compute.test_hardware import MEMORY, MIB, FakeNvml

    gpu = {"name": "NVIDIA H100 80GB HBM3", "int8_tops": 1000.5, "float_kind": "bf16", "float_tflops": 600.25}
    att = {"devices": [{"device": "cuda:0", **gpu}, {"device": "cuda:1", **gpu}], "benchmark_hash": "0x" + "12" * 32}
    vram = detected_vram_mib(att, nvml=FakeNvml(devices=1))
    assert vram == MEMORY["gpu0"].total // MIB == 81920
    assert capacity_from_attestation(att, vram) == Capacity("NVIDIA H100 80GB HBM3", 2, 81920, 2_001_000, 1_200_500,
                                                            bytes.fromhex("12" * 32))
    cpu = {"devices": [{"device": "cpu", "name": "EPYC", "int8_tops": 0.5, "float_kind": "fp32", "float_tflops": 1.0}],
           "benchmark_hash": "0x" + "34" * 32}
    assert detected_vram_mib(cpu, nvml=FakeNvml(devices=1)) == 0  # a CPU node has no VRAM to claim
    assert capacity_from_attestation(cpu).as_struct()[:5] == ("cpu (EPYC)", 1, 0, 500, 0)  # fp32 is not bf16
