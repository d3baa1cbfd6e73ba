"""How far apart do honest runs of the same torch-export/v1 bundle land? The tolerance calibration.

The requester (and a mediator) re-runs a float bundle on its own CPU and compares the provider's outputs
with ``|got - want| <= atol + rtol * |want|`` (node.requester.verify). An honest provider computed the same
program with a different summation order: another thread count, another batch blocking, another kernel
(fused vs decomposed), a GPU (TF32 convolutions are on by default in PyTorch; half-precision GEMMs may
reduce split-K partial sums in half precision), or more precision than the reference. Each of those is a
*variant* here, run on several bundles (MLP, conv net, attention block) in float32, bfloat16 and float16,
and compared with the reference exactly as the verifier compares (got = variant, want = reference: the
bundle through TorchExport.run on the CPU with the default thread count).

Variants: ``threads1`` / ``threads2`` (the bundle at 1 and 2 torch threads), ``split`` (a half-batch
bundle of the same module run on each half), ``eager`` (the module itself, not the exported graph),
``float64`` (the module in float64, rounded to the dtype: the exact answer's neighbourhood), ``fp32acc``
(half dtypes: the module in float32, rounded once), ``tf32`` (float32: convolution operands rounded to TF32,
as PyTorch's default ``cudnn.allow_tf32`` does on Ampere and later GPUs; matmuls stay float32 by default),
``splitk`` (half dtypes: GEMM/conv reductions in 4 float32 parts each rounded to the dtype and summed in the
dtype, i.e. reduced-precision split-K, allowed by default for half-precision cuBLAS GEMMs), ``cuda`` (the
bundle on the GPU, only when one is present). ``tf32`` and ``splitk`` emulate GPU arithmetic on the CPU, so
a CPU-only run still calibrates for GPU providers.

The tolerance per dtype: r0 = the largest relative error over well-scaled elements (``|want| >=`` the
output's RMS), a0 = the largest ``|got - want| - r0 * |want|`` over all elements (what near-zero values,
where cancellation makes relative error meaningless, need on top). Then rtol = SAFETY * r0 and atol =
SAFETY * a0, rounded up to one significant digit: every honest difference observed passes with that factor to spare,
since SAFETY * diff <= SAFETY * (a0 + r0 |want|). atol is absolute, so these defaults assume outputs of order
one (all bundles here are normalised that way); a requester with other scales passes --rtol/--atol.

    .venv/bin/python -m bench.calibrate_float [--seeds 2] [--dtypes float32,bfloat16,float16] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from node.compute.workloads.torch_export import TorchExport, make_bundle

SAFETY = 4.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPLIT_K = 4
EMULATED = {"tf32", "splitk"}  # GPU arithmetic emulated on the CPU (left out of "without_emulated")


# -- the bundles ----------------------------------------------------------------------------------------


class MLP(torch.nn.Module):
    def __init__(self, d: int = 512, hidden: int = 1024) -> None:
        super().__init__()
        self.up, self.down, self.norm = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d), torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x + self.down(F.gelu(self.up(x))))
        return h, self.head(h)


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(16, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(64)
        self.fc = torch.nn.Linear(64 * 8 * 8, 32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.bn(self.c2(F.relu(self.c1(x)))))
        h = F.max_pool2d(h, 2)
        return h, self.fc(h.flatten(1))


class Attention(torch.nn.Module):
    def __init__(self, d: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.norm(x + self.out((att @ v).transpose(1, 2).reshape(b, t, d)))


def _models(seed: int) -> Iterator[tuple[str, torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(seed)
    conv = ConvNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained net has
        conv.bn.running_mean.normal_(0, 0.5)
        conv.bn.running_var.uniform_(0.5, 2.0)
    yield "mlp", MLP(), torch.randn(64, 512)
    yield "conv", conv, torch.randn(8, 16, 16, 16)
    yield "attention", Attention(), torch.randn(4, 64, 256)


# -- emulated GPU arithmetic ----------------------------------------------------------------------------


def _tf32(t: Any) -> Any:
    """Round a float32 tensor to TF32 (10 mantissa bits, round to nearest even), as tensor cores read it."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


