"""torch.compile(fullgraph=True) over every model family, in the CPU configuration and in the CUDA one, and
regional compilation (maefast.models.regions) as `maefast train` applies it.

The traced code depends on the device only through the ops' backend choice (maefast.ops.backend), which
dynamo evaluates while tracing. The CUDA configuration is traced here without a GPU by giving the ops the
choice CUDA gets (the Triton kernels, which run on CPU tensors under TRITON_INTERPRET=1) and checking that
choice itself traces for a CUDA device. The models are the registry's families at each patch size, shrunk
(2 blocks of width 64, a 4 x 4 patch grid): the traced Python is the same at every width and depth.
"""
from __future__ import annotations

import importlib

import pytest
import torch
import torch._dynamo

from maefast import create_model, list_models
from maefast.models.attention_setup import configure_attention
from maefast.models.families import CA_MAE, MAE, MU_NET, family_of
from maefast.models.registry import input_config
from maefast.ops.backend import BACKENDS, select_backend, triton_installed, triton_interpreting
from maefast.ops.patches import random_pixels

# maefast.ops re-exports each op's function under its module's name
OPS = {op: importlib.import_module(f"maefast.ops.{op}").IMPLEMENTED for op in ("tokenize", "unshuffle", "mae_loss")}
needs_interpreter = pytest.mark.skipif(not (triton_installed() and triton_interpreting()),
                                       reason="the CUDA configuration runs the Triton kernels under TRITON_INTERPRET=1")


def representatives() -> list[str]:
    """One registered model per (family, patch size), the smallest by name order."""
    chosen = {}
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, **family_of(name).build_options)
        chosen.setdefault((family_of(name).name, input_config(model).patch_size), name)
    return sorted(chosen.values())


def small_model(name: str, drop_path_rate: float = 0.1):
    """The registered model at its patch size, with 2 blocks of width 64 and a 4 x 4 patch grid."""
    family = family_of(name)
    if family is MU_NET:
        return create_model(name, img_size=32, patch_size=8, in_chans=3, widths=[16, 32, 64], depths=[1, 1],
                            bottleneck_depth=1, norm_groups=8)
    with torch.device("meta"):
        inputs = input_config(create_model(name, **family.build_options))
    overrides = dict(depth=2, embed_dim=64, num_heads=4, img_size=4 * inputs.patch_size, drop_path_rate=drop_path_rate)
    if family in (MAE, CA_MAE):
        overrides.update(decoder_depth=1, decoder_embed_dim=64, decoder_num_heads=4, cross_attention_heads=4)
    if not inputs.channel_agnostic:
        overrides["in_chans"] = 3
    if family.needs_labels:
        overrides["num_classes"] = 3
    return create_model(name, **overrides)


def inputs_for(model, batch: int = 2) -> tuple:
    config = input_config(model)
    channels = 2 if getattr(config, "channel_agnostic", False) else config.in_chans
    inputs = (random_pixels(batch, channels, config.img_size, torch.uint16),)
    if family_of(model).needs_labels:
        inputs += (torch.randint(0, model.config.num_classes, (batch,)),)
    return inputs


