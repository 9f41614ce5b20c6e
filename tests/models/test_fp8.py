"""FP8 GEMMs (maefast.models.fp8): which layers of the real ViT-L/8 MAE run in FP8, and, with torchao's emulation on
the CPU, that a converted model computes what the bf16 one does within FP8's rounding, trains through
torch.compile as one graph and keeps its state dict."""
import pytest
import torch
import torch._dynamo

import maefast

pytest.importorskip("torchao")
from maefast.models.fp8 import FP8_MIN_FEATURES, Float8Matmul, convert_to_fp8  # noqa: E402


def small_mae(seed: int = 0):
    """A 2-block MAE of width 64 (FP8 conversion with min_features=64 converts its encoder like ViT-L's)."""
    torch.manual_seed(seed)
    return maefast.create_model("mae_vit_debug_patch8_64", img_size=32, in_chans=3, depth=2, embed_dim=64,
                                num_heads=4, decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)


def pixels(batch: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 65536, (batch, 3, 32, 32), generator=generator, dtype=torch.int32).to(torch.uint16)


def test_the_vit_large_mae_runs_its_encoder_gemms_in_fp8_and_keeps_the_small_and_last_ones():
    with torch.device("meta"):
        model = maefast.create_model("mae_vit_large_patch8_256")
    report = convert_to_fp8(model, emulate=True)
    depth = len(model.encoder.blocks)
    assert sorted(report.fp8) == sorted([f"encoder.blocks.{i}.in_proj" for i in range(depth)]
                                        + [f"encoder.blocks.{i} (fused out-projection)" for i in range(depth)])
    assert all(isinstance(block.out_linear, Float8Matmul) for block in model.encoder.blocks)
    assert "last layer" in report.kept["decoder_pred"]
    assert f"below {FP8_MIN_FEATURES}" in report.kept["encoder_decoder_proj"]
    decoder_linears = [name for name, module in model.decoder.named_modules() if isinstance(module, torch.nn.Linear)]
    assert decoder_linears and all(f"decoder.{name}" in report.kept for name in decoder_linears)


def test_an_fp8_model_computes_the_bf16_models_loss_and_gradients_within_fp8_rounding():
    reference, model = small_mae(), small_mae()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = convert_to_fp8(model, min_features=64)
    assert report.emulated and len(report.fp8) == 4  # in_proj and fused out-projection of both blocks
    assert model.state_dict().keys() == state.keys()  # checkpoints are unchanged
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = pixels()
    noise = torch.rand(x.shape[0], model.num_tokens(3))
    results = []
    for m in (reference, model):
        loss = m(x, noise=noise)[0]
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
        results.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
    (ref_loss, ref_grad), (fp8_loss, fp8_grad) = results
    assert abs(fp8_loss.item() - ref_loss.item()) < 0.02 * abs(ref_loss.item())
    assert torch.nn.functional.cosine_similarity(fp8_grad, ref_grad, dim=0) > 0.99
    assert not torch.equal(fp8_loss, ref_loss)  # the FP8 path did run


def test_an_fp8_model_compiles_as_one_graph_for_training():
    model = small_mae()
    convert_to_fp8(model, min_features=64)
    x = pixels()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        compiled(x)[0].backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fp8_embeddings_match_the_full_precision_ones_per_tile():
    encoder = small_mae().encoder.eval()
    x = pixels(8)
    with torch.no_grad():
        exact = encoder.embed(x)
        convert_to_fp8(encoder, min_features=64)
        fp8 = encoder.embed(x)
    assert torch.nn.functional.cosine_similarity(fp8, exact, dim=1).min() > 0.999


def test_a_gpu_without_fp8_tensor_cores_is_refused(monkeypatch):
    from maefast.errors import UserInputError
    from maefast.models import fp8
    model = small_mae()
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: False)
    with pytest.raises(UserInputError, match="FP8 tensor cores"):
        convert_to_fp8(model, emulate=False)
