"""Shared helpers of the benchmarks: the command line, timing, device rates measured in the same run, JSON lines.

Every benchmark prints one JSON object per measurement and, as its last line, a summary object with at least
`bench`, `device`, `value`, `baseline` and `ratio` (docs/architecture.md, "Performance accounting": a number is
a ratio against a baseline measured side by side, or an absolute figure with its device named).
`python -m benchmarks.common table FILE...` prints the records of JSON-line files as a table.

A benchmark run under `timeout` (benchmarks/gpu_suite.sh) gets SIGTERM when its share of the suite's time is
spent: `stop_on_sigterm()` turns that into `TimeLimit`, so that a script still prints the summary of what it
measured before the limit.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from maefast.job_setup import matmul_rate, synchronize

ROOT = Path(__file__).resolve().parent.parent


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run of about a minute on a CPU")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--json-out", default=None, help="also append every record to this JSON-lines file")
    return p


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


class TimeLimit(BaseException):
    """SIGTERM arrived (the suite's `timeout`): stop measuring and report what was measured. A BaseException,
    so that the `except Exception` around a variant that may fail does not swallow it."""


_stopped: list[bool] = []


def stop_on_sigterm() -> None:
    def handler(signum, frame):
        _stopped.append(True)
        raise TimeLimit("SIGTERM: the time limit of this benchmark was reached")
    signal.signal(signal.SIGTERM, handler)


def stopped() -> bool:
    """True once SIGTERM has arrived: start nothing new."""
    return bool(_stopped)


def time_ms(fn, device: torch.device, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of `fn()` over `reps` runs (CUDA events on a GPU, wall clock on a CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(stop))
        else:
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_interleaved(fns: dict, device: torch.device, reps: int = 10, warmup: int = 1) -> dict:
    """Milliseconds of each `fns[name]()`. On a CPU the candidates run round-robin, so that they share whatever
    else the machine is doing, and the fastest run counts (the least disturbed one); on a GPU, time_ms."""
    if device.type == "cuda":
        return {name: time_ms(fn, device, reps, warmup) for name, fn in fns.items()}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: min(values) for name, values in samples.items()}


@dataclass
class Timing:
    """One variant of a job: milliseconds per call after its warm-up, the warm-up's seconds (compilation
    included, never part of `ms`), or the error that stopped it."""
    name: str
    ms: float | None = None
    warmup_s: float | None = None
    error: str | None = None


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def time_variants(variants: dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int = 2,
                  report: Callable[[Timing], None] = lambda timing: None) -> dict[str, Timing]:
    """Each variant in turn: its first `warmup` calls timed apart (compilation happens there), then `reps` timed
    calls (time_ms), then `report(timing)`. A variant that raises is reported with its error and the others go
    on; at a time limit (TimeLimit) the variants measured so far are returned. (Not round-robin on a CPU as
    time_interleaved: a compiled variant's OpenMP threads would slow whichever eager variant ran next.)"""
    timings: dict[str, Timing] = {}
    try:
        for name, fn in variants.items():
            start = time.perf_counter()
            try:
                for _ in range(warmup):
                    fn()
                synchronize(device)
            except Exception as error:  # noqa: BLE001 - a failing variant is reported, the others still run
                timing = Timing(name, error=describe_error(error))
            else:
                timing = Timing(name, warmup_s=time.perf_counter() - start, ms=time_ms(fn, device, reps, warmup=0))
            timings[name] = timing
            report(timing)
    except TimeLimit:
        pass  # stopped() tells the caller
    return timings


def copy_bandwidth_gbs(device: torch.device, megabytes: int = 1024, reps: int = 10) -> float:
    """Device copy bandwidth (read + write bytes per second), measured now."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=reps)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def device_rates(device: torch.device) -> tuple[float, float | None]:
    """(copy GB/s, bf16 matmul TFLOP/s) of `device`, measured now (the matmul as maefast.job_setup.matmul_rate
    measures it for every MFU); on a CPU the copy rate only (fewer bytes)."""
    if device.type == "cuda":
        return copy_bandwidth_gbs(device), matmul_rate(device, "bf16") / 1e12
    return copy_bandwidth_gbs(device, 256, reps=3), None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Recorder:
    """Prints records as JSON lines (and appends them to --json-out); `finish` prints the summary last."""

    def __init__(self, bench: str, device: torch.device, json_out: str | None = None):
        self.bench = bench
        self.device = device
        self.json_out = json_out
        self.context = {"device": device_name(device), "commit": git_commit(),
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}

    def emit(self, **record) -> dict:
        record = {"bench": self.bench, **record, "device": self.context["device"]}
        line = json.dumps(record)
        print(line, flush=True)
        if self.json_out:
            with open(self.json_out, "a") as handle:
                handle.write(json.dumps({**record, **self.context}) + "\n")
        return record

    def finish(self, value: float, baseline: float, **extra) -> dict:
        """The summary: value and baseline in the same unit (ms), ratio = baseline / value (higher is better)."""
        return self.emit(kind="summary", value=round(value, 4), baseline=round(baseline, 4),
                         ratio=round(baseline / value, 3) if value > 0 else None, unit="ms", **extra)


def rates(ms: float, nbytes: float | None = None, flops: float | None = None, copy_gbs: float | None = None,
          peak_tflops: float | None = None) -> dict:
    """GB/s and TFLOP/s of one measurement, and their fractions of the rates measured in the same run."""
    out = {"ms": round(ms, 4)}
    if nbytes is not None:
        gbs = nbytes / (ms * 1e-3) / 1e9
        out["GB/s"] = round(gbs, 1)
        if copy_gbs:
            out["of_copy_bw"] = round(gbs / copy_gbs, 3)
    if flops is not None:
        tflops = flops / (ms * 1e-3) / 1e12
        out["TFLOP/s"] = round(tflops, 2)
        if peak_tflops:
            out["of_matmul"] = round(tflops / peak_tflops, 3)
    return out


TABLE_COLUMNS = ["bench", "kind", "case", "backend", "pass", "ms", "GB/s", "of_copy_bw", "TFLOP/s", "of_matmul",
                 "value", "unit", "baseline", "ratio", "vs", "mfu", "warmup_s", "share", "correct", "skipped",
                 "copy_GBps", "matmul_TFLOPs"]


def print_table(paths: list[str]) -> None:
    """Prints the records of JSON-line files, one row per measurement: the scalar fields (the dictionaries of a
    summary are in the records) and not profile_step's per-kernel rows (in its log)."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record and record.get("kind") != "kernel":
                rows.append({k: v for k, v in record.items() if not isinstance(v, (dict, list))})
    if not rows:
        print("no records")
        return
    present = [c for c in TABLE_COLUMNS if any(r.get(c) is not None for r in rows)]
    cells = [["" if r.get(c) is None else str(r[c])[:60] for c in present] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(present)]
    print("  ".join(c.ljust(w) for c, w in zip(present, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    first = rows[0]
    print(f"device: {first.get('device')}  commit: {first.get('commit')}  date: {first.get('date')}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "table":
        print_table(sys.argv[2:])
    else:
        print("usage: python -m benchmarks.common table FILE.jsonl [...]")
