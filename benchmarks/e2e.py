"""Helpers shared by the end-to-end benchmarks (bench_train.py, bench_embed.py)."""
from __future__ import annotations

import json
import time

import torch

from maefast.train.observe import synchronize


def bench_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def random_crops(batch: int, channels: int, size: int, device) -> torch.Tensor:
    """Random uint16 crops (never zeros) on `device`."""
    values = torch.randint(1, 65535, (batch, channels, size, size), dtype=torch.int32)
    return values.to(torch.uint16).to(device)


def time_steps(step, steps: int, warmup: int, device) -> float:
    """Seconds for `steps` calls of step() after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


def emit(result: dict) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}), flush=True)
