"""Result verification without a chain: honest results (made by the provider's own workload code) pass, and
a tampered one fails with the check and the place named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from node.compute.workloads import save_safetensors
from node.compute.workloads.generator import generate_ab
from node.compute.workloads.matmul_int8 import MatmulInt8
from node.compute.workloads.torch_export import TorchExport, make_bundle
from node.requester.errors import RequesterError
from node.requester.verify import TOLERANCE, VERIFY_TRIALS, verify_matmul, verify_torch_export

SEED = {"m": 24, "k": 40, "n": 16, "seed": 7}
INPUT = {"m": 12, "k": 20, "n": 9, "input": "safetensors"}


def provider_result(params: dict, tmp: Path, input_path: Path | None = None, name: str = "c.bin") -> Path:
    """What an honest provider publishes: the workload's own run on the CPU."""
    out = tmp / name
    MatmulInt8().run(dict(params), str(input_path) if input_path else None, str(out), "cpu")
    return out


@pytest.fixture
def matmul_input(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (INPUT["m"], INPUT["k"]), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (INPUT["k"], INPUT["n"]), generator=gen, dtype=torch.int8)
    path = tmp_path / "ab.safetensors"
    save_safetensors({"A": a, "B": b}, str(path))
    return path


def flip(path: Path, index: int, delta: int = 1) -> None:
    c = np.fromfile(path, dtype="<i4")
    c[index] += delta
    c.tofile(path)


def test_honest_matmul_passes_in_seed_and_input_forms(tmp_path: Path, matmul_input: Path) -> None:
    report = verify_matmul(SEED, None, provider_result(SEED, tmp_path))
    assert report.ok, report.detail
    assert report.workload == "matmul-int8/v1"
    assert report.metrics["check"] == "freivalds" and report.metrics["trials"] == VERIFY_TRIALS
    report = verify_matmul(INPUT, matmul_input, provider_result(INPUT, tmp_path, matmul_input, "d.bin"))
    assert report.ok, report.detail
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_one_flipped_element_fails_and_is_located(tmp_path: Path, matmul_input: Path) -> None:
    result = provider_result(SEED, tmp_path)
    flip(result, 5 * SEED["n"] + 3)  # C[5, 3] off by one
    report = verify_matmul(SEED, None, result)
    assert not report.ok
    assert report.metrics["check"] == "freivalds"
    assert report.metrics["wrong_elements"] == 1
    a, b = generate_ab(7, 24, 40, 16)
    want = int((a.to(torch.int64) @ b.to(torch.int64))[5, 3])
    assert report.metrics["first_wrong"] == {"row": 5, "col": 3, "got": want + 1, "want": want}
    assert "C[5, 3]" in report.detail

    # the input form reads A and B from the job's file: a result for other matrices is wrong
    result = provider_result(INPUT, tmp_path, matmul_input, "d.bin")
    flip(result, 0, -7)
    assert not verify_matmul(INPUT, matmul_input, result).ok


def test_wrong_size_fails_before_any_arithmetic(tmp_path: Path) -> None:
    result = provider_result(SEED, tmp_path)
    with open(result, "ab") as fh:
        fh.write(b"\0\0\0\0")
    report = verify_matmul(SEED, None, result)
    assert not report.ok and report.metrics["check"] == "size"
    assert str(24 * 16 * 4) in report.detail
    result.write_bytes(result.read_bytes()[:-8])
    assert verify_matmul(SEED, None, result).metrics["check"] == "size"


def test_params_of_another_workload_are_the_requesters_error(tmp_path: Path) -> None:
    result = provider_result(SEED, tmp_path)
    with pytest.raises(RequesterError, match="matmul-int8/v1 params"):
        verify_matmul({"inputs": ["x"]}, None, result)


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return h * y, self.head(h)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundle") / "bundle.safetensors"
    names = make_bundle(TwoHeads(), (torch.randn(5, 6), torch.randn(5, 4)), str(path))
    return path, {"inputs": names}


def test_honest_torch_export_passes_and_reports_its_errors(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    path, params = bundle
    result = tmp_path / "out.safetensors"
    TorchExport().run(params, str(path), str(result), "cpu")
    report = verify_torch_export(params, path, result)
    assert report.ok, report.detail
    outputs = report.metrics["outputs"]
    assert sorted(outputs) == ["out0", "out1"]
    for entry in outputs.values():
        assert entry["ok"] and entry["mismatched"] == 0
        assert entry["max_abs_err"] == 0.0 and entry["max_rel_err"] == 0.0  # same CPU, same kernels
        assert (entry["rtol"], entry["atol"]) == TOLERANCE["float32"]
    assert outputs["out1"]["shape"] == [5, 3] and outputs["out1"]["dtype"] == "float32"

    # a GPU's rounding differences (here 1e-6 relative) stay within the tolerance, and are reported
    with safe_open(str(result), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["out1"] = tensors["out1"] * (1 + 1e-6)
    save_file(tensors, str(result))
    report = verify_torch_export(params, path, result, rtol=1e-4, atol=0.0)
    assert report.ok, report.detail
    assert 0 < report.metrics["outputs"]["out1"]["max_rel_err"] < 1e-4
    assert report.metrics["outputs"]["out1"]["rtol"] == 1e-4


def test_tampered_torch_export_output_fails_naming_it(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    path, params = bundle
    result = tmp_path / "out.safetensors"
    TorchExport().run(params, str(path), str(result), "cpu")
    with safe_open(str(result), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["out1"] = tensors["out1"].clone()
    tensors["out1"][2, 1] += 0.01
    save_file(tensors, str(result))
    report = verify_torch_export(params, path, result)
    assert not report.ok
    assert report.metrics["check"] == "values"
    assert report.detail.startswith("out1: 1 of 15 values")
    assert report.metrics["outputs"]["out0"]["ok"] and not report.metrics["outputs"]["out1"]["ok"]
    assert report.metrics["outputs"]["out1"]["max_abs_err"] == pytest.approx(0.01, rel=1e-3)
    # a looser bound the requester chooses lets it through, and says so
    assert verify_torch_export(params, path, result, atol=0.02).ok

    # wrong shape / missing output / not safetensors: named as such
    tensors["out1"] = tensors["out1"][:4]
    save_file(tensors, str(result))
    report = verify_torch_export(params, path, result)
    assert not report.ok and report.metrics["check"] == "outputs" and "out1: is [4, 3]" in report.detail
    del tensors["out1"]
    save_file(tensors, str(result))
    report = verify_torch_export(params, path, result)
    assert not report.ok and report.metrics["missing"] == ["out1"]
    result.write_bytes(b"\x80\x04not a tensor file")
    report = verify_torch_export(params, path, result)
    assert not report.ok and report.metrics["check"] == "format"


def test_nan_in_both_is_equal_nan_in_one_is_not(tmp_path: Path) -> None:
    from node.requester.verify import _compare

    want = torch.tensor([1.0, float("nan"), float("inf")])
    assert _compare(want.clone(), want, None, None)["ok"]
    got = torch.tensor([1.0, 2.0, float("inf")])
    entry = _compare(got, want, None, None)
    assert not entry["ok"] and entry["mismatched"] == 1 and entry["max_abs_err"] == float("inf")
    assert _compare(torch.tensor([1, 2]), torch.tensor([1, 3]), 1.0, 1.0)["mismatched"] == 1  # ints: exact
