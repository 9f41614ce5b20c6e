"""A small model on the fused ops gives the loss and gradients of the same model on the reference ops."""
import pytest
import torch

from maefast import create_model
from maefast.ops.patches import random_pixels

from .helpers import device_for, kernel_backends

MODELS = [("mae_vit_debug_patch8_64", 6, {}), ("camae_vit_debug_patch8_64", 2, {"norm_pix_loss": True})]


def loss_and_grads(model, pixels, noise):
    model.zero_grad(set_to_none=True)
    loss, pred, mask = model(pixels, noise=noise)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), pred.detach(), grads


@pytest.mark.parametrize("backend", [None] + kernel_backends("triton"), ids=["automatic", "triton"])
@pytest.mark.parametrize("name, channels, overrides", MODELS, ids=[m[0] for m in MODELS])
def test_fused_model_matches_reference_model(monkeypatch, backend, name, channels, overrides):
    torch.manual_seed(0)
    device = device_for(backend or "cpp")  # the Triton run goes to the GPU when there is one
    model = create_model(name, in_chans=channels, **overrides).to(device)
    pixels = random_pixels(2, channels, 64, torch.uint8, device)
    tokens = model.encoder.num_tokens(channels)
    noise = torch.rand(2, tokens, device=device)
    monkeypatch.setenv("MAEFAST_BACKEND", "reference")
    ref_loss, ref_pred, ref_grads = loss_and_grads(model, pixels, noise)
    if backend is None:
        monkeypatch.delenv("MAEFAST_BACKEND")  # CPU: C++ tokenize / unshuffle, SDPA, reference loss
    else:
        monkeypatch.setenv("MAEFAST_BACKEND", backend)
    loss, pred, grads = loss_and_grads(model, pixels, noise)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    assert "encoder.patch_embed.proj.weight" in grads and "decoder.mask_token" in grads
    for key in ref_grads:
        scale = ref_grads[key].abs().max().item()
        torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=key)
