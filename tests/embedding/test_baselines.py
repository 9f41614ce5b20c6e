"""The baselines beside every benchmark: the random-weights encoder of the same architecture and the
hand-crafted features, computed on the same screen and added as rows of a benchmark's table."""
import numpy as np
import pandas as pd
import torch

import maefast
from maefast.cli import main
from maefast.data.synthetic import synth_screen
from maefast.embedding.baselines import baseline_embeddings, random_weights_checkpoint
from maefast.embedding.handcrafted import HandcraftedEmbedder
from maefast.models.checkpoint import from_pretrained, read_config


def test_random_weights_copy_the_architecture_not_the_weights(tmp_path):
    trained = maefast.create_model("vit_debug_patch8_64", in_chans=3, depth=3)
    maefast.save_pretrained(trained, tmp_path / "trained", channel_names=["DNA", "ER", "RNA"])
    first = random_weights_checkpoint(tmp_path / "trained", tmp_path / "random_a", seed=1)
    second = random_weights_checkpoint(tmp_path / "trained", tmp_path / "random_b", seed=1)
    random = from_pretrained(first)
    assert random.model_name == trained.model_name and random.config == trained.config
    assert read_config(first)["channel_names"] == ["DNA", "ER", "RNA"]
    state, trained_state = random.state_dict(), trained.state_dict()
    assert not torch.equal(state["blocks.0.in_proj.weight"], trained_state["blocks.0.in_proj.weight"])
    again = from_pretrained(second).state_dict()
    assert torch.equal(state["blocks.0.in_proj.weight"], again["blocks.0.in_proj.weight"])


def test_baseline_rows_in_the_drug_target_table(tmp_path):
    screen = synth_screen(tmp_path / "screen", layout="rxrx", num_genes=8, replicates=2, num_plates=2,
                          num_experiments=1, controls_per_plate=6, sites_per_well=1, size=64, channels=3,
                          num_compounds=3, concentrations=(1.0, 10.0), workers=1, progress=False)
    handcrafted = baseline_embeddings("handcrafted", checkpoint=None, data=screen, out=tmp_path / "b", level="site")
    assert handcrafted.filter(like="feature_").shape[1] == HandcraftedEmbedder(["DNA", "ER", "RNA"]).embed_dim
    assert handcrafted["concentration"].notna().sum() == 3 * 2 * 2
    wells = baseline_embeddings("handcrafted", checkpoint=None, data=screen, out=tmp_path / "b")
    assert len(wells) == len(handcrafted) and "concentration" in wells.columns  # one site per well
    handcrafted.to_parquet(tmp_path / "model.parquet")
    trained = maefast.create_model("vit_debug_patch8_64", in_chans=3, depth=3)
    maefast.save_pretrained(trained, tmp_path / "trained", channel_names=["DNA", "ER", "RNA"])
    out = tmp_path / "dt"
    assert main(["drug-target", "--embeddings", str(tmp_path / "model.parquet"), "--label", "model",
                 "--perturbation-col", "perturbation", "--control", "EMPTY", "--pca-components", "0", "--no-tvn",
                 "--pairs", str(screen / "compound_targets.csv"), "--bootstrap", "20", "--min-negatives", "4",
                 "--repeats", "2", "--baseline", "random",
                 "--baseline", "handcrafted", "--data", str(screen), "--checkpoint", str(tmp_path / "trained"),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "drug_target.csv")
    assert list(dict.fromkeys(table["label"])) == ["model", "random weights", "hand-crafted features"]
    model, baseline = (table[table["label"] == name].reset_index(drop=True)
                       for name in ("model", "hand-crafted features"))
    pd.testing.assert_frame_equal(model.drop(columns="label"), baseline.drop(columns="label"))
    random_sites = pd.read_parquet(out / "baselines" / "random" / "embeddings" / "shards" / "shard-00000.parquet")
    assert random_sites.filter(like="feature_").shape[1] == 64 and np.isfinite(random_sites.filter(
        like="feature_").to_numpy()).all()
