"""The op micro-benchmarks as pytest-benchmark tests: each (op, case, pass) is a group in which maefast's backend
and its baselines are timed in the same session, so pytest-benchmark's table compares them side by side.

    python -m pytest benchmarks/ --benchmark-only                       # CPU: small shapes, about a minute
    python -m pytest benchmarks/ --benchmark-only --benchmark-autosave  # keep the run in .benchmarks/
    python -m pytest benchmarks/ --benchmark-only --benchmark-compare   # against the last saved run
    python -m pytest benchmarks/ --benchmark-only -k "tokenize and fwd+bwd"

On a GPU the cases are the scripts' full GPU cases (Triton against the references and SDPA), on a CPU their
--quick cases (C++ against the references). The cases are the scripts' own (`plan()` of bench_tokenize,
bench_unshuffle, bench_mae_loss, bench_attention); a backend whose output disagrees with the fp32 reference
fails its test. The default test run (`python -m pytest`, testpaths = tests) does not collect this file.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import bench_attention, bench_mae_loss, bench_tokenize, bench_unshuffle, common

DEVICE = common.pick_device(None)
QUICK = DEVICE.type != "cuda"
SPECS = [spec for module in (bench_tokenize, bench_unshuffle, bench_mae_loss, bench_attention)
         for spec in module.plan(DEVICE, QUICK)]
PARAMS = [pytest.param(spec, backend, label, id=f"{spec.id}-{backend}-{label}")
          for spec in SPECS for label in spec.passes for backend in spec.backends]

_built: dict[str, object] = {}


def built(spec):
    """The case of `spec`, built once (tests run case by case, so only the current case is kept)."""
    if spec.id not in _built:
        _built.clear()
        torch.manual_seed(0)
        _built[spec.id] = spec.build()
    return _built[spec.id]


def synchronized(step):
    if DEVICE.type != "cuda":
        return step
    return lambda: (step(), torch.cuda.synchronize(DEVICE))


@pytest.mark.benchmark(warmup=True, warmup_iterations=2, min_rounds=3, max_time=0.5 if QUICK else 1.0)
@pytest.mark.parametrize("spec, backend, label", PARAMS)
def test_op(benchmark, spec, backend, label):
    case = built(spec)
    if backend in case.skipped:
        pytest.skip(f"{backend} cannot run {spec.id}: {case.skipped[backend]}")
    assert case.correct[backend] is True, f"{backend} disagrees with the fp32 reference on {spec.id}"
    benchmark.group = f"{spec.id} {label}"
    benchmark.extra_info.update(device=common.device_name(DEVICE), bytes=case.nbytes.get(label),
                                flops=case.flops.get(label))
    benchmark(synchronized(case.steps[backend][label]))
