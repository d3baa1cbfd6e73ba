"""The requester's whole pipeline against a real provider: `gpunode request run` (in-process main) signs a
matmul offer over an input file it serves itself, pays by permit, sends it to a real `gpunode run` daemon,
follows it, downloads the result with a signed request, verifies it and accepts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from node.compute.workloads import save_safetensors
from node.requester.cli import main
from tests.e2e.nodenet import start_net

net = pytest.fixture(scope="module")(start_net)
REQUESTER, OPERATOR = 6, 5


def test_run_pipeline_against_a_real_node(net, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = torch.Generator().manual_seed(5)
    matrices = tmp_path / "ab.safetensors"
    save_safetensors({"A": torch.randint(-128, 128, (48, 64), generator=gen, dtype=torch.int8),
                      "B": torch.randint(-128, 128, (64, 40), generator=gen, dtype=torch.int8)}, str(matrices))
    key = tmp_path / "requester.key"
    key.write_text(net.keys[REQUESTER])
    node = net.node(tmp_path, OPERATOR).start()
    try:
        code = main(["run", "--rpc", net.anvil.url, "--deployments", str(net.deployments), "--key-file", str(key),
                     "--state-dir", str(tmp_path / "state"), "--json", "--input", str(matrices), "--serve",
                     "--payment", "2", "--duration", "15m", "--expires-in", "10m", "--permit", "--send", node.api,
                     "--timeout", "240"])
        captured = capsys.readouterr()
        assert code == 0, captured.err + "\nnode log:\n" + node.tail()
    finally:
        assert node.stop() == 0, node.tail()
    events = [json.loads(line) for line in captured.out.splitlines()]
    names = [e["event"] for e in events]
    assert names[:4] == ["serving", "signed", "approved", "sent"], names
    assert names[-4:] == ["fetched", "verified", "accepted", "done"], names
    assert events[names.index("approved")]["how"] == "permit"
    assert "Submitted" in [e["state"] for e in events if e["event"] == "state"]
    done = events[-1]
    assert done["ok"] is True and done["state"] == "Finalized"
    assert done["report"]["metrics"]["check"] == "freivalds" and done["report"]["metrics"]["m"] == 48
    job = net.proto.job(bytes.fromhex(done["job_id"][2:]))
    assert job["state"] == 6  # Finalized: the requester accepted, the provider is paid
    assert len(net.events("JobFinalized", done["job_id"])) == 1
    offer = events[names.index("signed")]["offer"]["offer"]
    assert offer["inputURI"].startswith("http://127.0.0.1:") and offer["inputHash"] != "0x" + "00" * 32
    assert Path(done["result"]).stat().st_size == 48 * 40 * 4
