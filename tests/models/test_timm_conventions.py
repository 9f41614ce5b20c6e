"""maefast's models as a timm user expects them: create_model's arguments and pretrained tags, wildcard list_models,
did-you-mean, num_features, the classifier head, gradient checkpointing, crops of any size, and inference entry
points (embed, forward_features) that keep no graph and drop no paths whatever the module's mode."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

import maefast
from maefast.models import registry
from maefast.models.layers import sincos_position_embedding
from maefast.ops.patches import random_pixels
from tests.helpers import FIXTURES


def small(name="vit_debug_patch8_64", **overrides):
    return maefast.create_model(name, in_chans=3, **overrides)


def test_list_models_filters_with_wildcards_and_lists_published_weights():
    assert maefast.list_models("*vit_s*") == ["ca_vit_small_patch16_256", "camae_vit_small_patch16_256",
                                             "mae_vit_small_patch16_256", "vit_small_patch16_256",
                                             "wsl_vit_small_patch16_256"]
    assert maefast.list_models(["vit_base*", "vit_large*"], exclude_filters="*patch8*") == [
        "vit_base_patch16_256", "vit_large_patch16_256"]
    assert maefast.list_models(pretrained=True) == ["ca_vit_small_patch16_256.openphenom",
                                                    "camae_vit_small_patch16_256.openphenom"]
    assert maefast.list_models("*vit_b*", pretrained=True) == []


def test_an_unknown_name_gets_the_closest_ones():
    with pytest.raises(KeyError, match=r"unknown model 'vit_smal_patch16_256'; did you mean 'vit_small_patch16_256'"):
        maefast.create_model("vit_smal_patch16_256")
    with pytest.raises(ValueError, match=r"'vit_small_patch16_256' has no pretrained tag 'dino'; it has no published"):
        maefast.create_model("vit_small_patch16_256.dino")
    with pytest.raises(ValueError, match=r"no published weights for 'vit_small_patch16_256'; models with weights: "
                                         r"ca_vit_small_patch16_256.openphenom"):
        maefast.create_model("vit_small_patch16_256", pretrained=True)


def test_the_openphenom_tag_builds_the_release_architecture():
    """ca_vit_small_patch16_256.openphenom is the release's encoder: each of its keys (fixture) is a parameter."""
    with open(os.path.join(FIXTURES, "openphenom", "state_shapes.json")) as handle:
        shapes = {key.removeprefix("encoder.vit_backbone."): tuple(shape) for key, shape in json.load(handle).items()
                  if key.startswith("encoder.vit_backbone.")}
    with torch.device("meta"):
        encoder = maefast.create_model("ca_vit_small_patch16_256.openphenom")
    assert (encoder.config.global_pool, encoder.config.qkv_bias, encoder.config.max_in_chans) == ("avg", True, 11)
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    legacy_bias = {k for k in shapes if k.endswith("mlp_bias")}  # an in_proj bias in maefast (models.reference)
    assert {k: v for k, v in shapes.items() if k not in legacy_bias} == {k: v for k, v in ours.items()
                                                                         if not k.endswith("in_proj.bias")}


