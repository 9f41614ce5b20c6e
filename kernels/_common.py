"""What the kernels share: interpreter / autotune switches and rounding to the output dtype.

Rounding: on a GPU, `.to(tl.bfloat16)` rounds to nearest even. triton 3.6's interpreter truncates fp32 -> bf16
instead, which would make CPU tests of 16-bit outputs up to one ulp off; with EMULATE_RTNE (set by the
launchers only under TRITON_INTERPRET=1) the value is first rounded to nearest even on its bits, so the
truncating cast is exact.
"""
import os

import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def emulate_rtne() -> bool:
    return interpreting()


def autotune_enabled() -> bool:
    """Autotuning (once per shape key) on a GPU unless MAEFAST_AUTOTUNE=0 (fixed launch configs)."""
    return not interpreting() and os.environ.get("MAEFAST_AUTOTUNE", "1") != "0"


@triton.jit
def to_output(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    if EMULATE_RTNE:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)
