"""Every Triton kernel compiles for Hopper (sm_90) at every configuration and registry geometry: shared memory
within the H100 / H200 limit, wgmma for every tensor-core dot, and no register spills in the default
configurations of the 16-bit paths (tests/ops/sm90_check.py does the work).

It compiles a few hundred kernels (minutes on 2 cores the first time; results are cached by kernel source
under MAEFAST_CACHE), in a subprocess without TRITON_INTERPRET, so the kernels are real triton.jit functions.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maefast.ops.backend import triton_installed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_every_kernel_compiles_for_hopper_within_limits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "sm90.json"
    result = subprocess.run([sys.executable, "-m", "tests.ops.sm90_check", "--json", str(report)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    compiles = json.loads(report.read_text())
    kernels = {r["kernel"] for r in compiles}
    # every kernel module's launches were recorded and compiled
    assert {"_tokenize_stats_kernel", "_gather_patches_kernel", "_unshuffle_fwd_kernel", "_unshuffle_bwd_kernel",
            "_mae_loss_kernel", "_attention_fwd_kernel", "_attention_bwd_dkdv_kernel",
            "_attention_bwd_dq_kernel"} <= kernels
    assert all(r["shared"] <= 232_448 for r in compiles)
    assert all(r["wgmma"] for r in compiles if r["tensor_core_dots"])
    # the bf16 training path is on tensor cores: the dot kernels run on 16-bit or tf32 operands there
    bf16_dot_kernels = {r["kernel"] for r in compiles if r["tensor_core_dots"] and "torch.bfloat16" in r["dtypes"]}
    assert {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel",
            "_mae_loss_kernel"} <= bf16_dot_kernels
    # ptxas ran on the default configurations: the bf16 attention kernels (the training path) do not spill
    defaults = [r for r in compiles if r["default"]]
    attention = [r for r in defaults if r["kernel"].startswith("_attention") and "torch.bfloat16" in r["dtypes"]]
    assert {r["kernel"] for r in attention} >= {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel",
                                                "_attention_bwd_dq_kernel"}
    assert all(0 < r["registers"] <= 255 and r["spill_store_bytes"] == r["spill_load_bytes"] == 0 for r in attention)


def test_a_spilling_default_configuration_is_a_problem_unless_known():
    from tests.ops.sm90_check import check

    def result(kernel, spill, default=True, upcast="False"):
        return {"kernel": kernel, "config": {}, "constexprs": {"UPCAST": upcast}, "dtypes": ["torch.bfloat16"],
                "shared": 1024, "tensor_core_dots": 1, "wgmma": True, "default": default, "registers": 255,
                "stack_bytes": spill, "spill_store_bytes": spill, "spill_load_bytes": spill}
    problems = check([result("_attention_bwd_dkdv_kernel", 560), result("_attention_bwd_dq_kernel", 0),
                      result("_attention_bwd_dq_kernel", 304, default=False),  # an autotuning alternative
                      result("_attention_fwd_kernel", 900, upcast="True"), result("_mae_loss_kernel", 700)])
    assert len(problems) == 1 and "_attention_bwd_dkdv_kernel" in problems[0] and "560 B spill loads" in problems[0]
