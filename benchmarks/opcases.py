"""One implementation of each op micro-benchmark, run two ways: by its script (`python -m benchmarks.bench_<op>`:
JSON records, GB/s and TFLOP/s against the device's measured rates, a summary line) and by pytest-benchmark
(`python -m pytest benchmarks/ --benchmark-only`, benchmarks/test_ops.py).

An op module (bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention) describes its cases with
`plan(device, quick) -> [CaseSpec]`: names, backends and passes known without allocating anything, and a
`build()` that makes the inputs and returns an `OpCase` of ready-to-run steps, one per (backend, pass).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks import common
from maefast.ops.backend import select_backend


@dataclass
class OpCase:
    """One shape of one op, built: a zero-argument step per backend and pass, the bytes moved and FLOPs done
    per pass, each backend's check against an fp32 reference (every backend is checked, the baselines too:
    a timing of something else would compare nothing) and the backends that cannot run this case, with the
    reason."""
    steps: dict[str, dict[str, Callable[[], object]]] = field(default_factory=dict)
    nbytes: dict[str, float] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, backend: str, forward: Callable[[], object], passes: Callable[[object], dict[str, Callable]],
            check: Callable[[object], bool]) -> None:
        """Runs `forward()` once; `check(output)` is the backend's correctness and `passes(output)` its steps
        (a backward-only step reuses the output's autograd graph). An error marks the backend skipped."""
        try:
            output = forward()
        except (RuntimeError, ValueError, NotImplementedError) as error:
            self.skipped[backend] = common.describe_error(error)
            return
        self.correct[backend] = bool(check(output))
        self.steps[backend] = passes(output)


@dataclass(frozen=True, eq=False)
class CaseSpec:
    """One case of an op as a plan lists it: known before anything is allocated; `build()` makes it."""
    op: str
    name: str
    backends: tuple[str, ...]
    passes: tuple[str, ...]
    build: Callable[[], OpCase]

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


def measure(rec: common.Recorder, spec: CaseSpec, device: torch.device, reps: int, copy_gbs: float | None,
            peak_tflops: float | None) -> dict[tuple[str, str], float]:
    """Builds the case, times every runnable backend per pass side by side and emits one record per
    measurement; returns {(backend, pass): ms}."""
    case = spec.build()
    for backend, reason in case.skipped.items():
        rec.emit(case=spec.name, backend=backend, skipped=reason)
    results = {}
    for label in spec.passes:
        steps = {backend: passes[label] for backend, passes in case.steps.items() if label in passes}
        for backend, ms in common.time_interleaved(steps, device, reps=reps).items():
            results[(backend, label)] = ms
            rec.emit(case=spec.name, backend=backend, **{"pass": label}, correct=case.correct.get(backend),
                     **common.rates(ms, case.nbytes.get(label), case.flops.get(label), copy_gbs, peak_tflops))
    return results


def run_script(op: str, description: str, plan: Callable, summarize: Callable, argv=None) -> int:
    """The command line of an op benchmark: every case of `plan(device, quick)` measured, then
    `summarize(rec, {case name: results}, device)` prints the summary line."""
    args = common.parser(description).parse_args(argv)
    device = common.pick_device(args.device)
    rec = common.Recorder(op, device, args.json_out)
    common.stop_on_sigterm()
    copy_gbs, peak = common.device_rates(device)
    rec.emit(kind="device_rates", copy_GBps=round(copy_gbs, 1), matmul_TFLOPs=peak and round(peak, 1))
    reps = args.reps or (20 if device.type == "cuda" else 5)
    torch.manual_seed(0)
    results = {}
    try:
        for spec in plan(device, args.quick):
            results[spec.name] = measure(rec, spec, device, reps, copy_gbs, peak)
    except common.TimeLimit as stop:
        rec.emit(kind="note", skipped=f"{stop}; cases not measured are left out of the summary")
    summarize(rec, results, device)
    return 0


def ratio(results: dict, baseline: tuple[str, str], candidate: tuple[str, str]) -> float | None:
    """baseline ms / candidate ms (higher: the candidate is faster), None when either was not measured."""
    if baseline in results and candidate in results:
        return round(results[baseline] / results[candidate], 3)
    return None


def finish(rec: common.Recorder, results: dict, candidate: tuple[str, str], baseline: tuple[str, str],
           **extra) -> dict:
    """The summary line: `candidate` against `baseline` ((backend, pass) keys of `results`), in ms."""
    if candidate not in results or baseline not in results:
        return rec.emit(kind="summary", value=None, baseline=None, ratio=None,
                        skipped=f"{candidate} or {baseline} was not measured", **extra)
    return rec.finish(results[candidate], results[baseline], **extra)


def fused_backend(op: str, device: torch.device) -> str:
    """The backend maefast's dispatcher picks for `op` on `device` (Triton on CUDA, C++ on the CPU, the
    reference where the op has no such backend or it is not built)."""
    implemented = importlib.import_module(f"maefast.ops.{op}").IMPLEMENTED
    return select_backend(op, device, implemented)
