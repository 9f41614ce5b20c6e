"""maefast's pipeline computes what the public reference's pipeline computes (benchmarks' baseline)."""
import pytest
import torch

import maefast
from benchmarks.reference_pipeline import reference_embed, reference_forward
from maefast.models.families import MAE, family_of
from maefast.ops.patches import random_pixels


@pytest.mark.parametrize("name, channels", [("mae_vit_debug_patch8_64", 3), ("camae_vit_debug_patch8_64", 4)])
def test_same_loss_predictions_and_gradients(name, channels):
    torch.manual_seed(0)
    overrides = {"in_chans": channels} if family_of(name) is MAE else {"max_in_chans": 5}
    model = maefast.create_model(name, **overrides)
    pixels = random_pixels(2, channels, 64, dtype=torch.uint16)
    noise = torch.rand(2, model.encoder.num_tokens(channels))
    loss, pred, mask = model(pixels, noise=noise)
    loss.backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref_loss, ref_pred, ref_mask = reference_forward(model, pixels, noise)
    ref_loss.backward()
    torch.testing.assert_close(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for key, grad in ours.items():
        torch.testing.assert_close(grad, model.get_parameter(key).grad, rtol=1e-3, atol=1e-5, msg=key)


def test_same_embeddings():
    encoder = maefast.create_model("ca_vit_debug_patch8_64", max_in_chans=5).eval()
    pixels = random_pixels(3, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed(pixels), reference_embed(encoder, pixels), rtol=1e-4, atol=1e-5)
