"""The embedding runner: compiled with fixed shapes (padded batches) it gives the eager features; the
attention choice of a job is recorded and reused when the job resumes."""
import json

import pytest
import torch

from maefast import create_model
from maefast.embedding.runner import ATTENTION_FILE, TileEmbedder
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
