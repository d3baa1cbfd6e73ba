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
from node.cli import PENDING, main


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


def test_pending_commands_say_so(capsys):
    for name in PENDING:
        assert main([name]) == 2
        assert "not available" in capsys.readouterr().err


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
