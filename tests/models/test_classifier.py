"""Weakly supervised ViT classifier: outputs, labels, embeddings, checkpoints, FLOPs, learning a toy task."""
import pytest
import torch
import torch.nn.functional as F

import maefast
from maefast.models.families import CLASSIFIER, family_of
from maefast.models.flops import classifier_forward_flops, encoder_forward_flops
from maefast.ops.patches import random_pixels

DEBUG = "wsl_vit_debug_patch8_64"


def debug_model(channels=3, classes=4, **overrides):
    torch.manual_seed(0)
    return maefast.create_model(DEBUG, in_chans=channels, num_classes=classes, **overrides)


def test_registered_for_every_encoder_and_needs_labels():
    names = maefast.list_models()
    for size in ("vit_small_patch16_256", "vit_base_patch16_256", "vit_large_patch8_256", "vit_debug_patch8_64"):
        assert CLASSIFIER.variant(size) in names
    assert family_of(DEBUG).needs_labels and not family_of("mae_vit_debug_patch8_64").needs_labels
    with pytest.raises(TypeError, match="needs num_classes="):
        maefast.create_model(DEBUG)


def test_loss_logits_and_gradients():
    model = debug_model(label_smoothing=0.1)
    pixels, labels = random_pixels(5, 3, 64), torch.randint(0, 4, (5,))
    loss, logits, nothing = model(pixels, labels)
    assert logits.shape == (5, 4) and nothing is None
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    loss.backward()
    for key, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key
    inference_loss, inference_logits, _ = model(pixels)
    assert inference_loss is None
    torch.testing.assert_close(inference_logits, logits)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_embed_is_what_the_head_reads(pool):
    model = debug_model(2, classes=3, global_pool=pool).eval()
    pixels = random_pixels(2, 2, 64, dtype=torch.uint16)
    with torch.no_grad():
        embedding = model.embed(pixels)
        assert embedding.shape == (2, model.embed_dim)
        torch.testing.assert_close(model.head(embedding), model(pixels)[1])
        features = model.encoder.forward_features(pixels)
        expected = features[:, 0] if pool == "token" else model.encoder.fc_norm(features[:, 1:].mean(1))
        torch.testing.assert_close(embedding, expected)


@pytest.mark.parametrize("labels, error, message", [
    (torch.tensor([0, 1, 4]), ValueError, r"labels must be in \[0, 4\), got values in \[0, 4\]"),
    (torch.tensor([0, -1, 2]), ValueError, r"labels must be in \[0, 4\), got values in \[-1, 2\]"),
    (torch.tensor([0, 1]), ValueError, r"labels must have shape \(3,\) for 3 images, got \(2,\)"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "labels must be int64 class indices, got torch.float32"),
])
def test_bad_labels(labels, error, message):
    with pytest.raises(error, match=message):
        debug_model()(random_pixels(3, 3, 64), labels)


def test_bad_images_and_configs():
    with pytest.raises(ValueError, match="the input has 2 channels; the model takes in_chans=3"):
        debug_model()(random_pixels(1, 2, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="image size 36 is not a multiple of the patch size 8"):
        debug_model().embed(random_pixels(1, 3, 36))
    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        debug_model(classes=1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        debug_model(label_smoothing=1.0)
    with pytest.raises(ValueError, match="channel_agnostic must be False"):
        debug_model(channel_agnostic=True)
    with pytest.raises(TypeError, match=r"unknown model option\(s\) \['mask_ratio'\]"):
        debug_model(mask_ratio=0.5)


def test_save_and_reload_gives_the_same_model(tmp_path):
    model = debug_model(5, classes=7, global_pool="avg").eval()
    maefast.save_pretrained(model, tmp_path / "ckpt", channel_names=["DNA", "ER", "RNA", "AGP", "Mito"])
    restored = maefast.from_pretrained(tmp_path / "ckpt").eval()
    assert restored.config == model.config and restored.config.num_classes == 7
    pixels = random_pixels(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(pixels)[1], model(pixels)[1])
        torch.testing.assert_close(restored.embed(pixels), model.embed(pixels))


def test_encoder_weights_load_from_an_mae_checkpoint(tmp_path):
    mae = maefast.create_model("mae_vit_debug_patch8_64", in_chans=3).eval()
    maefast.save_pretrained(mae, tmp_path)
    model = maefast.load_pretrained(debug_model(), tmp_path, strict=False).eval()
    pixels = random_pixels(2, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.forward_features(pixels), mae.forward_features(pixels))


def test_flops_are_the_encoder_plus_the_head():
    model = maefast.create_model("wsl_vit_small_patch16_256", num_classes=1139)
    expected = encoder_forward_flops(model.encoder.config, 6) + 2 * 384 * 1139
    assert classifier_forward_flops(model.config, 6) == expected
    assert family_of(model).training_flops(model, 6) == 3 * expected


def test_learns_a_separable_toy_problem():
    # class k: channel k is bright; the classifier must read which channel carries the signal
    torch.manual_seed(1)
    model = maefast.create_model(DEBUG, in_chans=3, num_classes=3, embed_dim=32, depth=1, num_heads=2,
                                 img_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(size):
        labels = torch.randint(0, 3, (size,))
        pixels = torch.randint(0, 40, (size, 3, 32, 32), dtype=torch.uint8)
        bright = torch.randint(150, 256, (size, 32, 32), dtype=torch.uint8)
        pixels[torch.arange(size), labels, :16] = bright[:, :16]  # top half lit, so standardization keeps it
        return pixels, labels

    for _ in range(40):
        pixels, labels = batch(16)
        loss, _, _ = model(pixels, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pixels, labels = batch(64)
    with torch.no_grad():
        accuracy = (model(pixels)[1].argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, accuracy
