"""Size limits derived from the machine: what a job may allocate, checked before it allocates.

A setting that would make a job allocate more memory than the machine has (crops per image, batch sizes, a
model's depth) is refused up front, with one line naming the setting, the size it asks for and the memory
available, instead of growing until the kernel's OOM killer ends the job with nothing printed.

Available host memory is the least of the kernel's MemAvailable (/proc/meminfo) and what the job's cgroup
(v2 or v1: a container's or a batch scheduler's limit) still allows; a CUDA device's is what it has free.
"""
from __future__ import annotations

import os
from pathlib import Path

from maefast.errors import UserInputError

# A single request (a loader's batches in flight, a model's weights) may take at most this share of what is
# available: the rest is for everything else the job holds at the same time.
MEMORY_SHARE = 0.8
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_room() -> int | None:
    """Bytes the job's memory cgroup still allows (None when there is no limit)."""
    for limit_file, usage_file in ((CGROUP_V2 / "memory.max", CGROUP_V2 / "memory.current"),
                                   (CGROUP_V1 / "memory.limit_in_bytes", CGROUP_V1 / "memory.usage_in_bytes")):
        limit, usage = _read_number(limit_file), _read_number(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(limit - usage, 0)
    return None


def available_memory() -> int:
    """Host memory this process can still allocate, in bytes."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = 1 << 62  # no way to tell: no limit
    room = _cgroup_room()
    return available if room is None else min(available, room)


def device_memory(device) -> int | None:
    """Free memory of a CUDA device in bytes (None for the CPU, whose memory is the host's)."""
    import torch
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def memory_budget(device=None) -> tuple[int, str]:
    """(bytes one request may take, what the limit is) on `device` (the host when None or the CPU)."""
    free = device_memory(device) if device is not None else None
    if free is not None:
        return int(free * MEMORY_SHARE), f"{MEMORY_SHARE:.0%} of the {format_bytes(free)} free on {device}"
    available = available_memory()
    return int(available * MEMORY_SHARE), f"{MEMORY_SHARE:.0%} of the {format_bytes(available)} of memory available"


def require_memory(nbytes: int, what: str, device=None) -> None:
    """UserInputError "<what> needs <size>, more than <the limit>" when nbytes exceed the budget."""
    budget, limit = memory_budget(device)
    if nbytes > budget:
        raise UserInputError(f"{what} needs {format_bytes(nbytes)}, more than {limit}")
