"""Device names -> concrete devices, torch's CPU thread budget, and recognising out-of-memory.

torch is never imported here on its own account: `auto` only looks for a GPU when the
entrypoint's module has already imported torch (code that doesn't use torch can't use a GPU).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from types import ModuleType


class DeviceError(ValueError):
    """A device the config names that this machine doesn't have."""


def loaded_torch() -> ModuleType | None:
    """torch if something already imported it, else None (importing it costs a second or more)."""
    return sys.modules.get("torch")


def resolve(names: Iterable[str]) -> list[str]:
    """Concrete device strings for the config's names, one model instance each."""
    return [_resolve_one(name) for name in names]


def _resolve_one(name: str) -> str:
    torch = loaded_torch()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        if torch is not None and torch.cuda.is_available():
            return "cuda:0"
        if torch is not None and _mps_available(torch):
            return "mps"
        return "cpu"
    if torch is None:
        raise DeviceError(f"device {name!r} needs torch, and the entrypoint does not import torch")
    if name == "mps":
        if not _mps_available(torch):
            raise DeviceError(
                "device 'mps' is not available on this machine (torch.backends.mps.is_available() is False)"
            )
        return "mps"
    index = int(name.partition(":")[2] or 0)
    count = cuda_count(torch)
    if index >= count:
        raise DeviceError(f"device {name!r} does not exist: torch sees {count} CUDA device(s); use cpu or auto")
    return f"cuda:{index}"


def cuda_count(torch: ModuleType) -> int:
    """The CUDA devices torch can use (0 without CUDA)."""
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _mps_available(torch: ModuleType) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def torch_threads_for(cpu_calls_at_once: int, configured: int | None) -> int:
    """Intra-op threads per call: cores / calls that can run on the CPU at once, at least 1."""
    if configured is not None:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, cpu_calls_at_once))


_wanted_threads: int | None = None  # the count apply_torch_threads chose last; workers adopt it


def apply_torch_threads(threads: int) -> None:
    """Set torch's intra-op thread count here and, before their next call, on every worker thread.

    torch (OpenMP) keeps the count per thread once a thread has used it, so setting it on the
    loop thread alone never reaches pool threads that already ran a call: a reload that changes
    `torch_threads`, or calls that ran while models loaded, would keep the old count.
    """
    global _wanted_threads
    _wanted_threads = threads
    sync_torch_threads()


def sync_torch_threads() -> None:
    """On the calling thread: adopt the count apply_torch_threads chose, if it differs (cheap check)."""
    wanted, torch = _wanted_threads, loaded_torch()
    if torch is not None and wanted is not None and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def is_oom(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error, the one failure that smaller batches fix."""
    torch = loaded_torch()
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
