"""The fused parallel block (one out-projection GEMM, LayerScale folded) against the op-by-op block, which is
timm's ParallelScalingBlock (tests/models/test_parity_timm.py holds that parity): fp32 on the CPU, values
and gradients, within 1e-5."""
import pytest
import torch

from maefast.models.layers import ParallelBlock

VARIANTS = {
    "papers": dict(),                                  # qk-norm, LayerScale 1e-4, separate MLP bias
    "in_proj_bias": dict(qkv_bias=True),               # the reference checkpoints' blocks
    "no_layer_scale": dict(init_values=None, qk_norm=False),
    "drop_path": dict(drop_path=0.4),
}


def randomized(block: ParallelBlock) -> ParallelBlock:
    """Every parameter random (LayerScale of order 1, so that both paths carry real signal)."""
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.5 if "gamma" in name else 0.2))
    return block


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
@pytest.mark.parametrize("training", [False, True])
def test_fused_block_matches_the_op_by_op_block(variant, training):
    torch.manual_seed(0)
    block = randomized(ParallelBlock(48, num_heads=4, **VARIANTS[variant])).train(training)
    x = torch.randn(8, 11, 48, requires_grad=True)
    grad = torch.randn(8, 11, 48)
    results = []
    for forward in (block.forward, block.forward_unfused):
        torch.manual_seed(1)  # the same drop-path draws
        out = forward(x)
        results.append((out,) + torch.autograd.grad(out, [x, *block.parameters()], grad))
    fused, unfused = results
    names = ["out", "x"] + [name for name, _ in block.named_parameters()]
    for name, got, want in zip(names, fused, unfused):
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale, msg=name)
    if variant == "drop_path" and training:  # the draws dropped some samples and kept others
        dropped = [bool(torch.equal(fused[0][b], x[b])) for b in range(x.shape[0])]
        assert any(dropped) and not all(dropped), dropped


def test_under_autocast_the_mlp_stays_in_the_activation_dtype():
    """The fp32 MLP bias is cast to bf16 before it is added: GELU and the out-projection's input stay bf16."""
    block = randomized(ParallelBlock(32, num_heads=2))
    assert block.mlp_bias is not None and block.mlp_bias.dtype == torch.float32
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attended, mlp_hidden = block.attention_and_mlp_hidden(x)
        activated = block.activated_mlp_hidden(mlp_hidden)
    assert mlp_hidden.dtype == activated.dtype == torch.bfloat16
    exact = torch.nn.functional.gelu(mlp_hidden.float() + block.mlp_bias.detach())
    torch.testing.assert_close(activated.float(), exact, rtol=2 ** -6, atol=2 ** -6)
