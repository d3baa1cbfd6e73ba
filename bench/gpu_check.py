"""The GPU-only checks of the compute layer, in one run (called by scripts/gpu_check.sh on a GPU machine):
matmul-int8/v1 on CUDA (torch._int_mm where its shape rules allow, the exact path elsewhere) against the
exact int64 CPU reference over many shapes, and a torch-export/v1 job on CUDA against eager CPU.
Prints a report and writes it as JSON; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SHAPES = [(1, 16, 8), (16, 16, 16), (17, 16, 8), (17, 24, 32), (32, 32, 32), (33, 40, 48), (64, 8, 64),
          (128, 4096, 8), (255, 257, 259), (1024, 1024, 1024), (4096, 4096, 4096), (8192, 1024, 8192),
          (3, 5, 7), (16, 17, 8), (100, 200, 300)]


def check_matmul(device: str, max_ops: float) -> list[dict]:
    import torch

    from node.compute.workloads import execute
    from node.compute.workloads.generator import generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in (s for s in SHAPES if s[0] * s[1] * s[2] <= max_ops):
            params = {"m": m, "k": k, "n": n, "seed": m * 1_000_003 + k * 1009 + n}
            out = Path(tmp) / "C.bin"
            start = time.perf_counter()
            summary = execute(device=device, workload="matmul-int8/v1", params=params, input_path=None,
                              output_path=str(out))
            seconds = time.perf_counter() - start
            got = torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.int32).reshape(m, n)
            a = generate(params["seed"], 1, m, k)
            b = generate(params["seed"], 2, k, n)
            ref = (a.long() @ b.long()).to(torch.int32)
            ok = torch.equal(got, ref)
            rows.append({"shape": [m, k, n], "exact": ok, "seconds": round(seconds, 4), "summary": summary})
            print(f"  matmul-int8 {m}x{k}x{n}: {'exact' if ok else 'MISMATCH'} in {seconds:.3f}s "
                  f"({summary.get('method', '?')})")
    return rows


def check_export(device: str) -> dict:
    import torch
    from safetensors.torch import load_file

    from node.compute.workloads import execute
    from node.compute.workloads.torch_export import make_bundle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    x = torch.randn(32, 64)
    with tempfile.TemporaryDirectory() as tmp:
        bundle, out = Path(tmp) / "bundle.safetensors", Path(tmp) / "out.safetensors"
        make_bundle(model, [x], str(bundle), input_names=["x"])
        execute(device=device, workload="torch-export/v1", params={"inputs": ["x"]}, input_path=str(bundle),
                output_path=str(out))
        got = load_file(str(out))["out0"]
    with torch.no_grad():
        ref = model(x)
    err = float((got.cpu() - ref).abs().max())
    print(f"  torch-export on {device}: max |job output - cpu eager| = {err:.3g}")
    return {"max_abs_error": err, "ok": err < 1e-3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--max-ops", type=float, default=float("inf"), help="skip shapes with m*k*n above this")
    args = ap.parse_args(argv)
    report = {"matmul_int8": check_matmul(args.device, args.max_ops), "torch_export": check_export(args.device)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["exact"] for r in report["matmul_int8"]) and report["torch_export"]["ok"]
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} ({len(report['matmul_int8'])} int8 shapes, torch-export)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
