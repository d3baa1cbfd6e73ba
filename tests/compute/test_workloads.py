"""Workloads: the generator spec, exact int8 matmul with its self-check, strict params, pickle-free bundles."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from eth_utils import keccak
from safetensors import safe_open

from node.compute import workloads
from node.compute.workloads import (
    ParamsError,
    VerificationError,
    WorkloadError,
    execute,
    get,
    save_safetensors,
)
from node.compute.workloads import matmul_int8 as mm
from node.compute.workloads import torch_export as te
from node.compute.workloads.generator import GAMMA, element, generate, generate_range, splitmix64

# --- generator ------------------------------------------------------------------------------------

# Vectors for the Solidity port, from the scalar reference: the first 8 elements (row-major) of A with
# k = 4 columns and the first 6 of B with n = 3 columns.
VECTORS = {
    0: ([24, 79, 102, -125, 76, -77, -83, 37], [-88, 79, 112, 88, 28, 41]),
    42: ([-82, -67, -85, -71, -18, 65, -63, -58], [104, -44, 110, 26, 29, -112]),
}


def test_splitmix64_matches_published_sequence() -> None:
    # splitmix64 seeded with 0 (Vigna's reference implementation) starts with these outputs
    assert [splitmix64(i * GAMMA) for i in (1, 2, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed", sorted(VECTORS))
def test_fixed_vectors(seed: int) -> None:
    a_ref, b_ref = VECTORS[seed]
    assert [element(seed, 1, r, c, 4) for r in range(2) for c in range(4)] == a_ref
    assert [element(seed, 2, r, c, 3) for r in range(2) for c in range(3)] == b_ref
    assert generate(seed, 1, 2, 4).flatten().tolist() == a_ref
    assert generate(seed, 2, 2, 3).flatten().tolist() == b_ref


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 9), (8, 33)])
def test_vectorized_matches_scalar(seed: int, shape: tuple[int, int]) -> None:
    rows, cols = shape
    for tag in (1, 2):
        ref = [[element(seed, tag, r, c, cols) for c in range(cols)] for r in range(rows)]
        assert generate(seed, tag, rows, cols).tolist() == ref


@pytest.mark.parametrize("start", [0, 2**21 - 3, 2**28 - 16, 2**40 + 5, 2**56 - 16])
def test_edge_counters(start: int) -> None:
    # element(seed, tag, 0, i, cols) has counter index i for any cols > i; use a single huge "row"
    for seed in (0, 2**64 - 1):
        got = generate_range(seed, 2, start, start + 16).tolist()
        assert got == [element(seed, 2, 0, i, 2**56) for i in range(start, start + 16)]


def test_generator_rejects_bad_arguments() -> None:
    for call in (lambda: generate(2**64, 1, 2, 2), lambda: generate_range(0, 128, 0, 1),
                 lambda: generate_range(0, 1, 0, 2**56 + 1)):  # fmt: skip
        with pytest.raises(ValueError):
            call()


# --- exact matmul ---------------------------------------------------------------------------------


def test_int_mm_rule_table() -> None:
    # m must exceed 16; k and n must be positive multiples of 8
    table = {(17, 8, 8): True, (16, 8, 8): False, (1, 8, 8): False, (17, 16, 8): True, (17, 12, 8): False,
             (17, 8, 12): False, (4096, 4096, 4096): True, (17, 0, 8): False}  # fmt: skip
    assert {shape: mm.int_mm_supported(*shape) for shape in table} == table
    assert mm.padded_shape(1, 5, 9) == (17, 8, 16)
    assert mm.int_mm_supported(*mm.padded_shape(3, 13, 1))


SHAPES = [
    (1, 1, 1), (1, 8, 8), (16, 16, 16), (17, 16, 8), (17, 8, 8), (3, 5, 7), (16, 17, 9), (33, 16, 10), (5, 65, 3),
]  # fmt: skip


@pytest.mark.parametrize("method", ["auto", "int_mm_padded", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_exact(shape: tuple[int, int, int], method: str) -> None:
    m, k, n = shape
    a, b = generate(7, 1, m, k), generate(7, 2, k, n)
    c, _ = mm.matmul_exact(a, b, method=method)
    assert c.dtype == torch.int32
    assert torch.equal(c.long(), a.long() @ b.long())


@pytest.mark.parametrize("method", ["auto", "int_mm_padded", "f64"])
def test_matmul_extreme_values(method: str) -> None:
    # the largest |C| the limits allow: k = 65536 products of (-128) * (-128) = 2^30
    a = torch.full((1, 65536), -128, dtype=torch.int8)
    b = torch.full((65536, 2), -128, dtype=torch.int8)
    c, _ = mm.matmul_exact(a, b, method=method)
    assert c.tolist() == [[2**30, 2**30]]


def test_matmul_moderately_large() -> None:
    a, b = generate(3, 1, 192, 1024), generate(3, 2, 1024, 160)
    c, _ = mm.matmul_exact(a, b)
    assert torch.equal(c.long(), a.long() @ b.long())
    mm.freivalds_check(a, b, c)


def test_freivalds_rejects_one_changed_element() -> None:
    a, b = generate(1, 1, 20, 24), generate(1, 2, 24, 16)
    c, _ = mm.matmul_exact(a, b)
    mm.freivalds_check(a, b, c, seed=5)
    for delta in (1, -1, 2**20):
        bad = c.clone()
        bad[13, 7] += delta
        with pytest.raises(VerificationError):
            mm.freivalds_check(a, b, bad, seed=5)
    with pytest.raises(VerificationError):
        mm.freivalds_check(a, b, c[:, :-1])
    with pytest.raises(VerificationError):
        mm.freivalds_check(a, b, c.long())


# --- matmul-int8/v1 params and runs ---------------------------------------------------------------

MATMUL = get("matmul-int8/v1")


def test_params_accepted() -> None:
    p = MATMUL.validate_params(b'{"m": 2, "k": 3, "n": 4, "seed": 18446744073709551615}')
    assert p == {"m": 2, "k": 3, "n": 4, "seed": 2**64 - 1}
    assert MATMUL.validate_params(b'{"m":1,"k":1,"n":1,"input":"safetensors"}')["input"] == "safetensors"
    assert MATMUL.validate_params(b'{"m":65536,"k":4096,"n":1,"seed":0}')["m"] == 65536
    est = MATMUL.estimate({"m": 64, "k": 32, "n": 16, "seed": 0})
    assert est.int_ops == 2 * 64 * 32 * 16 and est.output_bytes == 64 * 16 * 4
    assert est.vram_bytes is not None and est.vram_bytes > 64 * 32 + 32 * 16 + 64 * 16 * 4


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"m":2,"k":2,"n":2,"seed":1,"x":1}', "unknown key(s): x"),
        (b'{"m":2,"k":2,"n":2,"seed":1,"input":"safetensors"}', "unknown key(s): seed"),
        (b'{"m":2,"k":2,"n":2}', "missing key(s): seed"),
        (b'{"m":0,"k":2,"n":2,"seed":1}', "m out of range"),
        (b'{"m":2,"k":65537,"n":2,"seed":1}', "k out of range"),
        (b'{"m":65536,"k":8192,"n":1,"seed":1}', "m*k = 536870912 exceeds 268435456"),
        (b'{"m":1,"k":1,"n":1,"seed":-1}', "seed out of range"),
        (b'{"m":1,"k":1,"n":1,"seed":18446744073709551616}', "seed out of range"),
        (b'{"m":true,"k":1,"n":1,"seed":1}', "m must be an integer"),
        (b'{"m":2.0,"k":1,"n":1,"seed":1}', "m must be an integer"),
        (b'{"m":1,"k":1,"n":1,"input":"npz"}', "input must be"),
        (b'{"m":1,"m":1,"k":1,"n":1,"seed":1}', "duplicate key 'm'"),
        (b'{"m":NaN,"k":1,"n":1,"seed":1}', "non-finite number NaN"),
        (b'{"m":1,', "not valid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b" " * 5000, "longer than"),
        (b'{"m":' + b"[" * 65 + b"]" * 65 + b',"k":1,"n":1,"seed":1}', "nest deeper than 64"),
    ],
)
def test_params_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(ParamsError) as err:
        MATMUL.validate_params(raw)
    assert reason in err.value.reason


def _read_c(path: Path, m: int, n: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.int32).reshape(m, n)


@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 24, 9), (40, 16, 32)])
def test_run_seeded_writes_raw_int32(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    out = tmp_path / "C.bin"
    params = {"m": m, "k": k, "n": n, "seed": 99}
    summary = execute(device="cpu", workload="matmul-int8/v1", params=params, input_path=None, output_path=str(out))
    assert out.stat().st_size == m * n * 4 == summary["output_bytes"]
    a, b = generate(99, 1, m, k), generate(99, 2, k, n)
    assert torch.equal(_read_c(out, m, n).long(), a.long() @ b.long())
    assert summary["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    json.dumps(summary)
    assert list(tmp_path.iterdir()) == [out]  # no temp files left behind


def test_run_from_safetensors_input(tmp_path: Path) -> None:
    a = torch.randint(-128, 128, (18, 5), dtype=torch.int8)
    b = torch.randint(-128, 128, (5, 11), dtype=torch.int8)
    save_safetensors({"A": a, "B": b}, str(tmp_path / "in.st"))
    out = tmp_path / "C.bin"
    MATMUL.run({"m": 18, "k": 5, "n": 11, "input": "safetensors"}, str(tmp_path / "in.st"), str(out), "cpu")
    assert torch.equal(_read_c(out, 18, 11).long(), a.long() @ b.long())


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"A": torch.zeros(4, 3, dtype=torch.int16), "B": torch.zeros(3, 2, dtype=torch.int8)}, "dtype I16"),
        ({"A": torch.zeros(4, 3, dtype=torch.int8), "B": torch.zeros(2, 3, dtype=torch.int8)}, r"shape \(2, 3\)"),
        ({"A": torch.zeros(4, 3, dtype=torch.int8)}, "exactly tensors"),
        ({"A": torch.zeros(4, 3, dtype=torch.int8), "B": torch.zeros(3, 2, dtype=torch.int8), "C": torch.zeros(1)},
         "exactly tensors"),
    ],
)  # fmt: skip
def test_bad_safetensors_input_rejected(tmp_path: Path, tensors: dict[str, torch.Tensor], message: str) -> None:
    save_safetensors(tensors, str(tmp_path / "in.st"))
    params = {"m": 4, "k": 3, "n": 2, "input": "safetensors"}
    with pytest.raises(WorkloadError, match=message):
        MATMUL.run(params, str(tmp_path / "in.st"), str(tmp_path / "C"), "cpu")
    assert not (tmp_path / "C").exists()


def test_non_safetensors_input_rejected(tmp_path: Path) -> None:
    (tmp_path / "in.st").write_bytes(b"\x00" * 64)
    with pytest.raises(WorkloadError, match="not a valid safetensors"):
        MATMUL.run({"m": 1, "k": 1, "n": 1, "input": "safetensors"}, str(tmp_path / "in.st"), str(tmp_path), "cpu")


def test_wrong_product_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupt(a: torch.Tensor, b: torch.Tensor, **_: object) -> tuple[torch.Tensor, str]:
        c = a.long() @ b.long()
        c[0, 0] += 1
        return c.to(torch.int32), "corrupt"

    monkeypatch.setattr(mm, "matmul_exact", corrupt)
    out = tmp_path / "C.bin"
    with pytest.raises(VerificationError):
        MATMUL.run({"m": 8, "k": 8, "n": 8, "seed": 1}, None, str(out), "cpu")
    assert list(tmp_path.iterdir()) == []


def test_registry_ids() -> None:
    names = [w.name for w in workloads.all_workloads()]
    assert names == ["matmul-int8/v1", "torch-export/v1"]
    for name in names:
        wid = keccak(text=name)
        assert get(name).id == wid
        assert get(wid) is get(name) is get("0x" + wid.hex())
    with pytest.raises(KeyError):
        get("matmul-int8/v2")


# --- torch-export/v1 ------------------------------------------------------------------------------

TORCH_EXPORT = get("torch-export/v1")


Bundle = tuple[Path, torch.nn.Module, torch.Tensor]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU())
    x = torch.randn(3, 8)
    path = tmp_path_factory.mktemp("bundle") / "bundle.safetensors"
    assert te.make_bundle(module, (x,), str(path), input_names=["x"]) == ["x"]
    return path, module, x


def test_torch_export_round_trip(bundle: Bundle, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path, module, x = bundle

    def no_pickle(*_: object, **__: object) -> None:
        raise AssertionError("pickle used")

    for target, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(target, name, no_pickle)
    out = tmp_path / "out.safetensors"
    params = TORCH_EXPORT.validate_params(b'{"inputs": ["x"]}')
    summary = execute(device="cpu", workload="torch-export/v1", params=params, input_path=str(path),
                      output_path=str(out))  # fmt: skip
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == ["out0"]
        got = f.get_tensor("out0")
    assert torch.allclose(got, module(x).detach(), atol=1e-6, rtol=0)
    assert summary["outputs"] == [{"name": "out0", "dtype": "float32", "shape": [3, 5]}]
    assert summary["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_torch_export_checks_inputs(bundle: Bundle, tmp_path: Path) -> None:
    path, _, _ = bundle
    with pytest.raises(te.BundleError, match="no input tensor"):
        TORCH_EXPORT.run({"inputs": ["y"]}, str(path), str(tmp_path / "o"), "cpu")
    tensors = _bundle_tensors(path)
    tensors["x"] = torch.zeros(4, 8)
    _rewrite(path, tmp_path / "b2", tensors=tensors)
    with pytest.raises(te.BundleError, match=r"program expects \(3, 8\)"):
        TORCH_EXPORT.run({"inputs": ["x"]}, str(tmp_path / "b2"), str(tmp_path / "o"), "cpu")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b'{"inputs": []}', "list of 1 to"), (b'{"inputs": "x"}', "list of 1 to"), (b'{"inputs": ["x","x"]}', "duplicate"),
     (b'{"inputs": ["state/w"]}', "invalid input name"), (b'{"inputs": ["x"], "d": 1}', "unknown key(s): d")],
)  # fmt: skip
def test_torch_export_params_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(ParamsError) as err:
        TORCH_EXPORT.validate_params(raw)
    assert reason in err.value.reason


def test_pickle_bundles_rejected(bundle: Bundle, tmp_path: Path) -> None:
    _, module, x = bundle
    torch.save(module, tmp_path / "module.pt")
    torch.export.save(torch.export.export(module, (x,)), tmp_path / "program.pt2")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"x": 1}))
    for name, message in [("module.pt", "zip archive"), ("program.pt2", "zip archive"), ("raw.pkl", "pickle stream")]:
        with pytest.raises(te.BundleError, match=message):
            TORCH_EXPORT.run({"inputs": ["x"]}, str(tmp_path / name), str(tmp_path / "o"), "cpu")
    assert not (tmp_path / "o").exists()


def _bundle_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _program(path: Path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["program"]


def _rewrite(path: Path, dest: Path, *, program: dict | str | None = None, tensors: dict | None = None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if program is not None:
        meta["program"] = program if isinstance(program, str) else json.dumps(program)
    save_safetensors(tensors if tensors is not None else _bundle_tensors(path), str(dest), metadata=meta)


def _forge_target(p: dict, target: str) -> None:
    p["graph_module"]["graph"]["nodes"][0]["target"] = target


def _forge_guards(p: dict, _: str) -> None:
    p["guards_code"] = ["__import__('os').system('true')"]


def _forge_expr(p: dict, _: str) -> None:
    meta = next(iter(p["graph_module"]["graph"]["tensor_values"].values()))
    meta["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').getpid()", "hint": None}}


@pytest.mark.parametrize(
    ("forge", "arg", "message"),
    [
        (_forge_target, "torch.os.system", "only torch.ops.aten"),
        (_forge_target, "torch.ops.aten.from_file.default", "not allowed"),
        (_forge_target, "torch.ops.aten.__class__.__init__", "malformed"),
        (_forge_target, "torch.ops.higher_order.cond", "only torch.ops.aten"),
        (_forge_guards, "", "guards"),
        (_forge_expr, "", "as_expr"),
    ],
)
def test_forged_programs_rejected_before_running(bundle: Bundle, tmp_path: Path, forge, arg: str, message: str) -> None:
    path, _, _ = bundle
    program = json.loads(_program(path))
    forge(program, arg)
    _rewrite(path, tmp_path / "forged", program=program)
    with pytest.raises(te.BundleError, match=message):
        TORCH_EXPORT.run({"inputs": ["x"]}, str(tmp_path / "forged"), str(tmp_path / "o"), "cpu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "not a serialized ExportedProgram"),
        ('{"graph_module": {"graph": {"nodes": [1]}}}', "malformed node"),
        ('{"graph_module": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
    ],
)
def test_malformed_programs_rejected(bundle: Bundle, tmp_path: Path, program: str, message: str) -> None:
    _rewrite(bundle[0], tmp_path / "bad", program=program)
    with pytest.raises(te.BundleError, match=message):
        te.load_bundle(str(tmp_path / "bad"))


def test_sanitize_pins_devices(bundle: Bundle) -> None:
    raw = _program(bundle[0])
    assert '"type": "cpu"' in raw
    cleaned = json.dumps(te.sanitize_program(json.loads(raw), "cuda:1"))
    assert '"type": "cpu"' not in cleaned and '{"type": "cuda", "index": 1}' in cleaned
    assert '"stack_trace"' in raw and '"stack_trace"' not in cleaned  # metadata is dropped
