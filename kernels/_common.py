"""What the kernels share: how a kernel is launched, interpreter / autotune switches, rounding to the output.

Launching: a launcher describes a launch as a `Launch` (kernel, grid, runtime arguments, the constexprs it
fixes, and the candidate launch configurations, preferred first) and hands it to `launch()`:
  - under TRITON_INTERPRET=1 the first candidate runs on CPU tensors;
  - on a GPU with autotuning (default; MAEFAST_AUTOTUNE=0 turns it off) the candidates are timed once per
    value of the launch's key, after pruning the ones that do not fit the device (shared memory);
  - otherwise the preferred (first) candidate is launched, so each kernel compiles once; only when the device
    refuses it for its resources (Triton's OutOfResources: shared memory, registers) is the next one tried,
    and the one that launched is remembered for the launches that follow.
So a geometry the lists did not foresee degrades to a smaller configuration instead of failing, and an error
names the kernel only when none fits.
`recording_launches()` collects the launches instead of running them; the sm_90 compile check
(tests/ops/sm90_check.py) uses it to compile every configuration for Hopper on a machine without a GPU.

Rounding: on a GPU, `.to(tl.bfloat16)` rounds to nearest even. triton 3.6's interpreter truncates fp32 -> bf16
instead, which would make CPU tests of 16-bit outputs up to one ulp off; with EMULATE_RTNE (set by the
launchers only under TRITON_INTERPRET=1) the value is first rounded to nearest even on its bits, so the
truncating cast is exact.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import triton
import triton.language as tl

from maefast.kernels import interpreting


def emulate_rtne() -> bool:
    return interpreting()


def autotune_enabled() -> bool:
    """Autotuning (once per shape key) on a GPU unless MAEFAST_AUTOTUNE=0 (the first fitting config)."""
    return not interpreting() and os.environ.get("MAEFAST_AUTOTUNE", "1") != "0"


@triton.jit
def to_output(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    if EMULATE_RTNE:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


def config(num_warps: int = 4, num_stages: int = 2, **blocks) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


@dataclass
class Launch:
    """One kernel launch as a launcher asks for it."""
    kernel: object                      # a @triton.jit function
    grid: Callable[[dict], tuple]       # meta (the launch's arguments by name, configs included) -> grid
    args: tuple                         # runtime arguments in the kernel's order, constexprs excluded
    constexprs: dict                    # constexpr arguments the launcher fixes
    configs: list                       # candidate triton.Config, the preferred one first
    key: tuple[str, ...] = ()           # argument names whose values make the autotuner tune again
    name: str = field(default="")       # for messages; the kernel's name when empty

    def __post_init__(self):
        if not self.configs:
            raise ValueError(f"launch of {self.kernel_name} has no candidate configuration")

    @property
    def kernel_name(self) -> str:
        return self.name or getattr(getattr(self.kernel, "fn", None), "__name__", str(self.kernel))


_recorded: list[Launch] | None = None


@contextlib.contextmanager
def recording_launches():
    """Inside, launch() appends each Launch to the yielded list instead of running it."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


def launch(spec: Launch) -> None:
    if _recorded is not None:
        _recorded.append(spec)
        return
    if interpreting():  # the interpreter ignores warps and stages
        spec.kernel[spec.grid](*spec.args, **spec.constexprs, **spec.configs[0].kwargs)
        return
    if autotune_enabled() and len(spec.configs) > 1:
        _autotuned(spec)[spec.grid](*spec.args, **spec.constexprs)
        return
    _launch_preferred(spec)


# (kernel, its configs, fixed constexprs, argument dtypes, device) -> index of the config that launched
_launched_config: dict = {}


def _launch_preferred(spec: Launch) -> None:
    """The first candidate that the device accepts, starting from the one that launched last time: one compile
    per kernel specialization, a fallback only on an out-of-resources error."""
    from triton.runtime.errors import OutOfResources

    dtypes = tuple(str(getattr(a, "dtype", "")) for a in spec.args)
    device = next((str(a.device) for a in spec.args if hasattr(a, "device")), "")
    constexprs = tuple(sorted((k, str(v)) for k, v in spec.constexprs.items()))
    key = (spec.kernel, tuple(str(c) for c in spec.configs), constexprs, dtypes, device)
    refused = []
    for index in range(_launched_config.get(key, 0), len(spec.configs)):
        candidate = spec.configs[index]
        try:
            spec.kernel[spec.grid](*spec.args, **spec.constexprs, **candidate.all_kwargs())
        except OutOfResources as error:
            refused.append(f"{candidate}: {error}")
            continue
        _launched_config[key] = index
        return
    raise RuntimeError(f"no launch configuration of {spec.kernel_name} fits this GPU: {'; '.join(refused)}")


def _fitting(spec: Launch, configs: list, args, constexprs: dict) -> list:
    """The configs whose compiled kernel fits the current device's shared memory (compiles each; Triton keeps
    the binaries for the launch). Raises, naming the kernel, when none does."""
    device = triton.runtime.driver.active.get_current_device()
    limit = triton.runtime.driver.active.utils.get_device_properties(device)["max_shared_mem"]
    fits, needs = [], []
    for candidate in configs:
        compiled = spec.kernel.warmup(*args, grid=(1,), **constexprs, **candidate.all_kwargs())
        compiled = compiled.result() if hasattr(compiled, "result") else compiled
        needs.append(compiled.metadata.shared)
        if compiled.metadata.shared <= limit:
            fits.append(candidate)
    if not fits:
        raise RuntimeError(f"no launch configuration of {spec.kernel_name} fits this GPU's {limit} bytes of shared "
                           f"memory (they need {sorted(needs)}) for these arguments")
    return fits


_autotuners: dict = {}


def _autotuned(spec: Launch):
    """An autotuner over spec.configs (one per kernel and config list) that prunes what does not fit. It tunes
    again for each new value of the key arguments, of the constexprs the launcher fixes and of the dtypes."""
    cache_key = (spec.kernel, tuple(str(c) for c in spec.configs), spec.key, tuple(spec.constexprs))
    if cache_key not in _autotuners:
        arg_names = [p.name for p in spec.kernel.params if not p.is_constexpr]

        def prune(configs, named_args, **kwargs):
            args = tuple(named_args[name] for name in arg_names)
            constexprs = {k: v for k, v in kwargs.items() if k in spec.constexprs}
            return _fitting(spec, list(configs), args, constexprs)

        _autotuners[cache_key] = triton.autotune(spec.configs, key=[*spec.key, *spec.constexprs],
                                                 prune_configs_by={"early_config_prune": prune})(spec.kernel)
    return _autotuners[cache_key]
