"""The embedding runner: compiled with fixed shapes (padded batches) it gives the eager features; the
attention choice of a job is recorded and reused when the job resumes."""
import json

import pytest
import torch

from maefast import create_model
from maefast.embedding.job import regroup
from maefast.embedding.runner import ATTENTION_FILE, SATURATION_GAIN, TileEmbedder, choose_tile_batch
from maefast.errors import UserInputError
from maefast.models.attention_setup import current_attention


def tiles(count: int) -> torch.Tensor:
    return torch.randint(0, 65536, (count, 3, 32, 32), dtype=torch.int32).to(torch.uint16)


def embedder(compile: str, **options) -> TileEmbedder:
    torch.manual_seed(0)
    encoder = create_model("vit_debug_patch8_64", img_size=32, in_chans=3)
    return TileEmbedder(encoder, pool="mean", per_channel=False, precision="fp32", device=torch.device("cpu"),
                        batch_tiles=6, tile_shape=(3, 32, 32), compile=compile, **options)


@pytest.mark.slow
def test_compiled_padded_batches_give_the_eager_features():
    eager, compiled = embedder("off"), embedder("on")
    for count in (6, 4, 1):  # a full batch, then smaller ones that are padded to 6 tiles
        pixels = tiles(count)
        expected = eager(pixels)
        got = compiled(pixels)
        assert got.shape == (count, 64) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_resumed_job_reuses_the_recorded_attention_choice(tmp_path):
    (tmp_path / ATTENTION_FILE).write_text(json.dumps({"choice": {"encoder": "math"}}))
    runner = embedder("off", attention="auto", out=tmp_path)
    assert current_attention(runner.encoder) == {"encoder": "math"}
    assert runner.attention["reused"]


def test_a_chosen_attention_backend_runs_every_site():
    runner = embedder("off", attention="math")
    assert current_attention(runner.encoder) == {"encoder": "math"}
    assert runner(tiles(2)).shape == (2, 64)


def test_batches_larger_than_the_tile_batch_run_in_chunks_with_the_same_features():
    runner, pixels = embedder("off"), tiles(15)  # 6 + 6 + 3
    whole = runner.forward(pixels)
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
    tiles_chosen, trials = choose_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))
    assert 310.0 < 300.0 * SATURATION_GAIN  # 128 gains too little: stop there, keep the largest that fit
    assert tried == [16, 32, 64, 128] and tiles_chosen == 128
    assert [t.outcome for t in trials] == ["fits", "fits", "fits", "no faster"]
    measure, _ = rate_curve({**rates, 128: 290.0})  # slower at 128: keep 64
    assert choose_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))[0] == 64


def test_the_tile_batch_stops_below_out_of_memory_and_the_memory_share():
    rates = {16: 100.0, 32: 200.0, 64: 400.0, 128: 800.0}
    measure, _ = rate_curve(rates, oom_from=64)
    assert choose_tile_batch(measure, memory_limit=10**9, candidates=tuple(rates))[0] == 32
    measure, _ = rate_curve(rates, peaks={16: 1, 32: 2, 64: 3, 128: 99})
    tiles_chosen, trials = choose_tile_batch(measure, memory_limit=10, candidates=tuple(rates))
    assert tiles_chosen == 64 and trials[-1].outcome == "over the memory share"


def test_a_device_too_small_for_the_smallest_batch_is_a_clear_error():
    measure, _ = rate_curve({16: 1.0}, oom_from=16)
    with pytest.raises(UserInputError, match="not even 16 tiles per forward fit.*out of memory"):
        choose_tile_batch(measure, memory_limit=10**9, candidates=(16, 32))


def test_a_cpu_job_runs_one_loader_batch_per_forward_unless_told():
    assert embedder("off", loader_tiles=12).batch_tiles == 6  # the number given
    encoder = create_model("vit_debug_patch8_64", img_size=32, in_chans=3)
    auto = TileEmbedder(encoder, pool="mean", per_channel=False, precision="fp32", device=torch.device("cpu"),
                        batch_tiles="auto", tile_shape=(3, 32, 32), compile="off", loader_tiles=12)
    assert auto.batch_tiles == 12


def test_fp8_precision_embeds_with_fp8_gemms_close_to_full_precision(monkeypatch):
    """`maefast embed --precision fp8`: the encoder's GEMMs in FP8 (torchao's emulation on the CPU, with the
    threshold lowered to the debug encoder's width of 64), bf16 elsewhere."""
    pytest.importorskip("torchao")
    monkeypatch.setenv("MAEFAST_FP8_MIN_FEATURES", "64")
    pixels = tiles(4)
    runner = embedder("off")
    torch.manual_seed(0)
    encoder = create_model("vit_debug_patch8_64", img_size=32, in_chans=3)
    with torch.no_grad():
        for block in encoder.blocks:  # LayerScale at 1: the blocks, where FP8 runs, carry the signal
            block.ls.gamma.fill_(1.0)
        for block in runner.encoder.blocks:
            block.ls.gamma.fill_(1.0)
    exact = runner(pixels)
    quantized = TileEmbedder(encoder, pool="mean", per_channel=False, precision="fp8", device=torch.device("cpu"),
                             batch_tiles=6, tile_shape=(3, 32, 32), compile="off")
    assert quantized.fp8["emulated"] and "blocks.0.in_proj" in quantized.fp8["fp8"]
    got = quantized(pixels)
    assert got.shape == exact.shape and not torch.equal(got, exact)
    assert torch.nn.functional.cosine_similarity(got, exact, dim=1).min() > 0.99
