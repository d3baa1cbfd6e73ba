"""What this machine can offer: GPUs through NVML (falling back to torch.cuda), else the CPU.

A node that under-reports earns nothing and one that over-reports fails verification. So a field the driver
will not give becomes None with a note saying why (never a fake 0), and a machine without a GPU is described
as CPU-only with the reasons attached, never as silent zero capacity.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import pynvml  # pure Python (ctypes): importing never fails for a missing driver, only nvmlInit() does
from rich.console import Console
from rich.table import Table
from rich.text import Text

Source = Literal["nvml", "torch", "cpu"]
MIB = 1024 * 1024
# Per-field NVML failures (NotSupported, NoPermission, a driver lacking a newer entry point); others are bugs.
_NVML_FIELD_ERRORS: tuple[type[BaseException], ...] = (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError)
T = TypeVar("T")


class Memory(NamedTuple):
    total: int  # bytes
    free: int
    used: int


class NvmlApi:
    """The NVML calls detection needs, over nvidia-ml-py; the seam tests replace with a fake machine.

    Every call may raise ``pynvml.NVMLError`` (NotSupported, NoPermission, ...); detection turns that into a
    None field plus a note. Sizes are bytes, power milliwatts; ``cuda_driver_version`` is e.g. 12040 for 12.4;
    ``compute_processes`` gives (pid, used bytes or None); ``mig_mode`` is the current mode (1 = enabled);
    ``mig_device_count`` counts slots, populated or not, and an empty slot's handle raises NotFound.
    """

    # Whole system. Grouped without blank lines: each is a bare pass-through.
    def init(self) -> None:
        pynvml.nvmlInit()
    def shutdown(self) -> None:
        pynvml.nvmlShutdown()
    def device_count(self) -> int:
        return int(pynvml.nvmlDeviceGetCount())
    def driver_version(self) -> str:
        return str(pynvml.nvmlSystemGetDriverVersion())
    def cuda_driver_version(self) -> int:
        return int(pynvml.nvmlSystemGetCudaDriverVersion())

    # One device (a whole GPU, or a MIG instance for uuid/name/memory), then MIG.
    def handle(self, index: int) -> Any:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    def handle_by_uuid(self, uuid: str) -> Any:  # "GPU-..." or "MIG-...": what the idle monitor is keyed by
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    def uuid(self, handle: Any) -> str:
        return str(pynvml.nvmlDeviceGetUUID(handle))
    def name(self, handle: Any) -> str:
        return str(pynvml.nvmlDeviceGetName(handle))
    def memory(self, handle: Any) -> Memory:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return Memory(int(info.total), int(info.free), int(info.used))
    def compute_capability(self, handle: Any) -> tuple[int, int]:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    def power_usage_mw(self, handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetPowerUsage(handle))
    def power_limit_mw(self, handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    def utilization_gpu_pct(self, handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    def compute_processes(self, handle: Any) -> list[tuple[int, int | None]]:
        return [(int(p.pid), p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    def mig_mode(self, handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetMigMode(handle)[0])
    def mig_device_count(self, handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    def mig_device_handle(self, handle: Any, index: int) -> Any:
        return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)


@dataclass(frozen=True)
class GpuProcess:
    pid: int  # as NVML sees it: the host PID namespace, which inside a container is not ours
    used_vram_mib: int | None


@dataclass(frozen=True)
class MigInstance:
    index: int  # MIG slot on the parent GPU
    uuid: str | None  # "MIG-..." - what CUDA_VISIBLE_DEVICES needs to target this slice
    name: str | None
    vram_total_mib: int | None
    vram_free_mib: int | None


@dataclass(frozen=True)
class GpuDevice:
    """One physical GPU. ``None`` always means "could not be read" (see the capacity notes), never zero."""

    index: int  # NVML (PCI bus) order for source "nvml"; torch order for source "torch"
    uuid: str | None
    name: str | None
    vram_total_mib: int | None
    vram_free_mib: int | None
    compute_capability: tuple[int, int] | None
    driver_version: str | None
    cuda_version: str | None
    power_draw_w: float | None
    power_limit_w: float | None
    utilization_pct: int | None
    processes: tuple[GpuProcess, ...] | None  # None: unknown, which idle detection treats as busy
    mig_enabled: bool | None
    mig_instances: tuple[MigInstance, ...] = ()


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int  # logical CPUs in the machine
    physical_cores: int | None
    usable_cores: int | None  # logical CPUs this process may run on (affinity), often fewer in containers
    ram_total_mib: int | None
    ram_available_mib: int | None


@dataclass(frozen=True)
class ComputeTarget:
    """Somewhere a job can run: a whole GPU, a MIG slice, or the CPU."""

    kind: Literal["gpu", "mig", "cpu"]
    name: str
    memory_mib: int | None
    gpu_index: int | None = None
    uuid: str | None = None  # pass as CUDA_VISIBLE_DEVICES: indices differ between NVML and CUDA order


@dataclass(frozen=True)
class MachineCapacity:
    source: Source
    gpus: tuple[GpuDevice, ...]
    cpu: CpuInfo
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), for the API, attestation and ``detect --json``."""
        return json.loads(json.dumps(asdict(self)))

    def compute_devices(self) -> tuple[ComputeTarget, ...]:
        """Where jobs can run. A MIG-enabled GPU only offers its slices; with no GPU target the CPU is offered."""
        targets: list[ComputeTarget] = []
        for g in self.gpus:  # a MIG-enabled GPU runs nothing itself; its instances do
            if not g.mig_enabled:
                targets.append(ComputeTarget("gpu", g.name or f"GPU {g.index}", g.vram_total_mib, g.index, g.uuid))
            targets += [ComputeTarget("mig", m.name or f"{g.name} MIG {m.index}", m.vram_total_mib, g.index, m.uuid)
                        for m in g.mig_instances]
        return tuple(targets) or (ComputeTarget("cpu", self.cpu.model, self.cpu.ram_total_mib),)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read(notes: list[str], where: str, what: str, fn: Callable[..., T], *args: Any,
          errors: tuple[type[BaseException], ...] = _NVML_FIELD_ERRORS) -> T | None:
    """One field: its value, or None plus a note, so one unsupported query never loses the whole device."""
    try:
        return fn(*args)
    except errors as exc:
        notes.append(f"{where}: {what} unavailable ({_describe(exc)})")
        return None


