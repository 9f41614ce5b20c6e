"""Attention backends at setup: the FlashAttention libraries behind a custom op (a model tuned to one compiles
as one graph), the qk-norm layout, and tune_attention on the CPU (docs/architecture.md, "How a backend is
chosen").

FlashAttention is not installed here; a stand-in module with the library's public function (flash_attn_func on
(B, N, H, d) tensors, softmax_scale=) takes its place under the name FA-3 is imported by. Like FlashAttention-4
it is an autograd.Function dynamo cannot trace (it breaks the graph), so a compiled model can only reach it
through maefast's custom op.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import pytest
import torch
import torch._dynamo

import maefast
from maefast.errors import MissingDependency
from maefast.models.attention_setup import (
    TUNING_CROPS,
    configure_attention,
    current_attention,
    recording_attention_calls,
    tune_attention,
    tuning_batch,
)
from maefast.ops.attention import attention_reference, head_layer_norm

attention_module = importlib.import_module("maefast.ops.attention")
STANDIN = "flash_attn_interface"  # the module the "fa3" backend imports


class _StandInFlashAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v on (B, N, H, d) tensors, with a graph break dynamo cannot trace through."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        torch._dynamo.graph_break()
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return attention_reference(*(t.transpose(1, 2) for t in (q, k, v)), scale).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = attention_reference(*(t.transpose(1, 2) for t in (q, k, v)), ctx.scale).transpose(1, 2)
            return (*torch.autograd.grad(out, (q, k, v), grad), None)


@pytest.fixture
def standin(monkeypatch):
    """The stand-in FlashAttention module under FA-3's name; what it was called with is in `.calls`."""
    module = types.ModuleType(STANDIN)
    module.__spec__ = importlib.machinery.ModuleSpec(STANDIN, None)
    module.calls = []

    def flash_attn_func(q, k, v, softmax_scale=None):
        module.calls.append((tuple(q.shape), tuple(q.stride()), tuple(v.stride())))
        return _StandInFlashAttention.apply(q, k, v, softmax_scale)

    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, STANDIN, module)
    monkeypatch.setattr(attention_module, "_prepared", {})  # nothing prepared by earlier tests
    return module


def small_mae(seed: int = 0):
    torch.manual_seed(seed)
    return maefast.create_model("mae_vit_debug_patch8_64", img_size=32, in_chans=3, depth=2, embed_dim=64,
                                num_heads=4, decoder_depth=1, decoder_embed_dim=64, decoder_num_heads=4)


def pixels_for(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 65536, (batch, 3, 32, 32), dtype=torch.int32).to(torch.uint16)


