"""Tests for node.config: the example file, validation messages and environment overrides."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from node.config import (
    ConfigError,
    Settings,
    default_settings,
    load_settings,
    raw_defaults,
    read_wallet_password,
    to_base_units,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
ADDR = "0x" + "ab" * 20


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str = "", env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env=env or {})
    assert str(exc.value) == "\n".join(exc.value.problems)
    return exc.value.problems


def section_keys() -> dict[str, set[str]]:
    return {
        f.name: {k.name for k in dataclasses.fields(f.default_factory)}  # type: ignore[arg-type]
        for f in dataclasses.fields(Settings)
    }


# --- the example file ----------------------------------------------------------------------------------


def test_example_loads_to_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative defaults anchor at the working directory, relative file values at the file's directory;
    # from the example's own directory both are the same place.
    monkeypatch.chdir(EXAMPLE.parent)
    assert load_settings(EXAMPLE, env={}) == default_settings()


def test_example_values_are_the_declared_defaults() -> None:
    assert tomllib.loads(EXAMPLE.read_text(encoding="utf-8")) == raw_defaults()


def test_example_and_dataclasses_have_the_same_keys() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    expected = section_keys()
    assert set(example) == set(expected)
    for section, keys in expected.items():
        assert set(example[section]) == keys, section


def test_every_example_key_is_annotated() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = default_settings()
    assert s == load_settings(None, env={})
    assert s.node.data_dir == tmp_path / "home" / ".gpunode"
    assert s.chain.deployments == tmp_path / "deployments" / "31337.json"
    assert s.chain.rpc_urls == ("http://127.0.0.1:8545",)
    assert s.chain.start_block is None
    assert s.wallet.keystore is None and s.wallet.password_file is None
    assert s.pricing.price_per_gpu_second == Decimal("0.0001")
    assert s.pricing.price_per_gpu_second_units == 10**14
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.api.port = 1  # type: ignore[misc]


# --- unknown names ---------------------------------------------------------------------------------------


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "[chain]\nrpc_url = ['http://x']\n")
    assert msg.startswith(f"{tmp_path / 'config.toml'}: chain.rpc_url: unknown key")
    assert "rpc_urls" in msg  # did-you-mean hint


def test_unknown_section_names_file_and_section(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "[chian]\nchain_id = 1\n")
    assert msg.startswith(f"{tmp_path / 'config.toml'}: chian: unknown section")
    assert "chain" in msg


def test_section_must_be_a_table(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "api = 5\n")
    assert ": api: must be a table" in msg


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "[api\n")
    assert "config.toml: invalid TOML" in msg
    with pytest.raises(ConfigError, match="missing.toml: cannot read config file"):
        load_settings(tmp_path / "missing.toml", env={})


# --- bad values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "assignment", "key", "expected"),
    [
        ("chain", "confirmations = -1", "chain.confirmations", "must be an integer in 0..64, got -1"),
        ("chain", "confirmations = 'one'", "chain.confirmations", "must be an integer in 0..64, got 'one'"),
        ("chain", "confirmations = true", "chain.confirmations", "got True"),
        ("chain", "chain_id = 0", "chain.chain_id", "must be an integer >= 1, got 0"),
        ("chain", "poll_interval_s = 0", "chain.poll_interval_s", "must be a number > 0 and <= 60"),
        ("chain", "poll_interval_s = 61.0", "chain.poll_interval_s", "got 61.0"),
        ("chain", "poll_interval_s = nan", "chain.poll_interval_s", "got nan"),
        ("chain", "rpc_urls = []", "chain.rpc_urls", "must be a non-empty list, each item a URL (http:// or https://)"),
        ("chain", "rpc_urls = 'http://x'", "chain.rpc_urls", "non-empty list"),
        ("chain", "rpc_urls = ['http://ok', 'ftp://x']", "chain.rpc_urls[1]", "got 'ftp://x'"),
        ("chain", "rpc_urls = ['http://']", "chain.rpc_urls[0]", "a URL (http:// or https://)"),
        ("chain", "rpc_urls = ['http://x:99999']", "chain.rpc_urls[0]", "URL"),
        ("chain", "ws_url = 'http://x'", "chain.ws_url", "must be empty or a URL (ws:// or wss://)"),
        ("chain", "start_block = -5", "chain.start_block", "got -5"),
        ("chain", "start_block = 'latest'", "chain.start_block", "got 'latest'"),
        ("node", "log_level = 'verbose'", "node.log_level", "must be one of debug, info, warning, error"),
        ("node", "log_json = 'yes'", "node.log_json", "must be true or false"),
        ("node", f"name = '{'x' * 65}'", "node.name", "at most 64"),
        ("node", "data_dir = ''", "node.data_dir", "must be a file system path"),
        ("wallet", "keystore = 3", "wallet.keystore", "got 3"),
        ("hardware", "devices = ['all', 0]", "hardware.devices", "got ['all', 0]"),
        ("hardware", "devices = [-1]", "hardware.devices[0]", "got -1"),
        ("hardware", "devices = ['gpu0']", "hardware.devices[0]", '"GPU-..." UUID'),
        ("hardware", "gpu_memory_fraction = 1.5", "hardware.gpu_memory_fraction", "<= 1"),
        ("hardware", "cpu_worker_memory_mb = 100", "hardware.cpu_worker_memory_mb", ">= 256"),
        ("hardware", "idle_utilization_pct = 101", "hardware.idle_utilization_pct", "0..100"),
        ("pricing", "price_per_gpu_second = 0.1", "pricing.price_per_gpu_second", "quoted string"),
        ("pricing", "price_per_gpu_second = '-1'", "pricing.price_per_gpu_second", ">= 0"),
        ("pricing", "price_per_gpu_second = 'cheap'", "pricing.price_per_gpu_second", "got 'cheap'"),
        ("pricing", "price_per_gpu_second = 'NaN'", "pricing.price_per_gpu_second", "got 'NaN'"),
        ("pricing", "token_decimals = 37", "pricing.token_decimals", "0..36"),
        ("policy", "workloads = ['matmul']", "policy.workloads[0]", '"name/vN"'),
        ("policy", "allow_requesters = ['0x1234']", "policy.allow_requesters[0]", "40 hex digits"),
        ("policy", f"deny_requesters = ['{ADDR[2:]}']", "policy.deny_requesters[0]", "0x-prefixed"),
        ("policy", "max_input_bytes = 0", "policy.max_input_bytes", ">= 1"),
        ("api", "port = 0", "api.port", "1..65535"),
        ("api", "port = 65536", "api.port", "got 65536"),
        ("api", "host = ''", "api.host", "host name"),
        ("api", "public_url = 'node.example.com'", "api.public_url", "empty or a URL (http:// or https://)"),
        ("payout", "address = '0xzz'", "payout.address", "must be empty or a 0x-prefixed address"),
        ("payout", "max_gas_gwei = 0", "payout.max_gas_gwei", "> 0"),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, section: str, assignment: str, key: str,
                                      expected: str) -> None:
    [msg] = errors(tmp_path, f"[{section}]\n{assignment}\n")
    assert msg.startswith(f"{tmp_path / 'config.toml'}: {key}: must be "), msg
    assert expected in msg


def test_message_format_matches_documentation(tmp_path: Path) -> None:
    path = write(tmp_path, "[chain]\nconfirmations = -1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert str(exc.value) == f"{path}: chain.confirmations: must be an integer in 0..64, got -1"


def test_priority_fee_above_max_fee(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "[chain]\nmax_fee_gwei = 5\npriority_fee_gwei = 6\n")
    expected = "chain.priority_fee_gwei: must be <= chain.max_fee_gwei (5), got 6.0"
    assert msg == f"{tmp_path / 'config.toml'}: {expected}"


def test_cross_check_blames_the_source_that_changed(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "", env={"GPUNODE_CHAIN_MAX_FEE_GWEI": "0.5"})
    assert msg.startswith("env GPUNODE_CHAIN_MAX_FEE_GWEI: chain.priority_fee_gwei: must be <=")


def test_amount_finer_than_token_decimals(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "[pricing]\ntoken_decimals = 6\nprice_per_gpu_second = '0.0000001'\n")
    assert "pricing.price_per_gpu_second: must have at most 6 decimal places" in msg
    path = write(tmp_path, "[pricing]\ntoken_decimals = 6\nprice_per_gpu_second = '0.25'\n")
    s = load_settings(path, env={})
    assert s.pricing.price_per_gpu_second_units == 250_000


def test_requester_in_both_lists(tmp_path: Path) -> None:
    upper = "0x" + "AB" * 20
    [msg] = errors(tmp_path, f"[policy]\nallow_requesters = ['{ADDR}']\ndeny_requesters = ['{upper}']\n")
    assert "policy.deny_requesters: must not repeat an address of policy.allow_requesters" in msg


def test_all_problems_reported_together(tmp_path: Path) -> None:
    problems = errors(
        tmp_path,
        "bogus = 1\n"
        "[chain]\nconfirmations = 99\nrpc_urls = ['ftp://a', 'nope']\n"
        "max_fee_gwei = 1.0\npriority_fee_gwei = 2.0\n"
        "[api]\nport = 'http'\ncolour = 'blue'\n",
        env={"GPUNODE_NODE_LOG_LEVEL": "loud", "GPUNODE_NOPE": "1"},
    )
    joined = "\n".join(problems)
    for needle in (
        "bogus: unknown section", "chain.confirmations:", "chain.rpc_urls[0]:", "chain.rpc_urls[1]:",
        "chain.priority_fee_gwei:", "api.port:", "api.colour: unknown key",
        "env GPUNODE_NODE_LOG_LEVEL: node.log_level:", "env GPUNODE_NOPE: unknown variable",
    ):
        assert needle in joined, needle
    assert len(problems) == 9


# --- environment -----------------------------------------------------------------------------------------


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 9000\n[hardware]\nidle_only = false\n")
    s = load_settings(path, env={
        "GPUNODE_API_PORT": "9100",
        "GPUNODE_HARDWARE_IDLE_ONLY": "yes",
        "GPUNODE_API_ENABLED": "0",
        "GPUNODE_CHAIN_RPC_URLS": "https://a.example, https://b.example:8545,",
        "GPUNODE_CHAIN_POLL_INTERVAL_S": "0.5",
        "GPUNODE_HARDWARE_DEVICES": "0,GPU-1234-abcd",
        "GPUNODE_CHAIN_START_BLOCK": "123",
        "GPUNODE_PRICING_PRICE_PER_GPU_SECOND": "0.5",
        "GPUNODE_NODE_NAME": "rig 1",
        "PATH": "/usr/bin",  # unrelated variables are ignored
    })
    assert s.api.port == 9100
    assert s.hardware.idle_only is True
    assert s.api.enabled is False
    assert s.chain.rpc_urls == ("https://a.example", "https://b.example:8545")
    assert s.chain.poll_interval_s == 0.5
    assert s.hardware.devices == (0, "GPU-1234-abcd")
    assert s.chain.start_block == 123
    assert s.pricing.price_per_gpu_second == Decimal("0.5")
    assert s.node.name == "rig 1"


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("GPUNODE_API_PORT", "eighty", "api.port"),
        ("GPUNODE_API_PORT", "70000", "api.port"),
        ("GPUNODE_NODE_LOG_JSON", "maybe", "node.log_json"),
        ("GPUNODE_CHAIN_POLL_INTERVAL_S", "fast", "chain.poll_interval_s"),
        ("GPUNODE_CHAIN_RPC_URLS", "", "chain.rpc_urls"),
    ],
)
def test_bad_env_value_names_variable_and_key(tmp_path: Path, name: str, value: str, key: str) -> None:
    [msg] = errors(tmp_path, "", env={name: value})
    assert msg.startswith(f"env {name}: {key}: must be "), msg


def test_unknown_gpunode_variable_is_an_error(tmp_path: Path) -> None:
    [msg] = errors(tmp_path, "", env={"GPUNODE_API_PROT": "1"})
    assert msg.startswith("env GPUNODE_API_PROT: unknown variable")
    assert "GPUNODE_API_PORT" in msg


def test_non_setting_variables_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 9001\n")
    # every password variable the tools read may sit in one secrets file beside the node's own settings
    s = load_settings(None, env={"GPUNODE_CONFIG": str(path), "GPUNODE_WALLET_PASSWORD": "pw",
                                 "GPUNODE_PAYOUT_PASSWORD": "pw2", "GPUNODE_REQUESTER_PASSWORD": "pw3"})
    assert s.api.port == 9001


def test_config_variable_pointing_nowhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file \\(named by GPUNODE_CONFIG\\)"):
        load_settings(None, env={"GPUNODE_CONFIG": str(tmp_path / "nope.toml")})


def test_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GPUNODE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GPUNODE_API_PORT", "8700")
    assert load_settings(write(tmp_path, "")).api.port == 8700


# --- paths, addresses, secrets ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_file_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(conf_dir, "[wallet]\nkeystore = 'keys/node.json'\n[node]\ndata_dir = '~/data'\n"
                           "[chain]\ndeployments = '/abs/d.json'\n")
    s = load_settings(path, env={"GPUNODE_WALLET_PASSWORD_FILE": "pw.txt"})
    assert s.wallet.keystore == conf_dir / "keys" / "node.json"
    assert s.node.data_dir == tmp_path / "home" / "data"
    assert s.chain.deployments == Path("/abs/d.json")
    assert s.wallet.password_file == tmp_path / "pw.txt"  # from the environment: working directory


def test_empty_deployments_follows_chain_id(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[chain]\nchain_id = 8453\ndeployments = ''\n"), env={})
    assert s.chain.deployments == tmp_path / "deployments" / "8453.json"


def test_addresses_are_stored_lowercase(tmp_path: Path) -> None:
    upper = "0x" + "AB" * 20
    path = write(tmp_path, f"[policy]\nallow_requesters = ['{upper}']\n[payout]\naddress = '{upper}'\n")
    s = load_settings(path, env={})
    assert s.policy.allow_requesters == (ADDR,)
    assert s.payout.address == ADDR


def test_password_never_in_settings(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    pw_file = write(tmp_path, secret + "\n", name="pw.txt")
    path = write(tmp_path, "[wallet]\npassword_file = 'pw.txt'\n")
    s = load_settings(path, env={"GPUNODE_WALLET_PASSWORD": secret})
    assert secret not in repr(s) and secret not in str(s)
    assert read_wallet_password(s, env={"GPUNODE_WALLET_PASSWORD": secret}) == secret
    assert read_wallet_password(s, env={}) == secret  # falls back to password_file
    assert s.wallet.password_file == pw_file
    assert read_wallet_password(default_settings(), env={}) is None
    pw_file.unlink()
    with pytest.raises(ConfigError, match="wallet.password_file"):
        read_wallet_password(s, env={})


def test_password_env_names_the_variable(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[wallet]\npassword_env = 'MY_NODE_PW'\n"), env={})
    assert s.wallet.password_env == "MY_NODE_PW"
    assert read_wallet_password(s, env={"MY_NODE_PW": "pw"}) == "pw"
    assert read_wallet_password(s, env={"GPUNODE_WALLET_PASSWORD": "pw"}) is None  # only the named one counts
    s = load_settings(write(tmp_path, ""), env={"GPUNODE_WALLET_PASSWORD_ENV": "_OTHER_PW"})
    assert read_wallet_password(s, env={"_OTHER_PW": "pw2"}) == "pw2"


@pytest.mark.parametrize("name", ["GPUNODE_MY_PW", "GPUNODE_API_PORT", "1PW", "MY-PW", "MY PW", ""])
def test_password_env_rejects_bad_names(tmp_path: Path, name: str) -> None:
    [msg] = errors(tmp_path, f"[wallet]\npassword_env = '{name}'\n")
    assert msg.startswith(f"{tmp_path / 'config.toml'}: wallet.password_env: must be an environment variable name")
    assert "not starting with GPUNODE_ unless it is GPUNODE_WALLET_PASSWORD" in msg and repr(name) in msg


def test_to_base_units() -> None:
    assert to_base_units(Decimal("1.5"), 18) == 1_500_000_000_000_000_000
    assert to_base_units(Decimal("123456789012345678901234567890.123456789012345678"), 18) == (
        123456789012345678901234567890123456789012345678
    )
    with pytest.raises(ValueError):
        to_base_units(Decimal("0.1"), 0)
