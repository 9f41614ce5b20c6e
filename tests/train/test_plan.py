"""maefast plan (maefast.train.plan): its per-op count of saved activations against what autograd saves, its
memory against the measured peak of training steps of small models on the CPU (within 15%), and the CLI."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from maefast import distributed as dist_utils
from maefast.cli import main
from maefast.errors import UserInputError
from maefast.models import create_model
from maefast.models.families import family_of
from maefast.train.plan import Dtypes, mae_activations, meta_model, plan_training

CHANNELS = 3
SMALL = {  # tiny MAEs of the CPU path: the debug sizes, a wider one at another mask ratio, a CA-MAE
    "mae": ("mae_vit_debug_patch8_64", {}),
    "wide_mae": ("mae_vit_debug_patch8_64", dict(embed_dim=96, depth=3, num_heads=6, decoder_embed_dim=48,
                                                 decoder_depth=2, decoder_num_heads=4, mask_ratio=0.5)),
    "camae": ("camae_vit_debug_patch8_64", dict(decoder_channels=CHANNELS, cross_attention_heads=4)),
}


def small_model(key: str):
    name, overrides = SMALL[key]
    torch.manual_seed(0)
    return create_model(name, in_chans=CHANNELS, drop_path_rate=0.1, **overrides)


def pixels(model, batch: int) -> torch.Tensor:
    side = model.config.encoder.img_size
    return torch.randint(0, 256, (batch, CHANNELS, side, side), dtype=torch.uint8)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_the_per_op_count_is_what_autograd_saves(key):
    model = small_model(key)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for batch in (3, 8):
        saved: dict = {}

        def pack(tensor, saved=saved):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:  # a tensor and its views share one storage: count it once
                saved[storage.data_ptr(), tensor.dtype] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(pixels(model, batch))
        counted = mae_activations(model.config, CHANNELS, Dtypes.of("fp32", "ddp"))
        # every segment of the forward saved (none is recomputed): the sum of what they save
        total = sum(batch * segment.saved + segment.fixed for segment in counted.segments)
        assert total == pytest.approx(sum(saved.values()), rel=1e-3), (key, batch)


def measured_peak(model, batch: int, recompute: str, tmp_path) -> int:
    """The most bytes of tensors alive during a training step (forward, backward, AdamW step) on the CPU: the
    tensors that exist before it plus the profiler's record of every allocation and free during it."""
    if recompute != "none":
        dist_utils.checkpoint_blocks(family_of(model).blocks(model), recompute)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    images = pixels(model, batch)

    def step():
        model(images)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from the first step on
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as profiler:
        step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA (memory snapshots); the CPU has no other
        profiler.export_memory_timeline(str(tmp_path / "memory.json"), device="cpu")
    _, sizes = json.loads((tmp_path / "memory.json").read_text())
    return max(sum(by_category) for by_category in sizes)


@pytest.mark.parametrize("key,recompute", [("mae", "none"), ("mae", "full"),
                                           ("wide_mae", "none"), ("wide_mae", "full"),
                                           ("camae", "selective"), ("camae", "full")])
def test_the_plan_is_within_15_percent_of_the_measured_peak(key, recompute, tmp_path):
    model, batch = small_model(key), 16
    name, overrides = SMALL[key]
    plan = plan_training(name, batch, world_size=1, gpu_memory=1 << 40, precision="fp32", parallel="ddp",
                         recompute=recompute, optimizer="adamw", channels=CHANNELS,
                         overrides=dict(in_chans=CHANNELS, drop_path_rate=0.1, **overrides))
    peak = measured_peak(model, batch, recompute, tmp_path)
    assert plan.activations.at(batch) > plan.static  # the activations are most of it, so the check bites
    assert plan.total == pytest.approx(peak, rel=0.15), (plan.total, peak)


def test_sharding_largest_batch_and_step_time():
    model = meta_model("mae_vit_gigantic_patch8_256")
    whole = plan_training(model, 8, 64, 80 << 30, parallel="ddp", optimizer="adamw")
    sharded = plan_training(model, 8, 64, 80 << 30, parallel="fsdp", optimizer="adamw")
    parameters = whole.parameters
    assert (whole.weights, whole.optimizer_state) == (4 * parameters, 8 * parameters)
    assert whole.gradients == 8 * parameters  # fp32 gradients and DDP's buckets
    assert (sharded.weights, sharded.gradients, sharded.optimizer_state) == (4 * parameters // 64,
                                                                            4 * parameters // 64, 8 * parameters // 64)
    block = sum(p.numel() for p in model.encoder.blocks[0].parameters())
    assert sharded.gathered == 2 * 2 * block + 4 * block
    lion = plan_training(model, 8, 64, 80 << 30, optimizer="lion")
    assert lion.optimizer_state == 4 * parameters // 64
    largest = sharded.largest_batch
    assert sharded.static + sharded.activations.at(largest) <= 0.9 * (80 << 30)
    assert sharded.static + sharded.activations.at(largest + 1) > 0.9 * (80 << 30)
    for recompute in ("selective", "full"):  # recomputation keeps less, so more images fit
        assert plan_training(model, 8, 64, 80 << 30, recompute=recompute).largest_batch > largest
    flops = family_of(model).training_flops(model, 6)
    assert sharded.step_seconds == pytest.approx(8 * flops / 989e12)
    full = plan_training(model, 8, 64, 80 << 30, recompute="full", matmul_rate=500e12)
    assert full.step_seconds == pytest.approx(8 * flops * 4 / 3 / 500e12, rel=1e-6)  # a second forward


def test_cli_prints_the_settings_and_refuses_models_it_cannot_count(capsys):
    assert main(["plan", "--model", "mae_vit_gigantic_patch8_256", "--gpus", "64", "--gpu-memory", "141",
                 "--parallel", "fsdp", "--recompute", "full", "--batch", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mae_vit_gigantic_patch8_256: 1,869.7 M parameters")
    plan = plan_training("mae_vit_gigantic_patch8_256", 16, 64, 141 << 30, recompute="full")
    row = lines[2].split()
    assert row[:4] == ["64", "141", "fsdp", "full"] and row[-2:] == [str(plan.largest_batch),
                                                                  f"{plan.step_seconds:.2f}"]
    assert main(["plan", "--model", "wsl_vit_debug_patch8_64"]) == 2
    assert "MAEs and CA-MAEs" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="batch"):
        plan_training("mae_vit_debug_patch8_64", 0, 1, 1 << 30)
