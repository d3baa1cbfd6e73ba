"""Locating the wrong elements of a matmul-int8 result (node.requester.challenge) and the canonical params
the requester signs (terms.canonical_matmul): no chain, real tensors, the provider's own workload code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from node.chain import fraud
from node.compute.workloads import save_safetensors
from node.compute.workloads.generator import generate_ab
from node.compute.workloads.matmul_int8 import MatmulInt8
from node.requester.challenge import element_of, locate, locate_file, read_result, wrong_rows
from node.requester.errors import RequesterError
from node.requester.terms import canonical_matmul, input_matrices
from node.requester.verify import verify_matmul

SEED = {"m": 40, "k": 56, "n": 24, "seed": 9}


def honest(params: dict, tmp: Path, input_path: Path | None = None, name: str = "c.bin") -> Path:
    out = tmp / name
    MatmulInt8().run(dict(params), str(input_path) if input_path else None, str(out), "cpu")
    return out


def tamper(path: Path, edits: dict[int, int]) -> None:
    c = np.fromfile(path, dtype="<i4")
    for index, delta in edits.items():
        c[index] += delta
    c.tofile(path)


@pytest.fixture
def supplied(tmp_path: Path) -> tuple[dict, Path]:
    gen = torch.Generator().manual_seed(4)
    path = tmp_path / "ab.safetensors"
    save_safetensors({"A": torch.randint(-128, 128, (13, 21), generator=gen, dtype=torch.int8),
                      "B": torch.randint(-128, 128, (21, 11), generator=gen, dtype=torch.int8)}, str(path))
    return {"m": 13, "k": 21, "n": 11, "input": "safetensors"}, path


def test_wrong_rows_then_columns_are_found(tmp_path: Path) -> None:
    result = honest(SEED, tmp_path)
    n = SEED["n"]
    assert locate_file(SEED, None, result) == []  # a right C: nothing to find
    tamper(result, {7 * n + 3: 1, 7 * n + 20: -5, 31 * n + 0: 1 << 20})
    a, b = generate_ab(9, 40, 56, 24)
    c = read_result(result, 40, 24)
    assert wrong_rows(a, b, c) == [7, 31]
    exact = (a.to(torch.int64) @ b.to(torch.int64))
    found = locate(a, b, c)
    assert [(w.i, w.j) for w in found] == [(7, 3), (7, 20), (31, 0)]
    assert [w.committed - w.expected for w in found] == [1, -5, 1 << 20]
    assert all(w.expected == int(exact[w.i, w.j]) for w in found)
    assert [(w.i, w.j) for w in locate(a, b, c, limit=2)] == [(7, 3), (7, 20)]
    assert element_of(SEED, None, result, 7, 3).to_json() == found[0].to_json()
    right = element_of(SEED, None, result, 7, 4)
    assert right.committed == right.expected == int(exact[7, 4])
    with pytest.raises(RequesterError, match="outside C"):
        element_of(SEED, None, result, 40, 0)


def test_garbage_result_stops_at_the_limit(tmp_path: Path) -> None:
    result = tmp_path / "garbage.bin"
    result.write_bytes(np.random.default_rng(1).integers(-(1 << 31), 1 << 31, 40 * 24, dtype=np.int32).tobytes())
    found = locate_file(SEED, None, result, limit=5)
    assert len(found) == 5 and all(w.i == 0 for w in found)
    report = verify_matmul(SEED, None, result)
    assert not report.ok and report.metrics["wrong_rows"] == 40
    assert report.metrics["wrong_elements"] == 40 * 24 and len(report.metrics["wrong"]) == 8
    with pytest.raises(RequesterError, match="bytes"):
        locate_file(SEED, None, _short(result))


def _short(path: Path) -> Path:
    short = path.with_name("short.bin")
    short.write_bytes(path.read_bytes()[:-4])
    return short


def test_supplied_inputs_are_located_from_the_file(tmp_path: Path, supplied: tuple[dict, Path]) -> None:
    params, path = supplied
    result = honest(params, tmp_path, path)
    tamper(result, {5 * 11 + 10: 2})
    (found,) = locate_file(params, path, result)
    assert (found.i, found.j, found.committed - found.expected) == (5, 10, 2)
    report = verify_matmul(params, path, result)
    assert report.metrics["first_wrong"] == {"row": 5, "col": 10, "got": found.committed, "want": found.expected}


def test_canonical_params_carry_an_audit_commitment(tmp_path: Path) -> None:
    params, secret = canonical_matmul(json.dumps(SEED).encode(), None)
    assert secret is not None and len(secret) == 32
    p = fraud.MatmulParams.from_params(params)  # canonical: the verifier's encodeParams bytes
    assert (p.m, p.k, p.n, p.seed, p.ab_root) == (40, 56, 24, 9, None)
    assert p.audit == fraud.audit_commitment(secret)
    assert params.startswith(b'{"m":40,"k":56,"n":24,"seed":9,"audit":"0x')
    again, other = canonical_matmul(json.dumps(SEED).encode(), None)
    assert other != secret and again != params  # a fresh secret per offer
    # an audit commitment made elsewhere is kept, and no secret is known for it
    theirs = "0x" + fraud.audit_commitment(b"\x01" * 32).hex()
    kept, none = canonical_matmul(json.dumps({**SEED, "audit": theirs}).encode(), None)
    assert none is None and fraud.MatmulParams.from_params(kept).audit.hex() == theirs[2:]


def test_supplied_params_get_the_input_commitment(supplied: tuple[dict, Path]) -> None:
    params, path = supplied
    signed, _ = canonical_matmul(json.dumps(params).encode(), path)
    p = fraud.MatmulParams.from_params(signed)
    a, b = input_matrices(path, 13, 21, 11)
    assert p.ab_root == fraud.ab_root(a, b, 13, 21, 11) and p.seed is None
    row, _, col, _ = fraud.supplied_inputs(a, b, p, 2, 3)
    assert fraud.expected_element(p, 2, 3, (row, [], col, [])) == element_of(
        {"m": 13, "k": 21, "n": 11, "input": "safetensors"}, path, _any_result(path, params), 2, 3).expected
    same, _ = canonical_matmul(json.dumps({**params, "ab_root": "0x" + p.ab_root.hex()}).encode(), path)
    assert fraud.MatmulParams.from_params(same).ab_root == p.ab_root
    with pytest.raises(RequesterError, match="not the commitment"):
        canonical_matmul(json.dumps({**params, "ab_root": "0x" + "11" * 32}).encode(), path)
    with pytest.raises(RequesterError, match=r"needs \(14, 21\) int8"):
        input_matrices(path, 14, 21, 11)


def _any_result(path: Path, params: dict) -> Path:
    out = path.with_name("any.bin")
    MatmulInt8().run(dict(params), str(path), str(out), "cpu")
    return out
