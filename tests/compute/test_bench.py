"""The benchmark and its attestation, on the CPU path (the GPU path runs in scripts/gpu_check.sh)."""

from __future__ import annotations

import json

import pytest

from node.cli import main
from node.compute.bench import (
    PROOF_PARAMS,
    attestation_hash,
    benchmark,
    int8_proof,
    measure_float,
    measure_int8,
    registry_figures,
)
from node.compute.commitment import commit_bytes
from node.compute.hardware import detect


def test_measurements_are_positive_and_consistent():
    m = measure_int8("cpu", 64, warmup=1, reps=2)
    assert m.kind == "int8" and m.repetitions == 2 and 0 < m.best_s <= m.median_s
    assert m.tera_ops == pytest.approx(2 * 64**3 / m.best_s / 1e12)
    f = measure_float("cpu", 64, warmup=1, reps=2)
    assert f.kind == "fp32" and f.tera_ops > 0


def test_int8_proof_can_be_rechecked_from_the_generator():
    """Anyone can recompute the attested root: C from the documented generator, committed as RFC 6962."""
    import torch

    from node.compute.workloads.generator import generate

    proof = int8_proof("cpu")
    p = PROOF_PARAMS
    a, b = generate(p["seed"], 1, p["m"], p["k"]), generate(p["seed"], 2, p["k"], p["n"])
    c = (a.long() @ b.long()).to(torch.int32)
    expected = commit_bytes(bytes(c.contiguous().view(torch.uint8).flatten().tolist()))  # little-endian int32
    assert proof["result_root"] == "0x" + expected.root.hex()
    assert proof["result_size"] == p["m"] * p["n"] * 4


def test_attestation_hash_covers_every_field():
    cap = detect()
    att = benchmark(cap, quick=True)
    assert att["benchmark_hash"] == "0x" + attestation_hash(att).hex()
    assert att["machine"]["source"] == cap.source and att["devices"][0]["device"] == "cpu"
    tampered = json.loads(json.dumps(att))
    tampered["devices"][0]["int8_tops"] *= 2
    assert attestation_hash(tampered) != attestation_hash(att)
    figures = registry_figures(att)
    assert figures["deviceCount"] == 1 and figures["int8TopsMilli"] == round(att["devices"][0]["int8_tops"] * 1000)
    assert figures["bf16TflopsMilli"] == 0  # a CPU has no bf16 figure to register


def test_cli_detect_and_bench(tmp_path, capsys):
    assert main(["detect", "--json"]) == 0
    detected = json.loads(capsys.readouterr().out)
    assert detected["source"] in {"nvml", "torch", "cpu"} and detected["cpu"]["cores"] > 0
    out = tmp_path / "a" / "attestation.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    att = json.loads(out.read_text())
    assert att["benchmark_hash"] == "0x" + attestation_hash(att).hex()
    assert "attestation written" in capsys.readouterr().out
