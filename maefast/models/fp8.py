"""FP8 matrix multiplies for training and embedding: torchao's float8 with row-wise scales, set up before the run.

    report = convert_to_fp8(model)      # after the model is on its device, before torch.compile
    report.fp8, report.kept             # the GEMMs that run in FP8, and those kept in bf16 (with why)

e4m3 operands with one scale per row (and per column of the weight), computed from the tensor itself at every
call (dynamic scaling), fp32 accumulation: torchao's "rowwise" recipe. Forward and backward GEMMs of every
converted layer run in FP8 (torchao's Float8Linear, which keeps the layer's parameters, so state dicts and
checkpoints are unchanged); everything else (norms, attention, the fused ops, the residual stream) keeps the
run's bf16 / fp32.

Which GEMMs: the linear layers of the encoder and decoder whose two dimensions are both at least
FP8_MIN_FEATURES (and multiples of 16, which FP8 GEMMs need), and the fused out-projection of each encoder
block (one GEMM over both out-projections' weights, layers.ParallelBlock.out_linear). Kept in bf16, where FP8
does not pay or costs accuracy: the first layer (the patch projection, inside ops.tokenize) and the last ones
(the decoder's pixel head, a classifier's head), and small GEMMs (the MAE decoder at width 512, the
encoder-to-decoder projection), whose cast to FP8 costs about what the faster GEMM saves.

Scaling operands to FP8 needs FP8 tensor cores (compute capability 8.9+: L4, L40S, H100, H200, B200); on a
CPU, torchao's emulation (the same rounding, fp32 matmuls) runs instead: for tests and quality checks, not for
speed. torchao is the `fp8` extra.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from maefast.errors import MissingDependency, UserInputError, installed
from maefast.models import layers

FP8_RECIPE = "rowwise"
# Both dimensions of a GEMM's weight at least this for FP8: at the models' token counts (16k-130k rows per
# step) the ViT-L encoder's GEMMs (1024 x 7168, 5120 x 1024) gain, the 512-wide decoder's do not (to check
# against the GPU suite's figures). MAEFAST_FP8_MIN_FEATURES sets another threshold for a run.
FP8_MIN_FEATURES = 1024


def min_features_setting() -> int:
    """The threshold of this run: MAEFAST_FP8_MIN_FEATURES, or FP8_MIN_FEATURES."""
    value = os.environ.get("MAEFAST_FP8_MIN_FEATURES", "").strip()
    if not value:
        return FP8_MIN_FEATURES
    if not value.isdigit() or int(value) < 1:
        raise UserInputError(f"MAEFAST_FP8_MIN_FEATURES={value!r} is not a positive integer")
    return int(value)
# The first and last layers stay in bf16 (the patch projection is a convolution the tokenizer runs).
KEPT_LAYERS = {"decoder_pred": "the last layer (pixel prediction)", "head": "the last layer (classifier head)"}


@dataclass
class FP8Report:
    """What convert_to_fp8 did: the GEMMs now in FP8 (module names, and "<block> (fused out-projection)") and
    those kept in bf16, with why."""
    recipe: str
    emulated: bool
    fp8: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` has FP8 tensor cores (compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_config(emulate: bool):
    """torchao's row-wise float8 recipe (emulated: the same casts with fp32 matmuls, for a CPU)."""
    if not installed("torchao"):
        raise MissingDependency("FP8 needs torchao (python -m pip install 'maefast[fp8]')")
    from torchao.float8 import Float8LinearConfig
    return dataclasses.replace(Float8LinearConfig.from_recipe_name(FP8_RECIPE), emulate=emulate)


class Float8Matmul:
    """z @ weight^T with FP8 operands, for a GEMM whose weight is no single nn.Linear's (the fused block's
    out-projection: both out-projections' weights side by side, LayerScale folded in). The same torchao function
    and configuration as its Float8Linear layers; under autocast z is cast to the autocast dtype first, as
    Float8Linear does."""

    def __init__(self, config):
        from torchao.float8.float8_linear import Float8Linear, matmul_with_hp_or_float8_args
        with torch.device("meta"):  # only for the per-GEMM configuration torchao derives from the recipe
            template = Float8Linear.from_float(nn.Linear(16, 16, bias=False), config)
        self.linear_mm_config, self.config = template.linear_mm_config, template.config
        self.matmul = matmul_with_hp_or_float8_args

    def __call__(self, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(z.device.type):
            z = z.to(torch.get_autocast_dtype(z.device.type))
        return self.matmul.apply(z, weight.t(), self.linear_mm_config, self.config)

    def __repr__(self) -> str:
        return f"Float8Matmul({FP8_RECIPE})"


def _why_kept(name: str, out_features: int, in_features: int, min_features: int) -> str | None:
    """None when a GEMM with this weight (out_features x in_features) should run in FP8, else why not."""
    last = name.rsplit(".", 1)[-1]
    if last in KEPT_LAYERS:
        return KEPT_LAYERS[last]
    if in_features % 16 or out_features % 16:
        return f"{out_features} x {in_features}: FP8 GEMMs need dimensions that are multiples of 16"
    if min(in_features, out_features) < min_features:
        return f"{out_features} x {in_features}: below {min_features}, the FP8 casts cost what the GEMM saves"
    return None


def convert_to_fp8(model: nn.Module, *, emulate: bool | None = None, min_features: int | None = None) -> FP8Report:
    """Runs the GEMMs of `model` that pay off in FP8 (see the module docstring), in place; call it once the model
    is on its device and before torch.compile. emulate: default True off CUDA, where no FP8 hardware exists;
    a CUDA device without FP8 tensor cores is refused. min_features: default min_features_setting()."""
    min_features = min_features_setting() if min_features is None else min_features
    device = next(model.parameters()).device
    if emulate is None:
        emulate = device.type != "cuda"
    if not emulate and not fp8_supported(device):
        raise UserInputError(f"FP8 needs a GPU with FP8 tensor cores (compute capability 8.9+: H100, H200, L40S, "
                             f"B200); {device} has none")
    config = fp8_config(emulate)
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    report = FP8Report(FP8_RECIPE, emulate)
    # the fused blocks' out-projections are computed from these modules' weights, never by calling them
    fused_out = {f"{name}.{part}" for name, module in model.named_modules() if isinstance(module, layers.ParallelBlock)
                 for part in ("attn_out_proj", "mlp_out_proj")}

    def converts(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear) or isinstance(module, Float8Linear) or name in fused_out:
            return False
        reason = _why_kept(name, module.out_features, module.in_features, min_features)
        if reason is not None:
            report.kept[name] = reason
            return False
        report.fp8.append(name)
        return True

    convert_to_float8_training(model, config=config, module_filter_fn=converts)
    for name, module in model.named_modules():
        if isinstance(module, layers.ParallelBlock):
            out_features = module.attn_out_proj.out_features
            in_features = module.attn_out_proj.in_features + module.mlp_out_proj.in_features
            reason = _why_kept(name, out_features, in_features, min_features)
            if reason is None:
                module.out_linear = Float8Matmul(config)
                report.fp8.append(f"{name} (fused out-projection)")
            else:
                report.kept[f"{name} (fused out-projection)"] = reason
    if report.fp8:
        for module in model.modules():  # models.common.inference: no inference mode for torchao's FP8 tensors
            module.runs_fp8 = True
    return report