def fresh_dynamo() -> None:
    """No compiled code and no counts from earlier tests."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_the_cuda_backend_choice_traces_for_a_cuda_device(op):
    """What select_backend does for CUDA tensors (no GPU needed: it only reads the device type): traced as one
    graph, the choice is the constant the graph returns (its index in BACKENDS), and it is the Triton kernel."""
    def choose(x):
        return x + BACKENDS.index(select_backend(op, torch.device("cuda"), OPS[op]))

    fresh_dynamo()
    out = torch.compile(choose, fullgraph=True, backend="eager")(torch.zeros(1))
    assert graphs_compiled() == 1
    assert BACKENDS[int(out.item())] == ("triton" if triton_installed() else "reference")


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["cpu", pytest.param("cuda", marks=needs_interpreter)])
@pytest.mark.parametrize("name", representatives())
def test_model_compiles_as_one_graph_for_training_and_embedding(monkeypatch, configuration, name):
    torch.manual_seed(0)
    model = small_model(name)
    if configuration == "cuda":
        monkeypatch.setenv("MAEFAST_BACKEND", "triton")  # the backend every fused op gets on CUDA
        configure_attention(model, "triton" if family_of(name).name in ("MAE", "encoder", "MU-Net") else "math")
    inputs = inputs_for(model)
    fresh_dynamo()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # the second step must reuse the graph
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled(*inputs)
        # masked models and classifiers return (loss, ...); an encoder its pooled features
        loss = out[0] if isinstance(out, tuple) else out.float().square().mean()
        loss.backward()
    assert graphs_compiled() == 1
    embed = model.embed
    model.eval()
    fresh_dynamo()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.compile(embed, fullgraph=True, backend="aot_eager")(inputs[0])
    assert features.ndim == 2 and torch.isfinite(features.float()).all()


def test_blocks_with_different_drop_path_rates_share_one_graph():
    """Blocks compiled one by one (as FSDP users do) recompile per drop-path rate when the rate is a Python
    float; the rate is a tensor, so every block runs the same graph."""
    model = create_model("vit_debug_patch8_64", depth=4, drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob.item() for block in model.blocks[1:]]
    assert len(set(rates)) == 3
    tokens = torch.randn(2, 9, model.embed_dim)
    fresh_dynamo()
    for block in model.blocks[1:]:
        torch.compile(block, fullgraph=True, backend="eager")(tokens)
    assert graphs_compiled() == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mae_vit_debug_patch8_64", "camae_vit_debug_patch8_64", "munet_debug_64"])
def test_inductor_compiled_model_matches_eager(name):
    """The compiled model (inductor on the CPU, the default CPU backends) gives eager's loss, predictions and
    gradients."""
    torch.manual_seed(0)
    overrides = {"img_size": 32} | ({} if family_of(name) is CA_MAE else {"in_chans": 3})
    model = create_model(name, **overrides)
    (pixels,) = inputs_for(model)
    noise = torch.rand(pixels.shape[0], model.num_tokens(pixels.shape[1]))

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        loss, pred, _ = forward(pixels, noise=noise)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), pred.detach(), grads

    eager = loss_and_grads(model)
    fresh_dynamo()
    compiled = loss_and_grads(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-5)
    assert compiled[2].keys() == eager[2].keys()
    for key, grad in eager[2].items():
        torch.testing.assert_close(compiled[2][key], grad, rtol=1e-4, atol=1e-5 * max(grad.abs().max().item(), 1.0),
                                   msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["mae_vit_debug_patch8_64", "camae_vit_debug_patch8_64"])
def test_compiled_model_on_cuda_matches_eager(name):
    """On a GPU: the model compiled as one graph (inductor, the CUDA backends: Triton ops, SDPA) gives eager's
    loss and gradients in fp32, and trains under bf16 autocast; the GPU suite runs this."""
    torch.manual_seed(0)
    model = create_model(name, img_size=32, **({} if family_of(name) is CA_MAE else {"in_chans": 3})).cuda()
    (pixels,) = (t.cuda() for t in inputs_for(model))
    noise = torch.rand(pixels.shape[0], model.num_tokens(pixels.shape[1]), device="cuda")

    def loss_and_grads(forward, autocast: bool = False):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = forward(pixels, noise=noise)[0]
        loss.backward()
        return loss.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = loss_and_grads(model)
    fresh_dynamo()
    compiled_model = torch.compile(model, fullgraph=True)
    compiled = loss_and_grads(compiled_model)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    for key, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][key], grad, rtol=1e-3, atol=1e-4 * max(grad.abs().max().item(), 1.0),
                                   msg=key)
    loss, grads = loss_and_grads(compiled_model, autocast=True)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", ["mae_vit_debug_patch8_64", "camae_vit_debug_patch8_64"])
def test_regional_compilation_compiles_each_kind_of_block_once_whatever_the_depth(name):
    """maefast.models.regions: blocks compiled one by one share their graph, so the count of graphs does not
    grow with depth; the model computes what it does eagerly and keeps its parameter names."""
    from maefast.models.regions import compile_regions

    def graphs_for(depth: int) -> tuple[int, torch.Tensor, torch.Tensor, list[str]]:
        torch.manual_seed(0)
        overrides = dict(img_size=32, depth=depth, decoder_depth=depth, **({} if "camae" in name else {"in_chans": 3}))
        model = create_model(name, **overrides)
        (pixels,) = inputs_for(model)
        noise = torch.rand(pixels.shape[0], model.num_tokens(pixels.shape[1]))
        eager = model(pixels, noise=noise)[0]
        fresh_dynamo()
        compile_regions(model, backend="aot_eager")
        loss = model(pixels, noise=noise)[0]
        loss.backward()
        return graphs_compiled(), loss.detach(), eager.detach(), list(model.state_dict())

    shallow, deep = graphs_for(2), graphs_for(5)
    assert shallow[0] == deep[0] <= 3  # encoder block 0 (no drop path), the other encoder blocks, decoder blocks
    for _, loss, eager, names in (shallow, deep):
        torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
        assert not any("_orig_mod" in n for n in names)


def test_regional_compilation_of_a_family_without_repeated_blocks_compiles_the_model_as_one_region():
    from maefast.models.regions import compile_regions

    model = small_model("munet_debug_64")
    (pixels,) = inputs_for(model)
    noise = torch.rand(pixels.shape[0], model.num_tokens(pixels.shape[1]))
    eager = model(pixels, noise=noise).loss
    fresh_dynamo()
    assert compile_regions(model, backend="aot_eager") == [model]
    torch.testing.assert_close(model(pixels, noise=noise).loss, eager, rtol=1e-5, atol=1e-6)
    assert graphs_compiled() == 1


@pytest.mark.parametrize("checkpointing", [False, True])
def test_maefast_train_compiles_each_kind_of_block_once_and_trains_as_eager(screen, tmp_path, monkeypatch,
                                                                               checkpointing):
    """run.compile=true: the trainer compiles regionally (with activation checkpointing too, whose hooks stay
    outside the blocks' graphs): 4 encoder and 2 decoder blocks make 2 graphs, and the first two steps give
    eager's losses. (aot_eager instead of inductor: the same graphs, without the CPU code generation.)"""
    from maefast.train.config import load_config
    from maefast.train.loop import Trainer

    compile_with = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_with(fn, **{**options, "backend": "aot_eager"}))
    overrides = ["model.overrides.depth=4", "model.overrides.decoder_depth=2", "data.num_workers=1",
                 "data.crops_per_image=1", "data.batch_size=4", "run.max_steps=2", "run.log_every=1",
                 f"data.path={screen}", f"run.activation_checkpointing={checkpointing}"]
    losses = {}
    for compiled in (False, True):
        fresh_dynamo()
        trainer = Trainer(load_config("debug", overrides + [f"run.compile={compiled}"]), tmp_path / str(compiled),
                          show_progress=False)
        blocks = family_of(trainer.model).blocks(trainer.model)
        assert all(("forward" in vars(block)) == compiled for block in blocks)  # each block's forward, compiled
        trainer.train()
        trainer.close()
        losses[compiled] = (tmp_path / str(compiled) / "metrics.csv").read_text().splitlines()[1:]
    assert graphs_compiled() == 2  # the encoder blocks (no drop path in this recipe) and the decoder blocks
    for eager, compiled in zip(*(losses[c] for c in (False, True))):
        eager_loss, compiled_loss = (float(row.split(",")[1]) for row in (eager, compiled))
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
