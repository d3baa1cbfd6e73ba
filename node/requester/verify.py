"""Is a provider's result right? One verifier per workload, each returning a ``Report`` that says which
check decided and with what numbers, so a dispute can point at the evidence.

matmul-int8/v1 has one correct answer, so it is checked exactly: the size first (m*n*4 bytes, from the
params alone), then Freivalds' test (``A (B r) == C r`` for random vectors r, in exact integer arithmetic).
A right C always passes; a wrong one passes with probability at most (1/64)^VERIFY_TRIALS = 2^-96. When it
fails, the wrong elements are located too (node.requester.challenge), for the fraud proof.

torch-export/v1 runs floating-point programs whose bits differ between devices and kernels, so the bundle
is re-run here on the CPU and every output is compared within a tolerance: names, shapes and dtypes
exactly, values by ``|got - want| <= atol + rtol * |want|`` (torch.isclose's rule; NaN equals NaN and an
infinity only itself). The tolerance used and the largest absolute and relative errors are reported for
every output, so a requester can see how close an honest result came and tighten or loosen the bounds.
Integer and bool outputs are compared exactly. Results are read with safetensors only, never torch.load.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.compute.workloads import ParamsError, VerificationError, WorkloadError
from node.requester.errors import RequesterError

if TYPE_CHECKING:
    import torch

VERIFY_TRIALS = 16  # Freivalds vectors; each lets a wrong C through with probability <= 1/64
LOCATE_MAX = 1000  # wrong elements counted at most when a check fails (a garbage C has m*n of them)
LOCATE_SHOWN = 8  # of which the report lists the first few
#: (rtol, atol) per dtype when none are given, calibrated by bench/calibrate_float.py (docs/verification.md,
#: "Float work"): 4x the largest difference seen between honest runs (thread counts, batch splits, float64 and
#: float32-accumulating references, and GPU arithmetic emulated on the CPU: TF32 convolutions, PyTorch's default
#: on Ampere and later GPUs, and half-precision split-K reductions), rounded up to one digit. atol assumes
#: outputs of order one; other scales pass --rtol/--atol. float32's bound comes from TF32 convolutions (without
#: them honest runs agree to ~1e-6). Other floating dtypes (float64, ...) get float32's bound.
TOLERANCE = {"float32": (4e-3, 2e-3), "float16": (2e-2, 3e-3), "bfloat16": (1e-1, 3e-2)}
DEFAULT_TOLERANCE = TOLERANCE["float32"]
HALF_TOLERANCE = {dtype: TOLERANCE[dtype] for dtype in ("float16", "bfloat16")}


@dataclass
class Report:
    """A verdict: ``ok`` and the ``detail`` a person reads; ``metrics`` has the numbers (``check`` names the
    check that decided: size, freivalds, format, outputs or values)."""

    ok: bool
    workload: str
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "workload": self.workload, "detail": self.detail, "metrics": _finite(self.metrics)}


def _finite(value: Any) -> Any:
    """JSON has no Infinity or NaN: such floats are written as strings ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- matmul-int8 ------------------------------------------------------------------------------------------


def verify_matmul(params: dict[str, Any], input_path: Path | None, result: Path) -> Report:
    """Checks a matmul-int8/v1 result file (raw int32 little-endian C) against the job's params: the seed
    form regenerates A and B, the input form reads them from the job's input file. A wrong C also gets its
    wrong elements located (node.requester.challenge: per-row Freivalds, then only the wrong rows
    multiplied), up to LOCATE_MAX of them: the evidence for a fraud proof."""
    from node.compute.workloads.matmul_int8 import NAME, freivalds_check
    from node.requester.challenge import check_params, locate, matrices, read_result, wrong_rows

    params = check_params(params)
    m, k, n = params["m"], params["k"], params["n"]
    size, want = Path(result).stat().st_size, m * n * 4
    metrics: dict[str, Any] = {"m": m, "k": k, "n": n, "bytes": size}
    if size != want:
        return Report(False, NAME, f"the result is {size} bytes; C of {m}x{n} int32 is {want}",
                      {**metrics, "check": "size"})
    a, b = matrices(params, input_path)
    c = read_result(result, m, n)
    metrics |= {"check": "freivalds", "trials": VERIFY_TRIALS, "false_accept_bound": f"2^-{6 * VERIFY_TRIALS}"}
    try:
        freivalds_check(a, b, c, VERIFY_TRIALS)
    except VerificationError as exc:
        detail = f"C != A @ B: {exc}"
        rows = wrong_rows(a, b, c)
        wrong = locate(a, b, c, limit=LOCATE_MAX, rows=rows)
        metrics |= {"wrong_rows": len(rows), "wrong_elements": len(wrong), "located": len(wrong) >= LOCATE_MAX,
                    "wrong": [w.to_json() for w in wrong[:LOCATE_SHOWN]]}
        if wrong:
            first = wrong[0]
            metrics["first_wrong"] = {"row": first.i, "col": first.j, "got": first.committed,
                                      "want": first.expected}
            more = f"at least {len(wrong)}" if len(wrong) >= LOCATE_MAX else str(len(wrong))
            detail += f"; {more} wrong element(s) in {len(rows)} row(s), the first C[{first.i}, {first.j}] = " \
                      f"{first.committed}, should be {first.expected}"
        return Report(False, NAME, detail, metrics)
    return Report(True, NAME, f"C = A @ B ({m}x{k} @ {k}x{n}): {VERIFY_TRIALS} Freivalds trials passed", metrics)


