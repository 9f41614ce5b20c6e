"""`maefast embed`: tiles -> encoder -> per-site rows in atomic shards; resumes; refuses mixed settings."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import maefast
from maefast.cli import main
from maefast.data import make_tile_loader, open_dataset, read_channel
from maefast.data.synthetic import synth_screen
from maefast.distributed import DistributedContext
from maefast.embedding.config import embed_config
from maefast.embedding.job import read_job, run_embedding
from maefast.errors import UserInputError
from maefast.models.checkpoint import resolve_checkpoint
from tests.helpers import FIXTURES
from tests.test_lock import hold_lock


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    encoder = maefast.create_model("vit_debug_patch8_64", in_chans=3)
    maefast.save_pretrained(encoder, path, channel_names=["Mito", "DNA", "RNA"])
    return path


def test_embeddings_are_the_mean_over_each_sites_tiles(screen, checkpoint, tmp_path):
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--out", str(tmp_path / "emb"),
                 "--shard-size", "5", "--batch-size", "3", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    dataset = open_dataset(screen)
    assert manifest["complete"] and manifest["sites"] == len(dataset)
    assert len(manifest["shards"]) == -(-len(dataset) // 5)
    sites = read_job(tmp_path / "emb")
    assert list(sites["id"]) == list(dataset.ids) and sites.filter(like="feature_").shape[1] == 64
    # one site by hand: its channels in the checkpoint's order, four 64 x 64 tiles, mean of the tile embeddings
    encoder = maefast.from_pretrained(checkpoint).eval()
    row = 3
    record = dataset.table.iloc[row]
    image = np.stack([read_channel(record[f"file_{c}"]) for c in ["Mito", "DNA", "RNA"]])
    tiles = torch.from_numpy(image).unfold(1, 64, 64).unfold(2, 64, 64).permute(1, 2, 0, 3, 4).reshape(4, 3, 64, 64)
    with torch.no_grad():
        expected = encoder.embed(tiles.contiguous()).mean(0)
    got = torch.tensor(sites.filter(like="feature_").iloc[row].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    wells = read_job(tmp_path / "emb", level="well")
    assert len(wells) == len(dataset) // 2 and (wells["sites"] == 2).all()
    one_well = sites[sites["well"] == wells["well"].iloc[0]].filter(like="feature_").mean().to_numpy()
    np.testing.assert_allclose(wells.filter(like="feature_").iloc[0].to_numpy(), one_well, rtol=1e-5)


def test_the_tile_batch_regroups_tiles_without_changing_the_features(screen, checkpoint, tmp_path):
    common = ["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--shard-size", "5",
              "--batch-size", "3", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "loader")]) == 0  # one loader batch (12 tiles) per forward
    assert main([*common, "--out", str(tmp_path / "five"), "--tile-batch", "5"]) == 0  # forwards across batches
    loader, five = read_job(tmp_path / "loader"), read_job(tmp_path / "five")
    assert list(loader["id"]) == list(five["id"])
    np.testing.assert_allclose(five.filter(like="feature_").to_numpy(), loader.filter(like="feature_").to_numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [0, -2, True, 2.5, "many"])
def test_the_config_refuses_a_tile_batch_that_is_not_a_positive_integer(value):
    with pytest.raises(UserInputError, match="tile_batch"):
        embed_config({"checkpoint": "c", "data": "d", "tile_batch": value})


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_tile_batch_is_refused_by_name(value, capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--tile-batch", value])
    assert "--tile-batch" in capsys.readouterr().err


class Interrupt(Exception):
    pass


def test_interrupted_job_resumes_to_the_same_output(screen, checkpoint, tmp_path):
    dataset = open_dataset(screen).select_channels(["Mito", "DNA", "RNA"])
    resolved = resolve_checkpoint(checkpoint)
    encoder = maefast.from_pretrained(resolved)
    settings = embed_config({"checkpoint": str(checkpoint), "data": str(screen), "batch_size": 2, "shard_size": 4})
    cpu = DistributedContext()

    def tiles(subset):
        return make_tile_loader(subset, batch_size=2, crop_size=64)

    run_embedding(encoder, dataset, tmp_path / "straight", settings, resolved, tiles, cpu, show_progress=False)
    calls = {"n": 0}

    def failing_tiles(subset):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt
        return tiles(subset)

    with pytest.raises(Interrupt):
        run_embedding(encoder, dataset, tmp_path / "resumed", settings, resolved, failing_tiles, cpu,
                      show_progress=False)
    assert len(list((tmp_path / "resumed" / "shards").glob("*.parquet"))) == 2
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="is not complete"):
        read_job(tmp_path / "resumed")
    summary = run_embedding(encoder, dataset, tmp_path / "resumed", settings, resolved, tiles, cpu,
                            show_progress=False)
    assert summary["embedded_here"] == summary["num_shards"] - 2 and summary["complete"]
    pd.testing.assert_frame_equal(read_job(tmp_path / "resumed"), read_job(tmp_path / "straight"))
    changed = embed_config({**settings.to_dict(), "pool": "cls"})
    with pytest.raises(UserInputError, match="holds an embedding job with other settings, weights or data: "
                                             "pool: 'mean' -> 'cls'; use another --out"):
        run_embedding(encoder, dataset, tmp_path / "resumed", changed, resolved, tiles, cpu, show_progress=False)


def test_channel_mismatch_is_refused(screen, checkpoint, tmp_path, capsys):
    code = main(["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--out", str(tmp_path / "x"),
                 "--channels", "DNA,RNA", "--no-progress"])
    assert code == 2 and ("the data set's selection ['DNA', 'RNA'] has 2 channels; the model takes in_chans=3; "
                          "choose channels with --channels") in capsys.readouterr().err


def test_a_job_continued_with_other_data_or_weights_is_refused(screen, checkpoint, tmp_path, capsys):
    """A resumed job used to mix the rows of two screens of the same size and report "complete"."""
    def embed(data, weights, out=tmp_path / "emb"):
        return main(["embed", "--checkpoint", str(weights), "--data", str(data), "--out", str(out), "--no-progress"])

    assert embed(screen, checkpoint) == 0
    capsys.readouterr()
    other_screen = synth_screen(tmp_path / "other", layout="rxrx", num_genes=6, replicates=1, num_plates=1,
                                num_experiments=1, controls_per_plate=2, sites_per_well=2, size=128, channels=6,
                                seed=4, progress=False)
    assert len(open_dataset(other_screen)) == len(open_dataset(screen))
    assert embed(other_screen, checkpoint) == 2
    assert re.search(r"holds an embedding job with other settings, weights or data: data.content.bytes: .*"
                     r"data.table_sha256: '\w+' -> '\w+'; use another --out", capsys.readouterr().err)
    torch.manual_seed(1)
    other_weights = tmp_path / "other_weights"
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=3), other_weights,
                            channel_names=["Mito", "DNA", "RNA"])
    assert embed(screen, other_weights) == 2
    assert re.search(r"weights_sha256: '\w+' -> '\w+'", capsys.readouterr().err)
    moved = tmp_path / "moved"
    shutil.copytree(checkpoint, moved)
    assert embed(screen, moved) == 0  # the same weights from another path continue the job


def test_one_embedding_job_per_output_directory(screen, checkpoint, tmp_path, capsys):
    holder = hold_lock(tmp_path / "emb")
    try:
        assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--out", str(tmp_path / "emb"),
                     "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by another maefast job (test holder, pid {holder.pid}" in capsys.readouterr().err


def test_a_bare_timm_weights_file_embeds_with_its_architecture_read_from_it(screen, tmp_path):
    """`maefast embed --checkpoint timm.safetensors --model NAME`: block type, pooling, biases, positions, channels
    and crop size come from the weights (timm's standard ViT, global_pool="avg"); `--set model.KEY=VALUE` sets
    what the name fixes otherwise (here the width and heads of the small test model), recorded in job.json."""
    tensors = load_file(str(Path(FIXTURES) / "timm_standard_golden_avg.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    save_file(state, str(tmp_path / "timm.safetensors"))
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(tmp_path / "timm.safetensors"), "--model", "vit_debug_patch8_64",
                 "--data", str(screen), "--out", str(out), "--set", "model.embed_dim=48", "--set",
                 "model.num_heads=4", "--no-progress"]) == 0
    assert json.loads((out / "job.json").read_text())["model_options"] == {"embed_dim": 48, "num_heads": 4}
    encoder = maefast.create_model("vit_debug_patch8_64", checkpoint_path=state, embed_dim=48, num_heads=4)
    assert (encoder.config.global_pool, encoder.config.block, encoder.config.img_size) == ("avg", "standard", 32)
    record = open_dataset(screen).table.iloc[0]
    image = np.stack([read_channel(record[f"file_{c}"]) for c in open_dataset(screen).channels])
    tiles = torch.from_numpy(image).unfold(1, 32, 32).unfold(2, 32, 32).permute(1, 2, 0, 3, 4).reshape(16, 6, 32, 32)
    expected = encoder.embed(tiles.contiguous()).mean(0)
    got = torch.tensor(read_job(out).filter(like="feature_").iloc[0].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_blocks_in_one_pass_match_embed_blocks_and_resume(screen, checkpoint, tmp_path, monkeypatch):
    from maefast.models.vit import VisionTransformer
    common = ["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--shard-size", "5",
              "--batch-size", "3", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "final")]) == 0
    forwards = []
    original = VisionTransformer.forward_intermediates
    monkeypatch.setattr(VisionTransformer, "forward_intermediates",
                        lambda self, *a, **k: forwards.append(1) or original(self, *a, **k))
    assert main([*common, "--out", str(tmp_path / "blocks"), "--blocks", "all"]) == 0
    dataset = open_dataset(screen)
    # one forward per 12 tiles (3 images of 4 tiles) of each 5-image shard, not one per block
    shards = [min(5, len(dataset) - start) for start in range(0, len(dataset), 5)]
    assert len(forwards) == sum(-(-4 * images // 12) for images in shards)
    sites, final = read_job(tmp_path / "blocks"), read_job(tmp_path / "final")
    assert list(sites["block"]) == [0, 1] * len(dataset) and list(sites["id"][::2]) == list(dataset.ids)
    last = sites[sites["block"] == 1].filter(like="feature_").to_numpy()
    np.testing.assert_allclose(last, final.filter(like="feature_").to_numpy(), rtol=1e-5, atol=1e-6)
    # block 0 by hand: the mean over one site's tiles of embed_blocks
    encoder = maefast.from_pretrained(checkpoint).eval()
    record = dataset.table.iloc[3]
    image = np.stack([read_channel(record[f"file_{c}"]) for c in ["Mito", "DNA", "RNA"]])
    tiles = torch.from_numpy(image).unfold(1, 64, 64).unfold(2, 64, 64).permute(1, 2, 0, 3, 4).reshape(4, 3, 64, 64)
    with torch.no_grad():
        expected = encoder.embed_blocks(tiles.contiguous(), [0])[:, 0].mean(0)
    got = sites[(sites["id"] == record["id"]) & (sites["block"] == 0)].filter(like="feature_").to_numpy()[0]
    torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-4, atol=1e-5)
    wells = read_job(tmp_path / "blocks", level="well")
    assert len(wells) == len(dataset) and sorted(wells["block"].unique()) == [0, 1]
    # resumes (a shard removed is recomputed the same), refuses other blocks in the same folder
    shard = tmp_path / "blocks" / "shards" / "shard-00001.parquet"
    before = pd.read_parquet(shard)
    shard.unlink()
    (tmp_path / "blocks" / "manifest.json").unlink()
    assert main([*common, "--out", str(tmp_path / "blocks"), "--blocks", "all"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(shard), before)
    # job.json holds the resolved indices: the same blocks written another way are the same job
    assert json.loads((tmp_path / "blocks" / "job.json").read_text())["blocks"] == [0, 1]
    assert maefast.embed(checkpoint, screen, tmp_path / "blocks", blocks="0,-1", batch_size=3, shard_size=5,
                         show_progress=False)["complete"]
    with pytest.raises(UserInputError, match="blocks"):
        maefast.embed(checkpoint, screen, tmp_path / "blocks", blocks="last", show_progress=False)
    with pytest.raises(UserInputError, match="block 7 does not exist"):
        maefast.embed(checkpoint, screen, tmp_path / "other", blocks=[7], show_progress=False)
