"""The embedding runner: compiled with fixed shapes (padded batches) it gives the eager features; the job
setup's tile batch and attention choice (maefast.job_setup), recorded and reused when a job resumes."""
import pytest
import torch

from maefast import create_model
from maefast.embedding.job import regroup
from maefast.embedding.runner import PooledEncoder, TileEmbedder
from maefast.errors import UserInputError
from maefast.job_setup import SATURATION_GAIN, RunSetup, choose_attention, choose_tile_batch, search_tile_batch
from maefast.models.attention_setup import current_attention
from maefast.ops.patches import random_pixels

CPU = RunSetup.resolve(torch.device("cpu"), "fp32", False)


def tiles(count: int) -> torch.Tensor:
    return random_pixels(count, 3, 32, torch.uint16)


def pooled_encoder(blocks: list[int] | None = None) -> PooledEncoder:
    torch.manual_seed(0)
    # no layer scale: at its initial 1e-4 every block would pass its input on nearly unchanged
    encoder = create_model("vit_debug_patch8_64", img_size=32, in_chans=3, init_values=None)
    return PooledEncoder(encoder, pool="mean", per_channel=False, setup=CPU, blocks=blocks)


def embedder(compile: bool, blocks: list[int] | None = None) -> TileEmbedder:
    return TileEmbedder(pooled_encoder(blocks), 6, compile)


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [None, [0, 1]])
def test_compiled_padded_batches_give_the_eager_features(blocks):
    """Block-wise too: one graph gives every chosen block's features (compiled by default on CUDA)."""
    eager, compiled = embedder(False, blocks), embedder(True, blocks)
    shape = (64,) if blocks is None else (len(blocks), 64)
    for count in (6, 4, 1):  # a full batch, then smaller ones that are padded to 6 tiles
        pixels = tiles(count)
        expected = eager(pixels)
        got = compiled(pixels)
        assert got.shape == (count, *shape) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if blocks is not None:  # the last block's is the final embedding, block 0's another
        final = embedder(False)(pixels)
        torch.testing.assert_close(got[:, -1], final, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got[:, 0], final, rtol=1e-2, atol=1e-3)


def never_called():
    raise AssertionError("the job setup timed a step it had no reason to time")


def test_a_resumed_job_reuses_the_recorded_attention_choice():
    pooled = pooled_encoder()
    record = choose_attention(pooled.encoder, "auto", CPU, never_called, needs_grad=False,
                              recorded={"choice": {"encoder": "math"}, "timings": {"encoder": {"math": 1.0}}})
    assert current_attention(pooled.encoder) == {"encoder": "math"}
    assert record == {"requested": "auto", "choice": {"encoder": "math"}, "timings": {"encoder": {"math": 1.0}},
                      "reused": True}


def test_a_chosen_attention_backend_runs_every_site_and_the_cpu_keeps_auto():
    pooled = pooled_encoder()
    record = choose_attention(pooled.encoder, "math", CPU, never_called, needs_grad=False,
                              recorded={"choice": {"encoder": "efficient"}})
    assert current_attention(pooled.encoder) == {"encoder": "math"} and record["requested"] == "math"
    assert TileEmbedder(pooled, 6, False)(tiles(2)).shape == (2, 64)
    record = choose_attention(pooled.encoder, "auto", CPU, never_called, needs_grad=False)
    assert record == {"requested": "auto", "choice": {"encoder": "auto"}, "timings": {}}


def test_batches_larger_than_the_tile_batch_run_in_chunks_with_the_same_features():
    runner, pixels = embedder(False), tiles(15)  # 6 + 6 + 3
    whole = runner.pooled(pixels)
    torch.testing.assert_close(runner(pixels), whole, rtol=1e-4, atol=1e-5)


def test_regroup_gives_batches_of_the_tile_batch_in_the_loaders_order():
    sizes = [3, 5, 2, 7]
    loader = [{"pixels": tiles(n), "index": list(range(sum(sizes[:i]), sum(sizes[:i + 1])))}
              for i, n in enumerate(sizes)]
    groups = list(regroup(loader, 4, torch.device("cpu")))
    assert [len(owners) for _, owners in groups] == [4, 4, 4, 4, 1]
    torch.testing.assert_close(torch.cat([p for p, _ in groups]), torch.cat([b["pixels"] for b in loader]))
    assert torch.cat([o for _, o in groups]).tolist() == list(range(17))


