"""Hardware detection against a fake NVML (two GPUs, one in MIG mode, one without power readings) and the real
machine, which has no GPU: every gap must show up as None plus a note, never as silent zero capacity."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from rich.console import Console

from node.compute.gpu_models import A100_SXM_80, H100_PCIE, H100_SXM, RTX_4090, peak_for
from node.compute.hardware import (
    GpuDevice,
    GpuProcess,
    Memory,
    MigInstance,
    NvmlApi,
    detect,
    detect_async,
    detect_command,
    foreign_processes,
    is_idle,
    read_cpu_info,
    render_json,
    render_table,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


MIG_NAME = "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
NAMES = {"gpu0": "NVIDIA H100 80GB HBM3", "gpu1": "NVIDIA A100-SXM4-80GB", "gpu1/mig0": MIG_NAME, "gpu1/mig2": MIG_NAME}
UUIDS = {"gpu0": "GPU-aaaa", "gpu1": "GPU-bbbb", "gpu1/mig0": "MIG-m0", "gpu1/mig2": "MIG-m2"}
MEMORY = {"gpu0": Memory(80 * GIB, 70 * GIB, 10 * GIB), "gpu1": Memory(80 * GIB, 79 * GIB, 1 * GIB)}
MIG_MEMORY = Memory(40 * GIB, 39 * GIB, 1 * GIB)


class FakeNvml(NvmlApi):
    """Two GPUs: an H100 running two processes, and an A100 in MIG mode (slots 0 and 2 populated) whose power
    and utilization readings are NotSupported, as on real MIG-mode cards."""

    def __init__(self, init_error: Exception | None = None, devices: int = 2) -> None:
        self.init_error, self.devices = init_error, devices
        self.inits = self.shutdowns = 0

    def init(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    # Plain readings, grouped like NvmlApi's.
    def shutdown(self) -> None:
        self.shutdowns += 1
    def device_count(self) -> int:
        return self.devices
    def driver_version(self) -> str:
        return "550.54.15"
    def cuda_driver_version(self) -> int:
        return 12040
    def handle(self, index: int) -> Any:
        return f"gpu{index}"
    def uuid(self, handle: Any) -> str:
        return UUIDS[handle]
    def name(self, handle: Any) -> str:
        return NAMES[handle]
    def memory(self, handle: Any) -> Memory:
        return MEMORY.get(handle, MIG_MEMORY)
    def compute_capability(self, handle: Any) -> tuple[int, int]:
        return (9, 0) if handle == "gpu0" else (8, 0)
    def compute_processes(self, handle: Any) -> list[tuple[int, int | None]]:
        return [(1234, 1024 * MIB), (4321, None)] if handle == "gpu0" else []
    def mig_mode(self, handle: Any) -> int:
        return pynvml.NVML_DEVICE_MIG_ENABLE if handle == "gpu1" else pynvml.NVML_DEVICE_MIG_DISABLE
    def mig_device_count(self, handle: Any) -> int:
        return 7

    # What the A100 in MIG mode does not support, raised both ways pynvml spells it.
    def power_usage_mw(self, handle: Any) -> int:
        if handle == "gpu1":
            raise pynvml.NVMLError_NotSupported()
        return 350_123
    def power_limit_mw(self, handle: Any) -> int:
        if handle == "gpu1":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 700_000
    def utilization_gpu_pct(self, handle: Any) -> int:
        if handle == "gpu1":
            raise pynvml.NVMLError_NotSupported()
        return 87

    def mig_device_handle(self, handle: Any, index: int) -> Any:
        if index not in (0, 2):
            raise pynvml.NVMLError_NotFound()  # an empty slot
        return f"{handle}/mig{index}"


def test_nvml_reads_every_field_of_both_gpus() -> None:
    fake = FakeNvml()
    cap = detect(fake)
    assert cap.source == "nvml"
    assert fake.inits == 1 and fake.shutdowns == 1
    h100, a100 = cap.gpus
    assert h100 == GpuDevice(
        index=0, uuid="GPU-aaaa", name="NVIDIA H100 80GB HBM3", vram_total_mib=81920, vram_free_mib=71680,
        compute_capability=(9, 0), driver_version="550.54.15", cuda_version="12.4", power_draw_w=350.1,
        power_limit_w=700.0, utilization_pct=87, processes=(GpuProcess(1234, 1024), GpuProcess(4321, None)),
        mig_enabled=False, mig_instances=(),
    )
    assert a100 == GpuDevice(
        index=1, uuid="GPU-bbbb", name="NVIDIA A100-SXM4-80GB", vram_total_mib=81920, vram_free_mib=80896,
        compute_capability=(8, 0), driver_version="550.54.15", cuda_version="12.4", power_draw_w=None,
        power_limit_w=None, utilization_pct=None, processes=(), mig_enabled=True,
        mig_instances=(
            MigInstance(0, "MIG-m0", MIG_NAME, 40960, 39936), MigInstance(2, "MIG-m2", MIG_NAME, 40960, 39936),
        ),
    )
    assert cap.cpu.cores > 0


def test_not_supported_becomes_none_with_a_note_and_empty_mig_slots_are_silent() -> None:
    cap = detect(FakeNvml())
    gpu1_notes = [n for n in cap.notes if n.startswith("GPU 1 (NVIDIA A100-SXM4-80GB)")]
    assert len(gpu1_notes) == 3, cap.notes
    for what in ("power draw", "power limit", "utilization"):
        assert any(what in n and "Not Supported" in n for n in gpu1_notes), (what, cap.notes)
    assert not any(n.startswith("GPU 0") for n in cap.notes)
    assert not any("slot" in n for n in cap.notes)  # NotFound on slots 1, 3..6 means "empty", not a fault


def test_compute_devices_offers_whole_gpus_and_mig_slices() -> None:
    targets = detect(FakeNvml()).compute_devices()
    expected = [("gpu", 0, "GPU-aaaa", 81920), ("mig", 1, "MIG-m0", 40960), ("mig", 1, "MIG-m2", 40960)]
    assert [(t.kind, t.gpu_index, t.uuid, t.memory_mib) for t in targets] == expected


class MigWithoutInstances(FakeNvml):
    def mig_device_handle(self, handle: Any, index: int) -> Any:
        raise pynvml.NVMLError_NotFound()


def test_mig_enabled_without_instances_is_explained() -> None:
    cap = detect(MigWithoutInstances())
    assert cap.gpus[1].mig_enabled is True and cap.gpus[1].mig_instances == ()
    assert any("MIG is enabled but no MIG instance exists" in n for n in cap.notes)
    assert [t.kind for t in cap.compute_devices()] == ["gpu"]


class LostSecondGpu(FakeNvml):
    def handle(self, index: int) -> Any:
        if index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return super().handle(index)


def test_a_device_without_handle_is_skipped_with_a_note() -> None:
    cap = detect(LostSecondGpu())
    assert cap.source == "nvml" and [g.index for g in cap.gpus] == [0]
    assert any(n.startswith("GPU 1: handle") and "GPU is lost" in n for n in cap.notes)


def test_cuda_visible_devices_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    cap = detect(FakeNvml())
    assert len(cap.gpus) == 2  # NVML ignores it; we report the machine, and say so
    assert any(n.startswith("CUDA_VISIBLE_DEVICES='1' is set") for n in cap.notes)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_nvml_init_failure_falls_back_to_cpu_with_reasons(no_cuda: None) -> None:
    fake = FakeNvml(init_error=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    cap = detect(fake)
    assert cap.source == "cpu" and cap.gpus == ()
    assert fake.shutdowns == 0  # never shut down what never initialised
    text = " | ".join(cap.notes)
    for reason in ("NVML not available", "NVML Shared Library Not Found", "torch.cuda.is_available() is False",
                   "no GPU found"):
        assert reason in text, cap.notes
    (target,) = cap.compute_devices()
    assert target.kind == "cpu" and target.name == cap.cpu.model


def test_nvml_without_devices_falls_back_and_says_so(no_cuda: None) -> None:
    cap = detect(FakeNvml(devices=0))
    assert cap.source == "cpu"
    assert any("NVML works but reports no usable GPU" in n for n in cap.notes)


def test_torch_fallback_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    props = SimpleNamespace(name="NVIDIA L4", total_memory=24 * GIB, major=8, minor=9, uuid="1234-abcd")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (20 * GIB, 24 * GIB))
    cap = detect(FakeNvml(init_error=pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)))
    assert cap.source == "torch"
    (gpu,) = cap.gpus
    assert (gpu.name, gpu.uuid, gpu.vram_total_mib, gpu.vram_free_mib) == ("NVIDIA L4", "GPU-1234-abcd", 24576, 20480)
    assert gpu.compute_capability == (8, 9) and gpu.processes is None and gpu.power_draw_w is None
    assert any("Driver Not Loaded" in n for n in cap.notes)
    assert any("found through torch.cuda" in n for n in cap.notes)
    assert not is_idle(gpu, set(), 100)  # without NVML we cannot see who else uses it


def _nvml_loads() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_NVML = _nvml_loads()


@pytest.mark.skipif(HAS_NVML, reason="this machine has NVML; see test_real_machine_with_nvml")
def test_real_machine_is_cpu_only_and_says_why() -> None:
    cap = detect()  # real pynvml: no libnvidia-ml here, and the torch in the venv is the CPU build
    assert cap.source == "cpu" and cap.gpus == ()
    assert cap.cpu.cores > 0 and cap.cpu.model
    assert cap.cpu.ram_total_mib and cap.cpu.ram_total_mib > 0
    assert cap.cpu.ram_available_mib and 0 < cap.cpu.ram_available_mib <= cap.cpu.ram_total_mib
    assert cap.notes and any(n.startswith("NVML not available") for n in cap.notes)
    assert any("torch.cuda.is_available() is False" in n for n in cap.notes)
    with pytest.raises(pynvml.NVMLError):
        NvmlApi().init()


@pytest.mark.skipif(not HAS_NVML, reason="needs an NVIDIA driver (libnvidia-ml)")
def test_real_machine_with_nvml() -> None:
    cap = detect()
    assert cap.source == "nvml" and cap.gpus, cap.notes
    for gpu in cap.gpus:
        assert gpu.name and gpu.uuid and gpu.vram_total_mib and gpu.vram_total_mib > 0
        assert gpu.compute_capability and gpu.driver_version and gpu.cuda_version
        assert gpu.processes is not None
    assert cap.compute_devices() or any("MIG" in n for n in cap.notes)


def test_nvml_api_wraps_the_pynvml_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real wrapper over stubbed pynvml functions: setattr(raising=True) also proves each name exists."""
    obj = SimpleNamespace
    calls: list[str] = []
    stubs: dict[str, Any] = {
        "nvmlInit": lambda: calls.append("init"),
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlSystemGetDriverVersion": lambda: "560.35.03",
        "nvmlSystemGetCudaDriverVersion": lambda: 12060,
        "nvmlDeviceGetHandleByIndex": lambda i: f"h{i}",
        "nvmlDeviceGetUUID": lambda h: "GPU-real",
        "nvmlDeviceGetName": lambda h: "NVIDIA L40S",
        "nvmlDeviceGetMemoryInfo": lambda h: obj(total=48 * GIB, free=40 * GIB, used=8 * GIB),
        "nvmlDeviceGetCudaComputeCapability": lambda h: (8, 9),
        "nvmlDeviceGetPowerUsage": lambda h: 91_500,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 350_000,
        "nvmlDeviceGetUtilizationRates": lambda h: obj(gpu=3, memory=1),
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [obj(pid=77, usedGpuMemory=512 * MIB)],
        "nvmlDeviceGetMigMode": lambda h: [pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE],
        "nvmlDeviceGetMaxMigDeviceCount": lambda h: 0,
        "nvmlDeviceGetMigDeviceHandleByIndex": lambda h, i: None,
    }
    for name, fn in stubs.items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cap = detect()
    assert calls == ["init", "shutdown"] and cap.source == "nvml" and cap.notes == ()
    assert cap.gpus == (GpuDevice(
        index=0, uuid="GPU-real", name="NVIDIA L40S", vram_total_mib=49152, vram_free_mib=40960,
        compute_capability=(8, 9), driver_version="560.35.03", cuda_version="12.6", power_draw_w=91.5,
        power_limit_w=350.0, utilization_pct=3, processes=(GpuProcess(77, 512),), mig_enabled=False,
    ),)  # MIG pending-enable is not MIG enabled: the current mode counts


