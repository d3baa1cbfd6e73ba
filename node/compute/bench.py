"""Measured capacity: int8 and bf16 (fp32 on a CPU) matmul throughput per device, and the attestation
that a provider registers on chain.

Providers are priced and chosen by what their hardware really does, not by a datasheet, so the figures
come from timed runs with warm-up and several repetitions (the best repetition is reported: it is the
least disturbed by other load, and the median is kept beside it). The attestation also carries the
commitment root of a seeded matmul-int8 run, which anyone can recompute to check that the machine computed
exactly, not just fast.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_utils import keccak

from node.compute.gpu_models import peak_for
from node.compute.hardware import MachineCapacity

ATTESTATION_VERSION = 1
PROOF_PARAMS = {"m": 512, "k": 512, "n": 512, "seed": 0x67707530}  # small, so anyone can recheck it


@dataclass(frozen=True)
class Measurement:
    kind: str  # "int8" or "bf16" or "fp32"
    size: int  # square matrix edge
    repetitions: int
    best_s: float
    median_s: float

    @property
    def tera_ops(self) -> float:
        """TOPS (int8) or TFLOPS (float): 2·n³ operations over the best repetition."""
        return 2 * self.size**3 / self.best_s / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: str, warmup: int, reps: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def measure_int8(device: str, size: int, *, warmup: int = 2, reps: int = 5) -> Measurement:
    """int8 × int8 → int32 throughput with torch._int_mm (CUDA tensor cores, or the CPU kernel)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(size)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen).to(device)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen).to(device)
    best, median = _time(lambda: torch._int_mm(a, b), device, warmup, reps)
    return Measurement("int8", size, reps, best, median)


def measure_float(device: str, size: int, *, warmup: int = 2, reps: int = 5) -> Measurement:
    """bf16 throughput on a GPU; fp32 on a CPU, where bf16 matmul is emulated and says little."""
    import torch

    dtype, kind = (torch.bfloat16, "bf16") if device.startswith("cuda") else (torch.float32, "fp32")
    gen = torch.Generator(device="cpu").manual_seed(size + 1)
    a = torch.randn((size, size), generator=gen).to(device=device, dtype=dtype)
    b = torch.randn((size, size), generator=gen).to(device=device, dtype=dtype)
    best, median = _time(lambda: a @ b, device, warmup, reps)
    return Measurement(kind, size, reps, best, median)


def int8_proof(device: str) -> dict[str, Any]:
    """Runs matmul-int8/v1 on a fixed seed and commits to its output, as a job would."""
    from node.compute.commitment import commit_file
    from node.compute.workloads import execute

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "C.bin"
        execute(device=device, workload="matmul-int8/v1", params=dict(PROOF_PARAMS), input_path=None,
                output_path=str(out))
        c = commit_file(out)
    return {"workload": "matmul-int8/v1", "params": PROOF_PARAMS, "result_root": "0x" + c.root.hex(),
            "result_size": c.size}


def device_names(cap: MachineCapacity) -> list[tuple[str, str]]:
    """(torch device, human name) for every device jobs can run on."""
    if cap.gpus:
        return [(f"cuda:{g.index}", g.name) for g in cap.gpus]
    return [("cpu", cap.cpu.model or "CPU")]


def benchmark(cap: MachineCapacity, *, quick: bool = False,
              progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Measures every device and returns the attestation (a JSON-able dict with its own hash)."""
    devices = []
    for device, name in device_names(cap):
        size = (4096 if device.startswith("cuda") else 1024) // (4 if quick else 1)
        reps = 3 if quick else 5
        progress(f"{device} ({name}): int8 {size}×{size}, {reps} repetitions")
        i8 = measure_int8(device, size, reps=reps)
        progress(f"{device} ({name}): {'bf16' if device.startswith('cuda') else 'fp32'} {size}×{size}")
        fl = measure_float(device, size, reps=reps)
        peak = peak_for(name) if device.startswith("cuda") else None
        devices.append({
            "device": device, "name": name,
            "int8_tops": round(i8.tera_ops, 4), "float_kind": fl.kind, "float_tflops": round(fl.tera_ops, 4),
            "peak_int8_tops": getattr(peak, "int8_tops", None),
            "peak_bf16_tflops": getattr(peak, "bf16_tflops", None),
            "measurements": [asdict(i8), asdict(fl)],
        })
    progress("seeded matmul-int8 run for the commitment proof")
    attestation = {
        "version": ATTESTATION_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"source": cap.source, "cpu": asdict(cap.cpu), "gpus": [g.name for g in cap.gpus]},
        "devices": devices,
        "int8_proof": int8_proof(devices[0]["device"]),
    }
    attestation["benchmark_hash"] = "0x" + attestation_hash(attestation).hex()
    return attestation


def attestation_hash(attestation: dict[str, Any]) -> bytes:
    """keccak256 of the canonical JSON (sorted keys, no whitespace) without the hash field itself; this is
    the `benchmarkHash` a provider registers."""
    body = {k: v for k, v in attestation.items() if k != "benchmark_hash"}
    return keccak(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def registry_figures(attestation: dict[str, Any]) -> dict[str, int]:
    """The fixed-point figures ProviderRegistry.Capacity takes (×1000, summed over devices)."""
    devs = attestation["devices"]
    return {
        "int8TopsMilli": round(sum(d["int8_tops"] for d in devs) * 1000),
        "bf16TflopsMilli": round(sum(d["float_tflops"] for d in devs if d["float_kind"] == "bf16") * 1000),
        "deviceCount": len(devs),
    }


def render(attestation: dict[str, Any]) -> Any:
    """A rich table of the figures beside each device's datasheet peak."""
    from rich.table import Table

    table = Table(title="gpunode bench", title_justify="left")
    for col in ("device", "name", "int8 TOPS", "peak", "float TFLOPS", "peak bf16"):
        table.add_column(col, justify="right" if col not in ("device", "name") else "left")
    for d in attestation["devices"]:
        def pct(value: float, peak: float | None) -> str:
            return "—" if not peak else f"{peak:g} ({100 * value / peak:.0f}%)"

        table.add_row(d["device"], d["name"], f"{d['int8_tops']:.3f}", pct(d["int8_tops"], d["peak_int8_tops"]),
                      f"{d['float_tflops']:.3f} {d['float_kind']}",
                      pct(d["float_tflops"], d["peak_bf16_tflops"]) if d["float_kind"] == "bf16" else "—")
    return table


def matmul_work(device: str, n: int, iters: int) -> dict[str, Any]:
    """A fixed amount of torch work (iters float32 n×n matmuls), callable in-process or as a worker target;
    bench/node_overhead.py runs it both ways to price the node's own overhead."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(n)
    a = torch.randn((n, n), generator=gen).to(device)
    b = torch.randn((n, n), generator=gen).to(device)
    acc = torch.zeros((n, n), device=device)
    for _ in range(iters):
        acc += a @ b
    _sync(device)
    return {"checksum": float(acc[0, 0].item())}


def noop(device: str) -> dict[str, Any]:
    """An empty job: its round trip through a warm worker is the node's fixed per-job overhead."""
    return {"device": device}