def rate_curve(rates: dict[int, float], peaks: dict[int, int] | None = None, oom_from: int | None = None):
    """measure(tiles) of a device whose throughput at each batch is `rates` and runs out of memory from
    `oom_from` tiles; records which batches were tried."""
    tried = []

    def measure(count: int) -> tuple[float, int]:
        tried.append(count)
        if oom_from is not None and count >= oom_from:
            raise torch.OutOfMemoryError(f"{count} tiles")
        return rates[count], (peaks or {}).get(count, count)
    return measure, tried


def test_the_tile_batch_grows_until_the_throughput_saturates():
    rates = {16: 100.0, 32: 180.0, 64: 300.0, 128: 310.0, 256: 320.0}
    measure, tried = rate_curve(rates)
    tiles_chosen, trials = search_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))
    assert 310.0 < 300.0 * SATURATION_GAIN  # 128 gains too little: stop there, keep the largest that fit
    assert tried == [16, 32, 64, 128] and tiles_chosen == 128
    assert [t.outcome for t in trials] == ["fits", "fits", "fits", "no faster"]
    measure, _ = rate_curve({**rates, 128: 290.0})  # slower at 128: keep 64
    assert search_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))[0] == 64


def test_the_tile_batch_stops_below_out_of_memory_and_the_memory_share():
    rates = {16: 100.0, 32: 200.0, 64: 400.0, 128: 800.0}
    measure, _ = rate_curve(rates, oom_from=64)
    assert search_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))[0] == 32
    measure, _ = rate_curve(rates, peaks={16: 1, 32: 2, 64: 3, 128: 99})
    tiles_chosen, trials = search_tile_batch(measure, memory_limit=10, candidates=tuple(rates))
    assert tiles_chosen == 64 and trials[-1].outcome == "over the memory share"


def test_a_device_too_small_for_the_smallest_batch_is_a_clear_error():
    measure, _ = rate_curve({16: 1.0}, oom_from=16)
    with pytest.raises(UserInputError, match="not even 16 tiles per forward fit.*out of memory"):
        search_tile_batch(measure, memory_limit=10**9, candidates=(16, 32))


def test_a_cpu_job_runs_one_loader_batch_per_forward_unless_told_or_resumed():
    def choose(requested, recorded=None):
        return choose_tile_batch(requested, 12, never_called, (3, 32, 32), CPU, recorded=recorded)
    assert choose(6) == {"tiles": 6}  # the number given
    assert choose("auto") == {"tiles": 12}
    assert choose("auto", {"tiles": 256, "trials": []}) == {"tiles": 256, "trials": [], "reused": True}


def test_fp8_precision_embeds_with_fp8_gemms_close_to_full_precision(monkeypatch):
    """`maefast embed --precision fp8`: RunSetup.prepare runs the encoder's GEMMs in FP8 (torchao's emulation on
    the CPU, with the threshold lowered to the debug encoder's width of 64), bf16 elsewhere."""
    monkeypatch.setenv("MAEFAST_FP8_MIN_FEATURES", "64")
    pixels = tiles(4)

    def pooled_in(precision: str) -> PooledEncoder:
        torch.manual_seed(0)
        encoder = create_model("vit_debug_patch8_64", img_size=32, in_chans=3)
        with torch.no_grad():
            for block in encoder.blocks:  # LayerScale at 1: the blocks, where FP8 runs, carry the signal
                block.ls.gamma.fill_(1.0)
        return PooledEncoder(encoder, pool="mean", per_channel=False,
                             setup=RunSetup.resolve(torch.device("cpu"), precision, False))

    exact = TileEmbedder(pooled_in("fp32"), 6, False)(pixels)
    quantized = pooled_in("fp8")
    assert quantized.fp8["emulated"] and "blocks.0.in_proj" in quantized.fp8["fp8"]
    got = TileEmbedder(quantized, 6, False)(pixels)
    assert got.shape == exact.shape and not torch.equal(got, exact)
    assert torch.nn.functional.cosine_similarity(got, exact, dim=1).min() > 0.99
