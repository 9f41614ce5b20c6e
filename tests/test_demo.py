"""`maefast demo` on a tiny profile: what the report claims, checked against what the run computed."""
import re

import numpy as np
import pandas as pd
import pytest

from maefast.cli.demo import GPU_EXPECTATIONS
from maefast.demo import PROFILES, Profile, run_demo, tile_statistics
from maefast.demo_report import GROUND_TRUTH, Scored, explanation, report, verdicts
from maefast.errors import UserInputError

TINY = Profile(genes=24, replicates=2, plates=2, site_size=128, steps=8, batch_size=8, controls_per_plate=16)
LEARNED = ["MAE ViT", "CA-MAE ViT", "MU-Net", "Weakly supervised ViT", "CA-MAE on JUMP (5 channels, reordered)"]
OTHERS = ["Hand-crafted features", "Random ViT", "Channel mean intensities", "Self-standardized tile statistics"]
SOURCES = [GROUND_TRUTH, "CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_report_states_what_it_computed(tmp_path, capsys):
    table = run_demo(tmp_path, TINY)
    assert sorted(table.index) == sorted(LEARNED + OTHERS) and list(table.columns) == SOURCES
    results = pd.read_csv(tmp_path / "results.csv")
    text = (tmp_path / "results.md").read_text()
    # every score with its pair count and interval, as in results.csv
    main = results[results["method"] == "MAE ViT"].set_index("source")
    for source in SOURCES:
        assert f"{source} (n = {main.loc[source, 'n_pairs']})" in text
    for row in results.itertuples():
        if row.n_pairs:
            assert row.recall_low <= row.recall <= row.recall_high
            assert f"{row.recall:.3f} [{row.recall_low:.2f}, {row.recall_high:.2f}]" in text
    assert (results.loc[results["source"] == GROUND_TRUTH, "n_pairs"] > 0).all()
    assert f"`{GROUND_TRUTH}` holds the pairs" in text and "{" not in text  # every placeholder filled
    # the renderer gives each complex one phenotype: the hand-crafted features find it, above chance
    truth = results[results["source"] == GROUND_TRUTH].set_index("method")
    assert truth.loc["Hand-crafted features", "p_value"] < 0.05
    assert truth.loc["Hand-crafted features", "recall_low"] > truth.loc["Random ViT", "recall"]
    assert re.search(r"- Hand-crafted features: [0-9.]+ \[[0-9., ]+\], p = [0-9.]+: above chance", text)
    # each trained system is compared with chance and the random ViT, in the words its numbers call for
    random_recall = truth.loc["Random ViT", "recall"]
    for method in LEARNED[:4]:
        line = next(line for line in text.splitlines() if line.startswith(f"- {method}: "))
        assert ("above chance" in line) == (truth.loc[method, "p_value"] < 0.05)
        assert ("**below chance**" in line) == (truth.loc[method, "p_below"] < 0.05)
        assert ("**at or below the random ViT**" in line) == (truth.loc[method, "recall"] <= random_recall)
    weak = [m for m in LEARNED[:4] if truth.loc[m, "p_value"] >= 0.05 or truth.loc[m, "recall"] <= random_recall]
    assert ("## Why " in text) == bool(weak)
    # block by block: every ViT's blocks, the last one's recall is the main table's
    blocks = pd.read_csv(tmp_path / "blocks.csv")
    assert sorted(blocks["method"].unique()) == sorted(["MAE ViT", "CA-MAE ViT", "Weakly supervised ViT", "Random ViT"])
    assert (blocks.groupby("method")["block"].apply(list) == pd.Series([[0, 1]] * 4, index=sorted(
        blocks["method"].unique()))).all()
    last = blocks[blocks["block"] == 1].set_index("method")
    for method in last.index:
        assert last.loc[method, "recall"] == pytest.approx(truth.loc[method, "recall"])
    row = blocks.iloc[0]
    assert (f"| {row['method']} | {row['block']} | {row['recall']:.3f} [{row['recall_low']:.2f}, "
            f"{row['recall_high']:.2f}] | {row['balanced_accuracy']:.3f} [") in text
    assert "## Block by block" in text
    assert re.search(r"- MAE ViT: the probe is best at (the last block|block 0, not)", text)
    # the drug-target benchmark: every method, every concentration and the best
    drug = pd.read_csv(tmp_path / "drug_target.csv")
    assert set(drug["method"]) == set(LEARNED[:4] + OTHERS)
    assert list(drug[drug["method"] == "MAE ViT"]["concentration"]) == ["0.1", "1.0", "10.0", "best"]
    hand = drug[(drug["method"] == "Hand-crafted features") & (drug["concentration"] == "best")].iloc[0]
    assert "| Hand-crafted features | " in text.split("## Drug-target benchmark")[1]
    assert f"{hand['average_precision']:.3f} [{hand['average_precision_low']:.2f}" in text
    assert hand["auroc"] > 0.5  # the compounds are rendered as their targets' knockouts
    for name in ("recall_bars.png", "gene_map_pca.png", "blocks.png", "drug_target.png"):
        image = (tmp_path / name).read_bytes()
        assert image[:8] == PNG_MAGIC and len(image) > 20000
    checkpoints = sorted((tmp_path / "runs").rglob("model.safetensors"))
    again = run_demo(tmp_path, TINY)  # resumes: nothing is trained or embedded again
    pd.testing.assert_frame_equal(again, table)
    assert sorted((tmp_path / "runs").rglob("model.safetensors")) == checkpoints


def summary(recall, p_value, n=40, low=None, high=None, p_below=None):
    return pd.DataFrame([dict(source=GROUND_TRUTH, n_pairs=n, recall=recall, recall_low=recall - 0.05 if low is None
                              else low, recall_high=recall + 0.05 if high is None else high, p_value=p_value,
                              p_below=1.0 - p_value if p_below is None else p_below)])


def scored(label, kind, recall, p_value, **bounds):
    return Scored(label, kind, pd.DataFrame(), pd.DataFrame(), summary(recall, p_value, **bounds))


SETTING = dict(genes=24, complexes=7, replicates=2, plates=2, controls_per_plate=16, site_size=128, steps=8,
               batch_size=8, crops_per_image=2, device="cpu", tile=64, thresholds=(0.05, 0.95), permutations=1000)


def baselines(intensity_p=0.001, tiles_p=0.001):
    return [scored("Hand-crafted features", "baseline", 0.6, 0.001), scored("Random ViT", "baseline", 0.12, 0.3),
            scored("Channel mean intensities", "reference", 0.5, intensity_p),
            scored("Self-standardized tile statistics", "reference", 0.3, tiles_p)]


def test_verdicts_follow_the_numbers():
    methods = [scored("A", "learned", 0.08, 0.7), scored("B", "learned", 0.14, 0.2),
               scored("C", "learned", 0.3, 0.001, low=0.2), scored("D", "learned", 0.2, 0.01, low=0.1), *baselines()]
    lines = {line.split(":")[0][2:]: line for line in verdicts(methods, SETTING).splitlines() if line.startswith("- ")}
    assert "**at chance**; **at or below the random ViT** (0.120)" in lines["A"]
    below = verdicts([scored("E", "learned", 0.035, 0.998, low=0.01, high=0.07, p_below=0.004), *baselines()],
                     SETTING)  # the MAE: its interval lies below the 0.10 chance level
    assert "- E: 0.035 [0.01, 0.07], p = 0.998: **below chance** (p of a recall this low = 0.004)" in below
    assert "**at chance**; above the random ViT (0.120) but within reach" in lines["B"]
    assert lines["C"].endswith("above chance; above the random ViT (0.120)")
    assert "above chance; above the random ViT (0.120) but within reach" in lines["D"]
    assert "Random ViT" not in lines  # the baseline is stated once, above the list
    why = explanation(methods, SETTING)
    assert why.startswith("## Why A, B are not above chance or the random baseline") and "C" not in why.splitlines()[0]
    assert "recalls 0.500 (p = 0.001)" in why and "recall 0.300 (p = 0.001)" in why
    assert "Whole-stain brightness carries signal" in why and "still carries signal" in why
    assert "(6 of its 12 phenotype parameters)" in why
    assert ("C (0.300, p = 0.001) and D (0.200, p = 0.010), trained as long on the same self-standardized crops, "
            "are above chance") in why
    quiet = explanation(baselines(intensity_p=0.5, tiles_p=0.5) + [scored("A", "learned", 0.08, 0.7)], SETTING)
    assert "alone carries no signal above chance" in quiet and "Little survives self-standardization" in quiet
    assert explanation([scored("C", "learned", 0.3, 0.001), *baselines()], SETTING) == ""
    assert "## Why" not in report([scored("C", "learned", 0.3, 0.001), *baselines()], SETTING)


def test_tile_statistics_and_interrupted_training(tmp_path, monkeypatch):
    import torch
    tiles = torch.randint(0, 255, (3, 2, 16, 16), dtype=torch.uint8)
    stats = tile_statistics(tiles).reshape(3, 2, 8)
    z = (tiles.double() / 255).flatten(2)
    z = ((z - z.mean(2, keepdim=True)) / (z.var(2, unbiased=False, keepdim=True) + 1e-5).sqrt()).numpy()
    np.testing.assert_allclose(stats[..., 2], np.median(z, axis=2), atol=1e-5)
    np.testing.assert_allclose(stats[..., 5], (z > 0).mean(2), atol=1e-6)
    import maefast.demo as demo
    monkeypatch.setattr(demo, "train", lambda *args, **kwargs: {"step": 3})
    with pytest.raises(UserInputError, match="stopped at step 3 of 8.*resume"):
        demo.train_system(tmp_path, "debug", tmp_path, TINY, (), "cpu")


def test_gpu_expectations_describe_the_gpu_profile():
    gpu = PROFILES["gpu"]
    text = " ".join(GPU_EXPECTATIONS.split())  # the same words, without the line breaks
    assert "expected, not measured" in text
    assert f"{gpu.genes} genes x {gpu.replicates} replicates on {gpu.plates} plates" in text
    assert f"{gpu.controls_per_plate} control wells per plate" in text
    assert f"{gpu.steps:,} steps of {gpu.batch_size} images" in text
    sites = gpu.genes * gpu.replicates * 2 + gpu.plates * gpu.controls_per_plate * 2
    assert f"{sites:,} sites of {gpu.site_size} x {gpu.site_size} px" in text


def test_steps_override_and_unknown_profile():
    from maefast.demo import resolve_profile
    fast = resolve_profile("fast", steps=5)
    assert fast.steps == 5 and fast.genes == PROFILES["fast"].genes and PROFILES["fast"].steps == 60
    assert resolve_profile(TINY) is TINY
    with pytest.raises(UserInputError, match="steps must be at least 1"):
        resolve_profile("default", steps=0)
    with pytest.raises(UserInputError, match="unknown demo profile 'huge'"):
        resolve_profile("huge")
