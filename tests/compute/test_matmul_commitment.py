"""matmul-int8/v1 params for the on-chain verifier: an optional audit commitment on either form, an optional
ab_root on the supplied form, checked against the input file before anything is computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.compute.commitment import leaf_hash, merkle_root_of_leaves
from node.compute.workloads import ParamsError, WorkloadError, execute, get, save_safetensors
from node.compute.workloads.matmul_int8 import input_leaf_hashes, input_root

MATMUL = get("matmul-int8/v1")
H = "0x" + "ab" * 32


def test_audit_and_ab_root_accepted_where_they_belong() -> None:
    assert MATMUL.validate_params(f'{{"m":1,"k":2,"n":3,"seed":4,"audit":"{H}"}}'.encode())["audit"] == H
    p = MATMUL.validate_params(f'{{"m":1,"k":2,"n":3,"input":"safetensors","ab_root":"{H}","audit":"{H}"}}'.encode())
    assert p["ab_root"] == H and p["audit"] == H
    assert MATMUL.validate_params(b'{"m":1,"k":2,"n":3,"input":"safetensors"}')  # the old forms stay valid
    assert MATMUL.validate_params(b'{"m":1,"k":2,"n":3,"seed":4}')


@pytest.mark.parametrize(("raw", "reason"), [
    (f'{{"m":1,"k":1,"n":1,"seed":1,"ab_root":"{H}"}}', "unknown key(s): ab_root"),
    ('{"m":1,"k":1,"n":1,"seed":1,"audit":"0xab"}', "audit must be 0x followed by 64 hex digits"),
    ('{"m":1,"k":1,"n":1,"seed":1,"audit":1}', "audit must be"),
    ('{"m":1,"k":1,"n":1,"input":"safetensors","ab_root":"ab' + "ab" * 32 + '"}', "ab_root must be"),
    (f'{{"m":1,"k":1,"n":1,"seed":1,"audit":"{H}","x":1}}', "unknown key(s): x"),
])
def test_bad_commitments_refused(raw: str, reason: str) -> None:
    with pytest.raises(ParamsError) as err:
        MATMUL.validate_params(raw.encode())
    assert reason in err.value.reason


def test_input_root_is_rows_of_a_then_columns_of_b() -> None:
    a = torch.arange(6, dtype=torch.int8).reshape(2, 3)
    b = -torch.arange(12, dtype=torch.int8).reshape(3, 4)
    raw_a, raw_b = a.numpy().tobytes(), b.numpy().tobytes()
    leaves = [bytes([0, 1, 2]), bytes([3, 4, 5])] + [b[:, c].numpy().tobytes() for c in range(4)]
    assert input_leaf_hashes(raw_a, raw_b, 2, 3, 4) == [leaf_hash(x) for x in leaves]
    assert input_root(raw_a, raw_b, 2, 3, 4) == merkle_root_of_leaves([leaf_hash(x) for x in leaves])
    with pytest.raises(ValueError, match="int8 bytes"):
        input_root(raw_a, raw_b[1:], 2, 3, 4)


def _inputs(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-128, 128, (18, 5), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (5, 11), generator=g, dtype=torch.int8)
    save_safetensors({"A": a, "B": b}, str(tmp_path / "in.st"))
    return a, b, str(tmp_path / "in.st")


def test_matching_ab_root_runs(tmp_path: Path) -> None:
    a, b, path = _inputs(tmp_path)
    root = "0x" + input_root(a.numpy().tobytes(), b.numpy().tobytes(), 18, 5, 11).hex()
    params = {"m": 18, "k": 5, "n": 11, "input": "safetensors", "ab_root": root.upper().replace("0X", "0x"),
              "audit": H}
    execute("cpu", MATMUL.name, params, path, str(tmp_path / "C"))
    c = torch.frombuffer(bytearray((tmp_path / "C").read_bytes()), dtype=torch.int32).reshape(18, 11)
    assert torch.equal(c.long(), a.long() @ b.long())


def test_mismatching_ab_root_fails_before_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, path = _inputs(tmp_path)
    from node.compute.workloads import matmul_int8

    def never(*_a, **_k):
        raise AssertionError("computed despite a wrong input commitment")

    monkeypatch.setattr(matmul_int8, "matmul_exact", never)
    params = {"m": 18, "k": 5, "n": 11, "input": "safetensors", "ab_root": H}
    with pytest.raises(WorkloadError, match="input commitment mismatch"):
        execute("cpu", MATMUL.name, params, path, str(tmp_path / "C"))
    assert not (tmp_path / "C").exists()
