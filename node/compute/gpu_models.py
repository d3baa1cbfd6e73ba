"""Vendor peak throughput for GPUs a provider is likely to offer.

A benchmark result means little without the ceiling it should approach: these numbers let the node (and a
requester checking an attestation) tell a healthy card from a throttled, power-capped or misreported one.
All figures are dense (no 2:4 structured sparsity), because the jobs we run are dense matmuls; vendor
datasheets usually headline the sparse figure, which is exactly twice these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    """Datasheet ceilings for one GPU model (dense tensor-core throughput).

    ``fp16_tflops`` is FP16 with FP32 accumulate, what PyTorch matmuls use; on GeForce cards that is half the
    FP16-accumulate figure NVIDIA headlines. ``None`` means the datasheet lists no such rate (Volta and Turing
    have no BF16; Volta has no INT8 tensor cores).
    """

    model: str
    int8_tops: float | None
    bf16_tflops: float | None
    fp16_tflops: float | None


# Source: NVIDIA datasheets (H100, H200, A100, L40S, L4, A10, V100, T4) and NVIDIA architecture whitepapers for
# GeForce (Ada "AD102" appendix for RTX 4090, Ampere "GA102" appendix for RTX 3090). Sparse figures halved.
H100_SXM = GpuPeak("H100 SXM", int8_tops=1979.0, bf16_tflops=989.5, fp16_tflops=989.5)
H100_PCIE = GpuPeak("H100 PCIe", int8_tops=1513.0, bf16_tflops=756.5, fp16_tflops=756.5)
H100_NVL = GpuPeak("H100 NVL", int8_tops=1670.5, bf16_tflops=835.5, fp16_tflops=835.5)
H200_SXM = GpuPeak("H200 SXM", int8_tops=1979.0, bf16_tflops=989.5, fp16_tflops=989.5)
H200_NVL = GpuPeak("H200 NVL", int8_tops=1670.5, bf16_tflops=835.5, fp16_tflops=835.5)
# Every A100 variant has the same tensor peak; they differ in memory size/bandwidth and power limit.
A100_SXM_80 = GpuPeak("A100 80GB SXM", int8_tops=624.0, bf16_tflops=312.0, fp16_tflops=312.0)
A100_SXM_40 = GpuPeak("A100 40GB SXM", int8_tops=624.0, bf16_tflops=312.0, fp16_tflops=312.0)
A100_PCIE_80 = GpuPeak("A100 80GB PCIe", int8_tops=624.0, bf16_tflops=312.0, fp16_tflops=312.0)
A100_PCIE_40 = GpuPeak("A100 40GB PCIe", int8_tops=624.0, bf16_tflops=312.0, fp16_tflops=312.0)
A100 = GpuPeak("A100", int8_tops=624.0, bf16_tflops=312.0, fp16_tflops=312.0)
L40S = GpuPeak("L40S", int8_tops=733.0, bf16_tflops=362.05, fp16_tflops=362.05)
L4 = GpuPeak("L4", int8_tops=242.5, bf16_tflops=121.0, fp16_tflops=121.0)
A10 = GpuPeak("A10", int8_tops=250.0, bf16_tflops=125.0, fp16_tflops=125.0)
RTX_4090 = GpuPeak("GeForce RTX 4090", int8_tops=660.6, bf16_tflops=165.2, fp16_tflops=165.2)
RTX_3090 = GpuPeak("GeForce RTX 3090", int8_tops=284.0, bf16_tflops=71.0, fp16_tflops=71.0)
V100_SXM2 = GpuPeak("V100 SXM2", int8_tops=None, bf16_tflops=None, fp16_tflops=125.0)
V100_PCIE = GpuPeak("V100 PCIe", int8_tops=None, bf16_tflops=None, fp16_tflops=112.0)
V100S_PCIE = GpuPeak("V100S PCIe", int8_tops=None, bf16_tflops=None, fp16_tflops=130.0)
T4 = GpuPeak("T4", int8_tops=130.0, bf16_tflops=None, fp16_tflops=65.0)

# (patterns that must all match the lower-cased NVML name, peak). First match wins, so a variant comes before
# its family. Word boundaries keep "L4" off "L40S", "A10" off "A100"/"A10G" and "H200" off "GH200"; the
# negative look-aheads keep cut-down or different-silicon siblings (4090 D, laptop parts, 3090 Ti) unmatched
# rather than credited with the full card's peak. A family with variant-dependent peaks has no catch-all.
_RULES: tuple[tuple[tuple[str, ...], GpuPeak], ...] = (
    ((r"\bh100\b", r"\bnvl\b"), H100_NVL),
    ((r"\bh100\b", r"\bpcie\b"), H100_PCIE),
    ((r"\bh100\b", r"\b(sxm\w*|hbm3)\b"), H100_SXM),
    ((r"\bh200\b", r"\bnvl\b"), H200_NVL),
    ((r"\bh200\b",), H200_SXM),
    ((r"\ba100\b", r"\bsxm\w*\b", r"\b80gb\b"), A100_SXM_80),
    ((r"\ba100\b", r"\bsxm\w*\b", r"\b40gb\b"), A100_SXM_40),
    ((r"\ba100\b", r"\bpcie\b", r"\b80gb\b"), A100_PCIE_80),
    ((r"\ba100\b", r"\bpcie\b", r"\b40gb\b"), A100_PCIE_40),
    ((r"\ba100\b",), A100),
    ((r"\bl40s\b",), L40S),
    ((r"\bl4\b",), L4),
    ((r"\ba10\b",), A10),
    ((r"\brtx 4090\b(?! d\b)(?!.*\blaptop\b)",), RTX_4090),
    ((r"\brtx 3090\b(?! ti\b)(?!.*\blaptop\b)",), RTX_3090),
    ((r"\bv100s\b",), V100S_PCIE),
    ((r"\bv100\b", r"\bpcie\b"), V100_PCIE),
    ((r"\bv100\b", r"\bsxm2\b"), V100_SXM2),
    ((r"\bt4\b",), T4),
)
_COMPILED = tuple((tuple(re.compile(p) for p in patterns), peak) for patterns, peak in _RULES)
_MIG = re.compile(r"\bmig\b")


def peak_for(name: str | None) -> GpuPeak | None:
    """Peak throughput for an NVML/torch device name, or None when the model (or its variant) is not known.

    A MIG slice name ("... MIG 3g.40gb") gets None: the slice owns only part of the SMs, so the whole card's
    peak would overstate it. ``None`` is accepted because detection reports an unreadable name as None.
    """
    normal = " ".join((name or "").lower().replace("_", " ").split())
    if not normal or _MIG.search(normal):
        return None
    for patterns, peak in _COMPILED:
        if all(p.search(normal) for p in patterns):
            return peak
    return None


KNOWN_MODELS: tuple[GpuPeak, ...] = tuple(dict.fromkeys(peak for _, peak in _RULES))