def _mib(n_bytes: int | None) -> int | None:
    return None if n_bytes is None else int(n_bytes) // MIB


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else round(milliwatts / 1000, 1)


def _nvml_gpu(api: NvmlApi, i: int, handle: Any, driver: str | None, cuda: str | None, notes: list[str]) -> GpuDevice:
    name = _read(notes, f"GPU {i}", "name", api.name, handle)
    where = f"GPU {i} ({name})" if name else f"GPU {i}"
    mem = _read(notes, where, "memory info", api.memory, handle)
    cc = _read(notes, where, "compute capability", api.compute_capability, handle)
    procs = _read(notes, where, "running compute processes", api.compute_processes, handle)
    mode = _read(notes, where, "MIG mode", api.mig_mode, handle)
    mig_enabled = None if mode is None else mode == pynvml.NVML_DEVICE_MIG_ENABLE
    instances = _nvml_mig(api, handle, where, notes) if mig_enabled else ()
    if mig_enabled and not instances:
        notes.append(f"{where}: MIG is enabled but no MIG instance exists, so no job can run on this GPU")
    return GpuDevice(
        index=i, uuid=_read(notes, where, "UUID", api.uuid, handle), name=name,
        vram_total_mib=_mib(mem.total) if mem else None, vram_free_mib=_mib(mem.free) if mem else None,
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None, driver_version=driver, cuda_version=cuda,
        power_draw_w=_watts(_read(notes, where, "power draw", api.power_usage_mw, handle)),
        power_limit_w=_watts(_read(notes, where, "power limit", api.power_limit_mw, handle)),
        utilization_pct=_read(notes, where, "utilization", api.utilization_gpu_pct, handle),
        processes=None if procs is None else tuple(GpuProcess(pid, _mib(used)) for pid, used in procs),
        mig_enabled=mig_enabled, mig_instances=instances,
    )


def _nvml_mig(api: NvmlApi, handle: Any, where: str, notes: list[str]) -> tuple[MigInstance, ...]:
    out: list[MigInstance] = []
    for slot in range(_read(notes, where, "MIG device count", api.mig_device_count, handle) or 0):
        try:
            mig = api.mig_device_handle(handle, slot)
        except _NVML_FIELD_ERRORS as exc:
            if getattr(exc, "value", None) != pynvml.NVML_ERROR_NOT_FOUND:  # NotFound: an empty slot, no fault
                notes.append(f"{where}: MIG slot {slot} unreadable ({_describe(exc)})")
            continue
        at = f"{where} MIG {slot}"
        mem = _read(notes, at, "memory info", api.memory, mig)
        out.append(MigInstance(slot, _read(notes, at, "UUID", api.uuid, mig), _read(notes, at, "name", api.name, mig),
                               _mib(mem.total) if mem else None, _mib(mem.free) if mem else None))
    return tuple(out)


