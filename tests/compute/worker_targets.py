"""Job targets for the worker tests. They run inside worker processes, called as fn(device=..., **kwargs)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Any


def echo(device: str, **kw: Any) -> dict[str, Any]:
    return {"device": device, "kwargs": {k: v.hex() if isinstance(v, bytes) else v for k, v in kw.items()}}


def sleep(device: str, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


def segfault(device: str) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGSEGV)
    ctypes.string_at(0)  # in case SIGSEGV was blocked
    return {}


def raise_error(device: str, message: str = "boom") -> dict[str, Any]:
    raise ValueError(message)


def allocate(device: str, mib: int) -> dict[str, Any]:
    import torch

    t = torch.ones(mib << 20, dtype=torch.uint8, device=device)
    return {"bytes": t.numel(), "first": int(t[0])}


def torch_info(device: str) -> dict[str, Any]:
    from node.compute import worker_main

    torch_was_loaded = "torch" in sys.modules
    import torch

    return {
        "pid": os.getpid(),
        "torch": torch.__version__,
        "torch_was_loaded": torch_was_loaded,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": torch.get_num_threads(),
        "jobs_started": worker_main.JOBS_STARTED,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }


def matmul(device: str, n: int) -> dict[str, Any]:
    import torch

    a = torch.ones(n, n, device=device)
    return {"trace": float((a @ a).trace().item())}


def not_json(device: str) -> dict[str, Any]:
    return {"value": object()}