# -- torch-export -----------------------------------------------------------------------------------------


def verify_torch_export(params: dict[str, Any], bundle: Path, result: Path, *, rtol: float | None = None,
                        atol: float | None = None) -> Report:
    """Re-runs the bundle on the CPU and compares the result's outputs with it (see the module docstring).
    ``rtol``/``atol`` override the per-dtype defaults for every floating-point output."""
    from node.compute.workloads.torch_export import NAME, TorchExport

    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise RequesterError(f"{name} must be a finite number >= 0, got {value}")
    workload = TorchExport()
    try:
        params = workload.check_params(dict(params))
    except ParamsError as exc:
        raise RequesterError(f"the job's params are not torch-export/v1 params: {exc.reason}") from None
    with tempfile.TemporaryDirectory(prefix="gpunode-verify-") as tmp:
        reference = Path(tmp) / "expected.safetensors"
        try:
            workload.run(params, str(bundle), str(reference), "cpu")
        except WorkloadError as exc:
            raise RequesterError(f"the job's own bundle {bundle} does not run here: {exc}") from None
        expected = _load(reference)
    try:
        got = _load(result)
    except ValueError as exc:
        return Report(False, NAME, f"the result is not a safetensors file of tensors: {exc}", {"check": "format"})
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        return Report(False, NAME, f"the result's outputs are {sorted(got)}, expected {sorted(expected)}",
                      {"check": "outputs", "missing": missing, "unexpected": extra})
    outputs = {name: _compare(got[name], expected[name], rtol, atol) for name in sorted(expected, key=_natural)}
    bad = [name for name, o in outputs.items() if not o["ok"]]
    metrics = {"check": "outputs" if any("problem" in outputs[b] for b in bad) else "values", "outputs": outputs}
    if bad:
        return Report(False, NAME, "; ".join(f"{b}: {_describe(outputs[b])}" for b in bad), metrics)
    worst_abs = max((o["max_abs_err"] for o in outputs.values()), default=0.0)
    worst_rel = max((o["max_rel_err"] for o in outputs.values()), default=0.0)
    return Report(True, NAME, f"{len(outputs)} output(s) match a local CPU run within tolerance (max abs err "
                  f"{worst_abs:.3g}, max rel err {worst_rel:.3g})", metrics)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, RuntimeError, TypeError) as exc:
        raise ValueError(str(exc)[:300]) from None


def _natural(name: str) -> tuple[int, str]:
    digits = name.lstrip("abcdefghijklmnopqrstuvwxyz")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)


def _tolerance(dtype: str, rtol: float | None, atol: float | None) -> tuple[float, float]:
    default = TOLERANCE.get(dtype, DEFAULT_TOLERANCE)
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def _compare(got: torch.Tensor, want: torch.Tensor, rtol: float | None, atol: float | None) -> dict[str, Any]:
    import torch

    dtype = str(want.dtype).removeprefix("torch.")
    entry: dict[str, Any] = {"shape": list(want.shape), "dtype": dtype}
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
        got_dtype = str(got.dtype).removeprefix("torch.")
        entry |= {"ok": False, "problem": f"is {list(got.shape)} {got_dtype}, expected {list(want.shape)} {dtype}"}
        return entry
    if not (want.is_floating_point() or want.is_complex()):
        diff = (got.to(torch.float64) - want.to(torch.float64)).abs()
        bad = got != want
        entry |= {"exact": True, "max_abs_err": float(diff.max()) if diff.numel() else 0.0, "max_rel_err": 0.0}
    else:
        r, a = _tolerance(dtype, rtol, atol)
        wide = torch.complex128 if want.is_complex() else torch.float64
        g, w = got.to(wide), want.to(wide)
        same = (torch.isnan(g) & torch.isnan(w)) | (torch.isinf(w) & (g == w))
        diff = torch.nan_to_num((g - w).abs().to(torch.float64), nan=math.inf)
        diff = torch.where(same, torch.zeros_like(diff), diff)
        scale = w.abs().to(torch.float64)
        bad = diff > a + r * torch.nan_to_num(scale, nan=0.0, posinf=0.0)
        rel = torch.where(diff == 0, torch.zeros_like(diff), diff / scale.clamp_min(torch.finfo(torch.float64).tiny))
        entry |= {"rtol": r, "atol": a, "max_abs_err": float(diff.max()) if diff.numel() else 0.0,
                  "max_rel_err": float(torch.nan_to_num(rel, nan=math.inf).max()) if rel.numel() else 0.0}
    mismatched = int(bad.sum())
    entry |= {"ok": mismatched == 0, "mismatched": mismatched, "values": want.numel()}
    return entry


def _describe(entry: dict[str, Any]) -> str:
    if "problem" in entry:
        return entry["problem"]
    bound = "exactly" if entry.get("exact") else f"within rtol={entry['rtol']:g}, atol={entry['atol']:g}"
    return (f"{entry['mismatched']} of {entry['values']} values not equal {bound} (max abs err "
            f"{entry['max_abs_err']:.3g}, max rel err {entry['max_rel_err']:.3g})")