def _detect_nvml(api: NvmlApi, notes: list[str]) -> tuple[GpuDevice, ...]:
    try:
        api.init()
    except Exception as exc:  # library missing, driver not loaded, no permission...: all mean "no NVML"
        notes.append(f"NVML not available: {_describe(exc)}")
        return ()
    try:
        count = _read(notes, "NVML", "device count", api.device_count)
        if count is None:
            return ()
        driver = _read(notes, "NVML", "driver version", api.driver_version)
        cuda_raw = _read(notes, "NVML", "CUDA driver version", api.cuda_driver_version)
        cuda = None if cuda_raw is None else f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}"
        gpus: list[GpuDevice] = []
        for index in range(count):
            handle = _read(notes, f"GPU {index}", "handle (device skipped)", api.handle, index)
            if handle is not None:
                gpus.append(_nvml_gpu(api, index, handle, driver, cuda, notes))
        if not gpus:
            notes.append(f"NVML works but reports no usable GPU ({count} device(s) listed)")
        elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            notes.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} is set: NVML lists every GPU, "
                         "jobs will only see the visible ones")
        return tuple(gpus)
    finally:
        _read(notes, "NVML", "shutdown", api.shutdown, errors=(Exception,))


def _detect_torch(notes: list[str]) -> tuple[GpuDevice, ...]:
    """The fallback when NVML is unusable (e.g. libnvidia-ml not mounted in a container) but CUDA may work."""
    try:
        import torch  # slow (seconds): only paid when NVML already failed

        if not torch.cuda.is_available():
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
            notes.append(f"torch.cuda.is_available() is False (torch {torch.__version__} built {built})")
            return ()
        count = torch.cuda.device_count()
    except Exception as exc:
        notes.append(f"torch.cuda fallback failed: {_describe(exc)}")
        return ()
    gpus: list[GpuDevice] = []
    for i in range(count):  # per field: one busy or odd device must not hide the others
        props = _read(notes, f"GPU {i}", "properties", torch.cuda.get_device_properties, i, errors=(Exception,))
        free = _read(notes, f"GPU {i}", "free memory", torch.cuda.mem_get_info, i, errors=(Exception,))
        uuid = getattr(props, "uuid", None)
        gpus.append(GpuDevice(
            index=i, uuid=None if uuid is None else f"GPU-{uuid}", name=getattr(props, "name", None),
            vram_total_mib=_mib(getattr(props, "total_memory", None)), vram_free_mib=_mib(free[0]) if free else None,
            compute_capability=(props.major, props.minor) if props else None, driver_version=None,
            cuda_version=torch.version.cuda, power_draw_w=None, power_limit_w=None, utilization_pct=None,
            processes=None, mig_enabled=None,
        ))
    notes.append("GPUs found through torch.cuda: driver version, power, utilization, processes and MIG are unknown "
                 "without NVML; cuda_version is torch's CUDA runtime" if gpus else "torch.cuda lists no device")
    return tuple(gpus)


