"""The compute layer end to end, as the node will use it: fetch a hash-checked input, run the workload in
an isolated worker through its registry entry point, and commit to the output file."""

from __future__ import annotations

import base64
import hashlib

import pytest
import torch

from node.compute.commitment import commit_bytes, commit_file
from node.compute.inputs import fetch_input
from node.compute.workers import DeviceSpec, DeviceWorker, JobRequest
from node.compute.workloads import get
from node.compute.workloads.generator import generate
from node.compute.workloads.torch_export import make_bundle

EXECUTE = "node.compute.workloads:execute"


@pytest.fixture(scope="module")
async def worker():
    w = DeviceWorker(DeviceSpec(name="cpu", index=None, threads=1))
    await w.start()
    yield w
    await w.stop()


async def test_matmul_int8_through_a_worker_is_exact_and_committed(worker, tmp_path):
    params = get("matmul-int8/v1").validate_params(b'{"m":40,"k":24,"n":56,"seed":7}')
    out = tmp_path / "C.bin"
    outcome = await worker.run(JobRequest("mm", EXECUTE, {
        "workload": "matmul-int8/v1", "params": params, "input_path": None, "output_path": str(out)}), timeout=120)
    assert outcome.ok, outcome
    data = out.read_bytes()
    assert len(data) == 40 * 56 * 4
    expected = (generate(7, 1, 40, 24).long() @ generate(7, 2, 24, 56).long()).to(torch.int32)
    assert data == bytes(expected.contiguous().view(torch.uint8).flatten().tolist())
    assert commit_file(out) == commit_bytes(data)


async def test_torch_export_job_from_a_fetched_bundle(worker, tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(4, 8)
    bundle = tmp_path / "bundle.safetensors"
    names = make_bundle(model, [x], str(bundle), input_names=["x"])
    assert names == ["x"]
    raw = bundle.read_bytes()
    uri = "data:application/octet-stream;base64," + base64.b64encode(raw).decode()
    path = await fetch_input(uri, hashlib.sha256(raw).digest(), tmp_path / "store", max_bytes=10 << 20)
    assert path is not None and path.read_bytes() == raw
    out = tmp_path / "out.safetensors"
    outcome = await worker.run(JobRequest("ex", EXECUTE, {
        "workload": "torch-export/v1", "params": {"inputs": ["x"]}, "input_path": str(path),
        "output_path": str(out)}), timeout=300)
    assert outcome.ok, outcome
    from safetensors.torch import load_file

    assert torch.allclose(load_file(str(out))["out0"], model(x), atol=1e-6)


async def test_bad_params_fail_as_a_job_not_as_the_worker(worker, tmp_path):
    pid = worker.pid
    outcome = await worker.run(JobRequest("bad", EXECUTE, {
        "workload": "matmul-int8/v1", "params": {"m": 0, "k": 1, "n": 1, "seed": 1}, "input_path": None,
        "output_path": str(tmp_path / "x")}), timeout=60)
    assert not outcome.ok and outcome.reason == "error" and "m" in outcome.detail
    assert worker.pid == pid and not (tmp_path / "x").exists()