def test_torch_fallback_can_be_disabled() -> None:
    cap = detect(FakeNvml(init_error=RuntimeError("boom")), use_torch=False)
    assert cap.source == "cpu"
    assert cap.notes[0] == "NVML not available: RuntimeError: boom"
    assert "torch.cuda fallback disabled" in cap.notes


def test_read_cpu_info_parses_proc(tmp_path: Path) -> None:
    block = "processor\t: {0}\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t\t: {1}\n"
    (tmp_path / "cpuinfo").write_text("\n".join(block.format(i, i // 2) for i in range(4)))  # 4 threads, 2 cores
    (tmp_path / "meminfo").write_text("MemTotal:       16384000 kB\nMemFree:  1 kB\nMemAvailable:    8192000 kB\n")
    cpu = read_cpu_info(tmp_path)
    assert cpu.model == "Test CPU 9000" and cpu.physical_cores == 2
    assert (cpu.ram_total_mib, cpu.ram_available_mib) == (16000, 8000)


def test_read_cpu_info_without_proc_falls_back(tmp_path: Path) -> None:
    notes: list[str] = []
    cpu = read_cpu_info(tmp_path / "missing", notes)
    assert cpu.model and cpu.cores > 0 and cpu.physical_cores is None
    assert cpu.ram_total_mib and cpu.ram_total_mib > 0  # from sysconf
    assert notes == []


def test_foreign_processes_and_idle() -> None:
    h100 = detect(FakeNvml()).gpus[0]
    assert foreign_processes(h100, {1234}) == (GpuProcess(4321, None),)
    assert foreign_processes(h100, {1234, 4321}) == ()
    assert not is_idle(h100, {1234}, 100)  # someone else holds a context
    assert not is_idle(h100, {1234, 4321}, 10)  # only ours, but 87 % busy
    assert is_idle(h100, {1234, 4321}, 90)
    quiet = replace(h100, processes=(), utilization_pct=0)
    assert is_idle(quiet, set(), 0)
    assert not is_idle(replace(quiet, utilization_pct=5), set(), 4)  # a game shows only as utilization
    assert not is_idle(replace(quiet, processes=None), set(), 100)  # unknown processes: assume busy
    assert is_idle(replace(quiet, utilization_pct=None), set(), 0)  # MIG mode: processes decide


def test_to_dict_is_plain_json() -> None:
    cap = detect(FakeNvml())
    data = cap.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["gpus"][0]["compute_capability"] == [9, 0]
    assert data["gpus"][1]["mig_instances"][1]["uuid"] == "MIG-m2"
    assert isinstance(data["notes"], list) and data["source"] == "nvml"
    assert json.loads(render_json(cap)) == data


def test_render_table_shows_gpus_and_notes() -> None:
    console = Console(record=True, width=200)
    console.print(render_table(detect(FakeNvml())))
    text = console.export_text()
    for expected in ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "70.0/80.0", "9.0", "350.1/700.0", "?/?",
                     "on (2)", "off", "source: nvml", "power draw unavailable"):
        assert expected in text, expected


def test_render_table_cpu_only(no_cuda: None) -> None:
    console = Console(record=True, width=200)
    cap = detect(FakeNvml(init_error=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    console.print(render_table(cap))
    text = " ".join(console.export_text().split())  # notes wrap at the table's width, which the CPU name sets
    assert "source: cpu" in text and cap.cpu.model in text and "NVML Shared Library Not Found" in text


def test_detect_command_json_and_table() -> None:
    console = Console(record=True, width=200)
    assert detect_command(True, console, nvml=FakeNvml()) == 0
    assert json.loads(console.export_text())["gpus"][0]["uuid"] == "GPU-aaaa"
    assert detect_command(False, console, nvml=FakeNvml()) == 0
    assert "NVIDIA H100 80GB HBM3" in console.export_text()


async def test_detect_async_matches_detect() -> None:
    assert await detect_async(FakeNvml()) == detect(FakeNvml())


# The four NVML spellings the node must recognise, then the rest of the table by model name.
NVML_NAMES = {"NVIDIA H100 80GB HBM3": H100_SXM, "NVIDIA H100 PCIe": H100_PCIE,
              "NVIDIA A100-SXM4-80GB": A100_SXM_80, "NVIDIA GeForce RTX 4090": RTX_4090}
OTHER_NAMES = {
    "NVIDIA H100 NVL": "H100 NVL", "NVIDIA H200": "H200 SXM", "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA A100-SXM4-40GB": "A100 40GB SXM", "NVIDIA A100-PCIE-40GB": "A100 40GB PCIe",
    "NVIDIA A100 80GB PCIe": "A100 80GB PCIe", "NVIDIA L40S": "L40S", "NVIDIA L4": "L4", "NVIDIA A10": "A10",
    "NVIDIA GeForce RTX 3090": "GeForce RTX 3090", "Tesla V100-SXM2-16GB": "V100 SXM2",
    "Tesla V100-PCIE-32GB": "V100 PCIe", "Tesla V100S-PCIE-32GB": "V100S PCIe", "Tesla T4": "T4",
}
UNKNOWN_NAMES = ["NVIDIA GeForce RTX 4080", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA A10G",
                 "NVIDIA L40", "NVIDIA GH200 480GB", MIG_NAME, "Tesla T40", "", None]


@pytest.mark.parametrize("name", NVML_NAMES)
def test_peak_for_nvml_names(name: str) -> None:
    assert peak_for(name) is NVML_NAMES[name]
    assert peak_for(f"  {name.upper()} ") is NVML_NAMES[name]


@pytest.mark.parametrize("name", OTHER_NAMES)
def test_peak_for_other_models(name: str) -> None:
    peak = peak_for(name)
    assert peak is not None and peak.model == OTHER_NAMES[name]


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_peak_for_unknown_is_none(name: str | None) -> None:
    assert peak_for(name) is None


def test_peaks_are_dense_and_bf16_missing_only_before_ampere() -> None:
    assert (H100_SXM.bf16_tflops, H100_SXM.int8_tops) == (989.5, 1979.0)  # not the 2x sparse headline
    assert all(p and p.bf16_tflops is None and p.fp16_tflops for p in map(peak_for, ("Tesla V100-SXM2-16GB", "T4")))
