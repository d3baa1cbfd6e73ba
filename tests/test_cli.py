from __future__ import annotations

import subprocess
import sys

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
