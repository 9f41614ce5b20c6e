"""Parity with timm: the same weights give the same outputs (golden fixtures written by
tests/fixtures/make_timm_golden.py with timm, since CI has no timm)."""
import os

import pytest
import torch
from safetensors.torch import load_file

import maefast
from maefast.models import CheckpointMismatch
from tests.helpers import FIXTURES


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def golden(pool):
    tensors = load_file(os.path.join(FIXTURES, f"timm_golden_{pool}.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return state, tensors["pixels"], tensors["features"], tensors["head"]


def small_encoder(pool, **overrides):
    return maefast.create_model("vit_debug_patch8_64", img_size=32, in_chans=3, embed_dim=48, num_heads=4,
                                depth=2, global_pool=pool, **overrides)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_state_dict_gives_timm_outputs(pool):
    state, pixels, features, head = golden(pool)
    model = maefast.load_pretrained(small_encoder(pool), state).eval()
    with torch.no_grad():
        ours = model.forward_features(pixels)
        assert relative_error(ours, features) < 1e-5
        assert relative_error(model.forward_head(ours), head) < 1e-5


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_weights_into_mae_encoder(pool):
    """(The public reference's layout, whose blocks follow timm < 1.0.25, is tested against the reference's own
    modules in test_reference_checkpoint.py.)"""
    state, pixels, features, _ = golden(pool)
    mae = maefast.create_model("mae_vit_debug_patch8_64", img_size=32, in_chans=3, embed_dim=48, num_heads=4,
                               depth=2, global_pool=pool).eval()
    decoder_before = {k: v.clone() for k, v in mae.state_dict().items() if not k.startswith("encoder.")}
    maefast.load_pretrained(mae, state, layout="timm", strict=False)
    with torch.no_grad():
        assert relative_error(mae.forward_features(pixels), features) < 1e-5
    for key, value in decoder_before.items():
        assert torch.equal(mae.state_dict()[key], value), key


def test_timm_checkpoint_into_wrong_model_names_shapes():
    state, *_ = golden("token")
    wrong = maefast.create_model("vit_debug_patch8_64", img_size=32, in_chans=5, embed_dim=48, num_heads=4, depth=2)
    expected = r"patch_embed.proj.weight: checkpoint \(48, 3, 8, 8\) vs model \(48, 5, 8, 8\)"
    with pytest.raises(CheckpointMismatch, match=expected):
        maefast.load_pretrained(wrong, state)