_GEMMS = {F.linear, F.conv2d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


class TF32(TorchFunctionMode):
    """What PyTorch's defaults do on an Ampere+ GPU: convolutions in TF32 (``cudnn.allow_tf32`` is True),
    matmuls in full float32 (``cuda.matmul.allow_tf32`` is False)."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.conv2d:  # input and weight; the bias is added afterwards, in float32
            args = (_tf32(args[0]), _tf32(args[1]), *args[2:])
        return func(*args, **(kwargs or {}))


class SplitK(TorchFunctionMode):
    """Reduced-precision split-K: the reduction dimension in SPLIT_K float32 parts, each rounded to the
    dtype, summed in the dtype (bias added last, in the dtype)."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in _GEMMS or args[0].dtype not in (torch.float16, torch.bfloat16):
            return func(*args, **kwargs)
        dtype, x, w = args[0].dtype, args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        rest = dict(kwargs)
        rest.pop("bias", None)
        if func is F.conv2d:  # the reduction runs over input channels (groups=1 here)
            def part(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return F.conv2d(a, b, None, *args[3:], **rest)
            xs, ws = x.chunk(SPLIT_K, 1), w.chunk(SPLIT_K, 1)
        elif func is F.linear:
            part, xs, ws = F.linear, x.chunk(SPLIT_K, -1), w.chunk(SPLIT_K, -1)
        else:
            part, xs, ws = torch.matmul, x.chunk(SPLIT_K, -1), w.chunk(SPLIT_K, -2)
        # inside __torch_function__ the mode is off, so these calls run plain kernels
        total = None
        for a, b in zip(xs, ws, strict=True):
            piece = part(a.float(), b.float()).to(dtype)
            total = piece if total is None else total + piece
        if bias is not None:
            total = total + (bias.reshape(1, -1, 1, 1) if func is F.conv2d else bias)
        return total


# -- runs -----------------------------------------------------------------------------------------------


def _run_bundle(path: Path, params: dict, out: Path, device: str = "cpu", threads: int | None = None) -> list:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        TorchExport().run(params, str(path), str(out), device)
    finally:
        torch.set_num_threads(before)
    tensors = load_file(str(out))
    return [tensors[f"out{i}"] for i in range(len(tensors))]


def _eager(module: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, mode: Any = None) -> list:
    with torch.inference_mode(), mode or contextlib.nullcontext():
        result = module(x)
    outs = list(result) if isinstance(result, tuple) else [result]
    return [o.to(dtype) for o in outs]


def _variants(name: str, module: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype,
              tmp: Path) -> tuple[list, dict[str, list]]:
    """(the reference outputs, {variant: outputs}) for one module already cast to ``dtype``."""
    full, half = tmp / f"{name}.bundle", tmp / f"{name}-half.bundle"
    params = {"inputs": make_bundle(module, (x,), str(full))}
    reference = _run_bundle(full, params, tmp / "ref.out")
    found: dict[str, list] = {
        "threads1": _run_bundle(full, params, tmp / "t1.out", threads=1),
        "threads2": _run_bundle(full, params, tmp / "t2.out", threads=2),
    }
    b = x.shape[0] // 2
    make_bundle(module, (x[:b].clone(),), str(half))  # a view as example input exports dynamic shapes
    parts = [_run_bundle(half, params, tmp / "h0.out")]
    tensors = load_file(str(half))
    tensors[params["inputs"][0]] = x[b:].contiguous()  # same program, the other half as its input
    _save_like(half, tensors)
    parts.append(_run_bundle(half, params, tmp / "h1.out"))
    found["split"] = [torch.cat(pair) for pair in zip(*parts, strict=True)]
    found["eager"] = _eager(module, x, dtype)
    wide = _clone(module).double()
    found["float64"] = _eager(wide, x.double(), dtype)
    if dtype == torch.float32:
        found["tf32"] = _eager(module, x, dtype, TF32())
    else:
        found["fp32acc"] = _eager(_clone(module).float(), x.float(), dtype)
        found["splitk"] = _eager(module, x, dtype, SplitK())
    if torch.cuda.is_available():
        found["cuda"] = _run_bundle(full, params, tmp / "cuda.out", device="cuda")
    return reference, found


def _clone(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def _save_like(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Rewrite a bundle's tensors keeping its metadata (the program)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)


def _errors(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """max abs / rel error, r0 (max rel over well-scaled elements) and, per output, what atol it needs."""
    g, w = got.double(), want.double()
    diff, scale = (g - w).abs(), w.abs()
    # where want == 0 (ReLU) any difference is "infinitely" relative: left out of max_rel, covered by atol
    rel = torch.where((diff == 0) | (scale == 0), torch.zeros_like(diff), diff / scale.clamp_min(1e-300))
    rms = float(w.pow(2).mean().sqrt())
    big = scale >= rms
    return {"max_abs": float(diff.max()), "max_rel": float(rel.max()),
            "r0": float(rel[big].max()) if big.any() else 0.0, "diff": diff, "scale": scale}


def _nice(value: float) -> float:
    """Round up to one significant digit (0.0054 -> 0.006): readable, and at most 2x looser."""
    if value <= 0:
        return 0.0
    unit = 10.0 ** math.floor(math.log10(value))
    return float(f"{math.ceil(value / unit * (1 - 1e-12)) * unit:.1g}")


def calibrate(seeds: int, progress: Callable[[str], None] = lambda _: None,
              dtypes: tuple[str, ...] = tuple(DTYPES)) -> dict[str, Any]:
    """Every variant of every bundle against its reference; the per-dtype tolerance chosen from them."""
    rows: list[dict[str, Any]] = []  # one per output compared, with its element-wise "diff" and "scale"
    with tempfile.TemporaryDirectory(prefix="gpunode-calibrate-") as tmp:
        for seed in range(seeds):
            for model_name, module, x in _models(seed):
                for dname in dtypes:
                    dtype = DTYPES[dname]
                    progress(f"seed {seed} {model_name} {dname}")
                    m = _clone(module).to(dtype).eval()
                    reference, found = _variants(model_name, m, x.to(dtype), dtype, Path(tmp))
                    for variant, outs in found.items():
                        for idx, (got, want) in enumerate(zip(outs, reference, strict=True)):
                            rows.append({"seed": seed, "model": model_name, "output": f"out{idx}", "dtype": dname,
                                         "variant": variant, **_errors(got, want)})
    chosen = {d: _choose([r for r in rows if r["dtype"] == d]) for d in dtypes}
    measured = {d: _choose([r for r in rows if r["dtype"] == d and r["variant"] not in EMULATED]) for d in dtypes}
    by_variant: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        cell = by_variant.setdefault(r["dtype"], {}).setdefault(r["variant"], {"max_abs": 0.0, "r0": 0.0})
        cell["max_abs"], cell["r0"] = max(cell["max_abs"], r["max_abs"]), max(cell["r0"], r["r0"])
    return {"safety": SAFETY, "seeds": seeds, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "by_variant": by_variant, "chosen": chosen,
            "without_emulated": measured}


def _choose(rows: list[dict[str, Any]]) -> dict[str, float]:
    """r0, a0 and the tolerance they give (module docstring) over these observations."""
    worst = max(rows, key=lambda r: r["r0"])
    r0 = worst["r0"]
    a0 = max(0.0, *(float((r["diff"] - r0 * r["scale"]).max()) for r in rows))
    return {"max_abs": max(r["max_abs"] for r in rows), "max_rel": max(r["max_rel"] for r in rows), "r0": r0,
            "a0": a0, "rtol": _nice(SAFETY * r0), "atol": _nice(SAFETY * a0),
            "r0_from": f"{worst['model']}/{worst['output']} {worst['variant']} (seed {worst['seed']})"}


def render(result: dict[str, Any]) -> str:
    lines = [f"torch {result['torch']}, {result['threads']} threads, CUDA {'yes' if result['cuda'] else 'no'}, "
             f"{result['seeds']} seed(s) x (mlp, conv, attention); safety factor {result['safety']:g}", "",
             f"{'dtype':<9} {'variant':<9} {'max abs err':>12} {'max rel err (|want|>=rms)':>26}"]
    for dname, variants in result["by_variant"].items():
        for variant, cell in variants.items():
            lines.append(f"{dname:<9} {variant:<9} {cell['max_abs']:>12.3g} {cell['r0']:>26.3g}")
    lines += ["", f"{'dtype':<9} {'max abs':>9} {'max rel':>9} {'r0':>9} {'a0':>9} {'-> rtol':>9} {'atol':>9}"]
    for dname, c in result["chosen"].items():
        lines.append(f"{dname:<9} {c['max_abs']:>9.3g} {c['max_rel']:>9.3g} {c['r0']:>9.3g} {c['a0']:>9.3g} "
                     f"{c['rtol']:>9.3g} {c['atol']:>9.3g}")
    lines += ["", "without the emulated GPU arithmetic (TF32 convolutions, reduced-precision split-K):"]
    for dname, c in result["without_emulated"].items():
        lines.append(f"{dname:<9} {c['max_abs']:>9.3g} {c['max_rel']:>9.3g} {c['r0']:>9.3g} {c['a0']:>9.3g} "
                     f"{c['rtol']:>9.3g} {c['atol']:>9.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="random models per architecture (default 2)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated (default {','.join(DTYPES)})")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    dtypes = tuple(d.strip() for d in args.dtypes.split(","))
    if args.seeds < 1 or not dtypes or not set(dtypes) <= set(DTYPES):
        ap.error(f"--seeds must be >= 1 and --dtypes among {', '.join(DTYPES)}")
    start = time.perf_counter()
    result = calibrate(args.seeds, progress=lambda msg: print(msg, file=sys.stderr, flush=True), dtypes=dtypes)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2) if args.json else render(result) + f"\n\n{result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