def loss_and_grads(model, forward, pixels, noise):
    model.zero_grad(set_to_none=True)
    loss = forward(pixels, noise=noise)[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_standin_breaks_a_fullgraph_trace_when_called_directly(standin):
    """The control: without the custom op, dynamo refuses the library's function in a fullgraph trace."""
    q = torch.randn(1, 5, 2, 8)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(lambda t: standin.flash_attn_func(t, t, t, softmax_scale=0.3), fullgraph=True,
                      backend="eager")(q)


def test_a_model_tuned_to_flash_attention_compiles_as_one_graph(standin, monkeypatch):
    reference_model, model = small_mae(), small_mae()
    configure_attention(reference_model, "sdpa")
    assert configure_attention(model, "fa3") == {"encoder": "fa3", "decoder": "fa3"}
    assert attention_module._prepared["fa3"] is standin  # imported at setup

    def no_import(name):
        raise AssertionError(f"the {name} backend's module imported inside a forward")
    monkeypatch.setattr(attention_module, "prepare_backend", no_import)
    pixels = pixels_for()
    noise = torch.rand(2, model.num_tokens(3))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # the second step reuses the graph
        loss, grads = loss_and_grads(model, compiled, pixels, noise)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert len(standin.calls) >= 4  # encoder and decoder sites, forward and the backward's recomputation
    # (B, N, H, d) views with a contiguous head dim
    assert all(q_stride[-1] == v_stride[-1] == 1 for _, q_stride, v_stride in standin.calls)
    expected_loss, expected_grads = loss_and_grads(reference_model, reference_model, pixels, noise)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flash_attention_custom_op_passes_opcheck(standin):
    attention_module.prepare_backend("fa3")
    q, k, v = (torch.randn(1, 7, 2, 8).transpose(1, 2).requires_grad_() for _ in range(3))
    torch.library.opcheck(torch.ops.maefast.flash_attn_library.default, (q, k, v, 0.3, "fa3"),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_a_missing_flash_attention_module_is_named_at_setup(monkeypatch):
    monkeypatch.setattr(attention_module, "_prepared", {})
    monkeypatch.setattr(attention_module, "installed", lambda name: False)
    with pytest.raises(MissingDependency, match="fa4.*flash_attn.cute.*maefast\\[flash4\\]"):
        configure_attention(small_mae(), {"encoder": "fa4"})


def test_qk_norm_runs_in_the_projections_layout():
    """LayerNorm over the head dim of a (B, H, N, d) view of (B, N, H, d) memory keeps that memory order."""
    projection = torch.randn(2, 9, 3 * 4 * 8)  # (B, N, 3 * H * d), as the blocks' in-projection makes it
    q = projection[..., :32].view(2, 9, 4, 8).transpose(1, 2)
    norm = torch.nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    normed = head_layer_norm(q, norm)
    assert normed.shape == q.shape and normed.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(normed, norm(q))


def test_tune_attention_on_the_cpu_times_each_role_at_a_sub_batch_and_keeps_the_fastest(standin):
    model = small_mae()
    batch = tuning_batch(48)  # a run of 48 crops tunes at 32
    assert batch == TUNING_CROPS and tuning_batch(4) == 4
    pixels = pixels_for(batch)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    def step():
        model(pixels)[0].backward()

    tuning = tune_attention(model, step, needs_grad=True, reps=1, candidates=("sdpa", "math", "fa3", "nope"))
    assert torch.equal(torch.rand(3), expected_next)  # the RNG is where it was
    assert all(p.grad is None for p in model.parameters())
    assert set(tuning.timings) == {"encoder", "decoder"}
    for role, measured in tuning.timings.items():
        assert all(isinstance(measured[name], float) and measured[name] > 0 for name in ("sdpa", "math", "fa3"))
        assert measured["nope"].startswith("UserInputError: unknown attention backend")
        assert tuning.choice[role] == min(("sdpa", "math", "fa3"), key=measured.get)
    assert current_attention(model) == tuning.choice
    # the stand-in ran on fresh tensors in each role's recorded layout, at the sub-batch: v a (B, N, H, d) view
    # of the role's projection (encoder: in_proj of width 4 * 64 + 3 * 64; decoder: qkv of width 3 * 64), and
    # the encoder's q, normalized, in (B, N, H, d) memory order too
    expected = {(batch, 1 + model.num_tokens(3) // 4, 4, 16): ((64, 16, 1), (448, 16, 1)),
                (batch, 1 + model.num_tokens(3), 4, 16): ((192, 16, 1), (192, 16, 1))}
    for shape, (q_stride, v_stride) in expected.items():
        assert any(call[0] == shape and call[1][1:] == q_stride and call[2][1:] == v_stride
                   for call in standin.calls), shape


def test_recording_keeps_the_first_call_of_each_role_and_no_tensor():
    model = small_mae()
    with recording_attention_calls() as calls:
        model(pixels_for(3))
    assert set(calls) == {"encoder", "decoder"}
    encoder = calls["encoder"]
    assert encoder.q.shape == (3, 4, 1 + model.num_tokens(3) // 4, 16)
    assert encoder.q_norm is model.encoder.blocks[0].q_norm
    assert not any(isinstance(value, torch.Tensor) for call in calls.values() for value in vars(call).values())


def test_tune_attention_leaves_auto_on_the_cpu_without_candidates():
    model = small_mae()
    tuning = tune_attention(model, lambda: model(pixels_for()), needs_grad=False)
    assert tuning.choice == {"encoder": "auto", "decoder": "auto"} and tuning.timings == {}
