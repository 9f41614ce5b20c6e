"""Parity with timm: the same weights give the same outputs (golden fixtures written by
tests/fixtures/make_timm_golden.py with timm, since CI has no timm)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

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


def standard_golden(pool):
    tensors = load_file(os.path.join(FIXTURES, f"timm_standard_golden_{pool}.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return state, tensors["pixels"], tensors["features"], tensors["head"]


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_a_standard_timm_vit_loads_with_its_block_and_pooling_read_from_the_weights(pool, tmp_path):
    """timm's standard Block (every stock timm ViT: qkv bias, no qk-norm, no LayerScale, learned positions, a head):
    create_model(name, checkpoint_path=...) reads block, pooling, biases, positions, channels and head from the
    weights, and gives timm's features and logits (golden fixture: tests/fixtures/make_timm_standard_golden.py)."""
    state, pixels, features, head = standard_golden(pool)
    path = tmp_path / "timm.safetensors"
    save_file(state, str(path))
    model = maefast.create_model("vit_debug_patch8_64", checkpoint_path=path, embed_dim=48, num_heads=4)
    config = model.config
    assert (config.block, config.global_pool, config.qkv_bias, config.qk_norm, config.init_values, config.pos_embed,
            config.in_chans, config.img_size, config.num_classes) == ("standard", pool, True, False, None, "learn",
                                                                      6, 32, 5)
    assert relative_error(model.forward_features(pixels), features) < 1e-5
    model.eval()
    with torch.no_grad():
        assert relative_error(model(pixels), head) < 1e-5
    features_only = maefast.create_model("vit_debug_patch8_64", checkpoint_path=state, embed_dim=48, num_heads=4,
                                         num_classes=0)  # as timm: another head size leaves the checkpoint's out
    assert isinstance(features_only.head, torch.nn.Identity)
    assert relative_error(features_only.forward_features(pixels), features) < 1e-5


def test_the_stock_vit_small_patch16_layout_loads_at_six_channels_and_256_pixels():
    """Every key and shape of a stock timm vit_small_patch16_224 created with in_chans=6, img_size=256 (1,000
    classes) is a parameter of maefast's vit_small_patch16_256 built from it (on the meta device: no weights)."""
    with open(os.path.join(FIXTURES, "timm_vit_small_patch16_256_in6.json")) as handle:
        shapes = {key: tuple(shape) for key, shape in json.load(handle).items()}
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    with torch.device("meta"):
        model = maefast.create_model("vit_small_patch16_256", checkpoint_path=state)
    assert (model.config.block, model.config.in_chans, model.config.num_classes) == ("standard", 6, 1000)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def test_a_model_built_otherwise_than_its_checkpoint_is_told_which_options_differ():
    state, *_ = standard_golden("avg")
    parallel = maefast.create_model("vit_debug_patch8_64", embed_dim=48, num_heads=4, in_chans=6, img_size=32)
    expected = (r"the checkpoint's ViT has block='standard' \(the model: 'parallel'\), global_pool='avg' \(the model: "
                r"'token'\), qkv_bias=True \(the model: False\), qk_norm=False \(the model: True\), init_values=None "
                r"\(the model: 0.0001\), num_classes=5 \(the model: 0\); build the model with those options, or let "
                r"maefast read them from the weights: "
                r"maefast.create_model\('vit_debug_patch8_64', checkpoint_path=...\)")
    with pytest.raises(CheckpointMismatch, match=expected):
        maefast.load_pretrained(parallel, state)
    with pytest.raises(ValueError, match=r"the checkpoint is another architecture than 'vit_small_patch16_256': "
                                         r"embed_dim 48 \(the model: 384\), depth 2 \(the model: 12\), patch_size 8 "
                                         r"\(the model: 16\)"):
        maefast.create_model("vit_small_patch16_256", checkpoint_path=state)