def test_pretrained_true_loads_the_tags_weights_through_the_hub_cache(tmp_path, monkeypatch):
    """pretrained=True fetches the tag's Hub repository (here a cached copy, offline) and loads it."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = small(global_pool="avg")
    from tests.models.test_hub import cached_repo
    cached_repo(tmp_path / "hub", "someone/tiny", source)
    monkeypatch.setitem(registry.PRETRAINED, "vit_debug_patch8_64.tiny",
                        registry.PretrainedWeights("someone/tiny", "auto", False, dict(in_chans=3, global_pool="avg")))
    loaded = maefast.create_model("vit_debug_patch8_64.tiny", pretrained=True)
    assert loaded.training  # timm's create_model gives a model to train
    pixels = random_pixels(2, 3, 64)
    torch.testing.assert_close(loaded.embed(pixels), source.embed(pixels))
    assert torch.equal(maefast.create_model("vit_debug_patch8_64", pretrained=True).cls_token, source.cls_token)


def test_num_features_head_and_reset_classifier():
    model = small(num_classes=7)
    assert model.num_features == model.embed_dim == 64 and model.get_classifier().out_features == 7
    pixels = random_pixels(2, 3, 64)
    logits = model(pixels)
    assert logits.shape == (2, 7) and logits.requires_grad
    model.reset_classifier(0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), model.forward_features(pixels)[:, 0])  # token pooling, no head
    model.reset_classifier(3)
    assert model(pixels).shape == (2, 3) and model.config.num_classes == 3
    with pytest.raises(ValueError, match=r"global_pool='avg': this model was built with global_pool='token'"):
        model.reset_classifier(3, global_pool="avg")


@pytest.mark.parametrize("name", ["mae_vit_debug_patch8_64", "wsl_vit_debug_patch8_64", "munet_debug_64"])
def test_embed_and_forward_features_are_inference_whatever_the_mode(name):
    """In training mode, with drop path: embed and forward_features give the eval-mode answer, the same twice, keep no
    autograd graph (inference tensors), and leave the module in training mode."""
    options = {"num_classes": 4} if name.startswith("wsl") else {}
    if not name.startswith("munet"):
        options["drop_path_rate"] = 0.5
    model = maefast.create_model(name, in_chans=3, **options)
    assert model.training
    pixels = random_pixels(2, 3, 64)
    first, second = model.embed(pixels), model.embed(pixels)
    features = model.forward_features(pixels)
    assert torch.equal(first, second) and first.is_inference() and features.is_inference()
    assert not first.requires_grad and all(m.training for m in model.modules())
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(first, reference.embed(pixels))


def test_the_training_forward_keeps_gradients_and_drop_path():
    model = small(drop_path_rate=0.9, num_classes=2)
    pixels = random_pixels(4, 3, 64)
    torch.manual_seed(0)
    outputs = [model(pixels) for _ in range(3)]
    assert all(o.requires_grad for o in outputs)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # paths dropped at random


def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients():
    model = small(num_classes=3)
    pixels = random_pixels(2, 3, 64)
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (a recomputation may stop early)
    grads = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        calls.clear()
        model(pixels).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert len(calls) == (2 if enabled else 1)  # recomputed in the backward
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channel_agnostic", [False, True])
def test_crops_of_another_size_use_the_sincos_positions_of_their_grid(channel_agnostic):
    """A 64-pixel model on 128-pixel crops: its patch tokens get the sin-cos positions of a 16 x 16 grid, as the
    same weights built for 128 pixels have."""
    name = "ca_vit_debug_patch8_64" if channel_agnostic else "vit_debug_patch8_64"
    options = dict(max_in_chans=3) if channel_agnostic else dict(in_chans=3)
    model = maefast.create_model(name, **options).eval()
    large = maefast.create_model(name, img_size=128, **options).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "pos_embed"}
    large.load_state_dict(state, strict=False)
    pixels = random_pixels(2, 3, 128)
    torch.testing.assert_close(model.forward_features(pixels), large.forward_features(pixels))
    expected = sincos_position_embedding(64, 16, 3 if channel_agnostic else 1)
    torch.testing.assert_close(model.token_positions(3, 16), expected)
    with pytest.raises(ValueError, match="image size 100 is not a multiple of the patch size 8"):
        model.embed(random_pixels(1, 3, 100))


def test_learned_positions_are_resized_bicubically_for_another_grid():
    """timm's dynamic image size (resample_abs_pos_embed): the learned grid of positions is interpolated
    bicubically (with antialiasing) to the crop's grid; the CLS position stays."""
    model = small(pos_embed="learn").eval()
    assert model.pos_embed.requires_grad
    grid = model.pos_embed[0, 1:].detach().reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    for side in (4, 12):
        resized = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        expected = resized.permute(0, 2, 3, 1).reshape(side * side, 64)
        torch.testing.assert_close(model.token_positions(3, side), expected)
    assert model.embed(random_pixels(2, 3, 96)).shape == (2, 64)


def test_an_mae_trains_at_its_own_size_only():
    model = maefast.create_model("mae_vit_debug_patch8_64", in_chans=3)
    assert model.embed(random_pixels(1, 3, 128)).shape == (1, 64)  # its encoder embeds any size
    with pytest.raises(ValueError, match="model expects 64x64 images, got 128x128"):
        model(random_pixels(1, 3, 128))  # its decoder's positions are those of 64 pixels