def _fields(path: Path) -> list[dict[str, str]]:
    """The ``key: value`` blocks (separated by blank lines) of a /proc file; empty when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [
        {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines() if ":" in line)}
        for block in text.split("\n\n") if ":" in block
    ]


def _ram_mib(meminfo: dict[str, str], key: str, sysconf_pages: str) -> int | None:
    """A /proc/meminfo figure, else the POSIX sysconf one (no /proc: macOS, some sandboxes)."""
    value = meminfo.get(key, "").split()
    if value and value[0].isdigit():
        return int(value[0]) // 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(sysconf_pages) // MIB or None
    except (AttributeError, ValueError, OSError):
        return None


def read_cpu_info(proc: Path = Path("/proc"), notes: list[str] | None = None) -> CpuInfo:
    """The CPU and RAM from /proc, with portable fallbacks; what could not be read is noted in ``notes``."""
    cpus = [b for b in _fields(proc / "cpuinfo") if "processor" in b]
    model = next((b[k] for b in cpus for k in ("model name", "Hardware", "cpu model") if b.get(k)), "")
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = os.cpu_count() or len(cpus) or 1  # 1: we are running, so at least one exists
    physical = len({(b["physical id"], b["core id"]) for b in cpus if "physical id" in b and "core id" in b})
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    meminfo = (_fields(proc / "meminfo") or [{}])[0]
    total = _ram_mib(meminfo, "MemTotal", "SC_PHYS_PAGES")
    available = _ram_mib(meminfo, "MemAvailable", "SC_AVPHYS_PAGES")
    if total is None and notes is not None:
        notes.append("CPU: total RAM unknown (no /proc/meminfo, no sysconf)")
    return CpuInfo(model, cores, physical or None, usable, total, available)


def detect(nvml: NvmlApi | None = None, *, use_torch: bool = True) -> MachineCapacity:
    """Describe this machine: NVML, else torch.cuda, else the CPU, with notes for every gap. Blocking."""
    notes: list[str] = []
    cpu = read_cpu_info(notes=notes)
    if gpus := _detect_nvml(nvml if nvml is not None else NvmlApi(), notes):
        return MachineCapacity("nvml", gpus, cpu, tuple(notes))
    if not use_torch:
        notes.append("torch.cuda fallback disabled")
    elif gpus := _detect_torch(notes):
        return MachineCapacity("torch", gpus, cpu, tuple(notes))
    notes.append(f"no GPU found: offering the CPU only ({cpu.cores} logical cores)")
    return MachineCapacity("cpu", (), cpu, tuple(notes))


async def detect_async(nvml: NvmlApi | None = None, *, use_torch: bool = True) -> MachineCapacity:
    """``detect`` in a worker thread: NVML calls and the torch import block for up to seconds."""
    return await asyncio.to_thread(detect, nvml, use_torch=use_torch)


def foreign_processes(device: GpuDevice, own_pids: set[int]) -> tuple[GpuProcess, ...]:
    """Compute processes on the GPU that are not ours: someone else (the owner, another tenant) is using it."""
    return tuple(p for p in device.processes or () if p.pid not in own_pids)


def is_idle(device: GpuDevice, own_pids: set[int], utilization_threshold_pct: float) -> bool:
    """Free for a new job: no foreign compute process and utilization at or below the threshold.

    Unknown processes mean "not idle": we cannot see who else is there. Unknown utilization (NotSupported, e.g. in
    MIG mode) leaves the process check alone, as it never becomes known. Graphics users show only in utilization.
    """
    if device.processes is None or foreign_processes(device, own_pids):
        return False
    return device.utilization_pct is None or device.utilization_pct <= utilization_threshold_pct


def _gib(mib: int | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f}"


def _opt(value: object) -> str:
    return "?" if value is None else str(value)


def render_table(cap: MachineCapacity) -> Table:
    """A human summary; every "?" in it is explained by a note under the table."""
    cpu = cap.cpu
    ram = f"{_gib(cpu.ram_available_mib)}/{_gib(cpu.ram_total_mib)}"
    cpu_line = f"CPU: {cpu.model}, {cpu.cores} logical / {_opt(cpu.physical_cores)} physical cores, RAM {ram} GiB"
    caption = Text(cpu_line + "".join(f"\n- {note}" for note in cap.notes))
    table = Table(title=f"Compute capacity (source: {cap.source})", caption=caption, caption_justify="left")
    gpu_columns = ("GPU", "Name", "VRAM free/total GiB", "CC", "Power W", "Util %", "Procs", "MIG")
    for column in gpu_columns if cap.gpus else ("Device", "Model", "Cores (log/phys/usable)", "RAM avail/total GiB"):
        table.add_column(column)
    if not cap.gpus:
        table.add_row("CPU", Text(cpu.model), f"{cpu.cores}/{_opt(cpu.physical_cores)}/{_opt(cpu.usable_cores)}", ram)
    for g in cap.gpus:
        cc = None if g.compute_capability is None else "{}.{}".format(*g.compute_capability)
        mig = "?" if g.mig_enabled is None else (f"on ({len(g.mig_instances)})" if g.mig_enabled else "off")
        procs = None if g.processes is None else len(g.processes)
        table.add_row(str(g.index), Text(_opt(g.name)), f"{_gib(g.vram_free_mib)}/{_gib(g.vram_total_mib)}", _opt(cc),
                      f"{_opt(g.power_draw_w)}/{_opt(g.power_limit_w)}", _opt(g.utilization_pct), _opt(procs), mig)
    return table


def render_json(cap: MachineCapacity) -> str:
    return json.dumps(cap.to_dict(), indent=2)


def detect_command(as_json: bool, console: Console | None = None, *, nvml: NvmlApi | None = None) -> int:
    """``gpunode detect``: print what this machine offers. CPU-only is a valid answer, so always 0."""
    console = console or Console()
    cap = detect(nvml)
    if as_json:
        console.out(render_json(cap), highlight=False)
    else:
        console.print(render_table(cap))
    return 0
