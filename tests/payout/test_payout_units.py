"""The pieces around a payout run that need no chain: the systemd units (parse, name real commands, agree with
each other and with the exit codes), the command line's usage and config errors, and the scan state file."""

from __future__ import annotations

import configparser
import io
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_account import Account

from node.chain.keys import KeystoreError, create_keystore
from node.cli import build_parser as gpunode_parser
from node.config import default_settings, load_settings
from node.payout import cli
from node.payout.keys import payout_keys
from node.payout.report import ExitCode
from node.payout.scan import ScanState

UNITS = Path(__file__).resolve().parents[2] / "scripts" / "systemd"
MARKET, PROVIDER = "0x" + "11" * 20, "0x" + "22" * 20


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text(encoding="utf-8"))
    return parser


def exec_argv(parser: configparser.ConfigParser) -> list[str]:
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert Path(argv[0]).name == "gpunode"
    return argv[1:]


def test_the_node_unit_runs_the_node_and_outlasts_its_shutdown_grace() -> None:
    node = unit("gpunode.service")
    args = gpunode_parser().parse_args(exec_argv(node))
    assert args.command == "run"
    service = node["Service"]
    assert service["Restart"] == "on-failure" and service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > default_settings().node.shutdown_grace_s
    assert service["User"] != "root" and service["EnvironmentFile"].endswith("secrets.env")
    for hides_gpus in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert hides_gpus not in service, f"{hides_gpus} would hide /dev/nvidia*"


def test_the_payout_units_run_gpunode_payout_on_a_timer_and_accept_deferred_and_busy() -> None:
    service, timer = unit("gpunode-payout.service"), unit("gpunode-payout.timer")
    argv = exec_argv(service)
    assert argv[0] == "payout" and gpunode_parser().parse_known_args(argv)[0].command == "payout"
    cli.build_parser().parse_args(argv[1:])  # the options are ones the payout command takes
    assert service["Service"]["Type"] == "oneshot"
    assert {int(c) for c in service["Service"]["SuccessExitStatus"].split()} == {ExitCode.DEFERRED, ExitCode.BUSY}
    assert timer["Timer"]["Unit"] == "gpunode-payout.service" and timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"
    assert service["Service"]["User"] == unit("gpunode.service")["Service"]["User"]  # shares the data dir
    if shutil.which("systemd-analyze"):  # where systemd is at hand, let it check the files too
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, sorted(UNITS.iterdir()))],
                              capture_output=True, text=True, timeout=60)
        problems = [line for line in proc.stderr.splitlines()  # the install path does not exist here
                    if not line.endswith("/opt/gpunode/venv/bin/gpunode is not executable: No such file or directory")]
        assert not problems, proc.stderr


def run(*argv: str) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--wait", "-1"], ["--provider", "0x12"], ["--nope"]])
def test_bad_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    code, lines = run(*argv)
    assert code == 2 and lines == [] and "gpunode payout: error:" in capsys.readouterr().err


def test_a_bad_config_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[payout]\npassword_env = 'GPUNODE_SOMETHING'\nmax_gas_gwei = 0\n")
    code, lines = run("--config", str(config))
    assert code == 1 and [e["event"] for e in lines] == ["error", "summary"]
    assert "payout.password_env" in lines[0]["error"] and "payout.max_gas_gwei" in lines[0]["error"]
    assert lines[1]["outcome"] == "error" and lines[1]["sent"] == 0


def test_a_wrong_payout_password_is_reported_without_the_password(tmp_path: Path, monkeypatch) -> None:
    address = create_keystore(tmp_path / "hot.json", "right", private_key=Account.create().key, kdf="pbkdf2",
                              iterations=1000)
    config = tmp_path / "config.toml"
    config.write_text(f"[payout]\nkeystore = {json.dumps(str(tmp_path / 'hot.json'))}\n")
    monkeypatch.setenv("GPUNODE_PAYOUT_PASSWORD", "wrong-secret")
    settings = load_settings(config)
    with pytest.raises(KeystoreError) as info:
        payout_keys(settings, provider=PROVIDER, unlock=True)
    assert "wrong password" in str(info.value) and "wrong-secret" not in str(info.value)
    dry = payout_keys(settings, provider=PROVIDER, unlock=False)  # a dry run needs the address only
    assert dry.signer is None and dry.hot and dry.sender == address


def test_scan_state_round_trips_and_starts_afresh_for_another_provider_or_damage(tmp_path: Path) -> None:
    path = tmp_path / "payout-state.json"
    state = ScanState.load(path, chain_id=1, market=MARKET, provider=PROVIDER, start_block=100)
    assert (state.next_block, state.candidates) == (100, {})
    state.next_block, state.candidates = 250, {"0x" + "ab" * 32: 1234}
    state.save(path)
    again = ScanState.load(path, chain_id=1, market=MARKET, provider=PROVIDER, start_block=100)
    assert (again.next_block, again.candidates) == (250, {"0x" + "ab" * 32: 1234})
    other = ScanState.load(path, chain_id=1, market=MARKET, provider="0x" + "33" * 20, start_block=100)
    assert (other.next_block, other.candidates) == (100, {})
    assert ScanState.load(path, chain_id=5, market=MARKET, provider=PROVIDER, start_block=7).next_block == 7
    path.write_text("{not json")
    assert ScanState.load(path, chain_id=1, market=MARKET, provider=PROVIDER, start_block=100).next_block == 100
    assert [p.name for p in tmp_path.iterdir()] == ["payout-state.json"]  # no temp files left behind


def test_an_unreachable_rpc_is_an_error_line_without_the_urls_api_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
                      "[chain]\nrpc_urls = ['http://127.0.0.1:9/v2/SECRET-API-KEY']\nrequest_timeout_s = 2\n")
    code, lines = run("--config", str(config), "--provider", PROVIDER)
    assert code == 1 and lines[0]["event"] == "error" and "no RPC endpoint answered" in lines[0]["error"]
    assert "http://127.0.0.1:9" in lines[0]["error"] and "SECRET" not in json.dumps(lines)
