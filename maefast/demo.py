"""`maefast demo`: the papers' comparison end to end on a synthetic screen anyone can generate.

Generate a screen whose gene perturbations shift morphology by known complex (CORUM), pretrain a small
MAE and CA-MAE, train a masked U-Net and a weakly supervised classifier, embed the screen with each (and
with hand-crafted features and a randomly initialized ViT), build maps (center-scale, PCA, TVN on
controls per plate, mean per gene), and score the recall of known relationships. Then CA-MAE's channel
generalization: embed a second screen in the JUMP layout with fewer channels in another order.
Writes results.csv, results.md and recall_bars.png under --out; every stage resumes where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maefast.data import make_tile_loader, open_dataset
from maefast.data.synthetic import CONTROL_LABEL, synth_screen
from maefast.embedding.api import embed
from maefast.embedding.handcrafted import HandcraftedEmbedder
from maefast.embedding.job import read_job, site_table
from maefast.errors import UserInputError
from maefast.evaluate import build_map, relationship_recall
from maefast.evaluate.plots import plot_recall_bars
from maefast.io import atomic_path
from maefast.models import create_model, save_pretrained
from maefast.train.config import load_config
from maefast.train.loop import train
from maefast.train.state import checkpoint_dirs

THRESHOLDS = ((0.05, 0.95), (0.1, 0.9))


@dataclass(frozen=True)
class Profile:
    genes: int
    replicates: int
    plates: int
    site_size: int
    steps: int
    batch_size: int
    random_model: str = "vit_debug_patch8_64"  # the untrained baseline, the size of the trained ViTs
    # (label, recipe, extra overrides) of the trained systems
    systems: tuple = (("MAE ViT", "debug", ()), ("CA-MAE ViT", "debug_camae", ()),
                      ("MU-Net", "debug_munet", ()), ("Weakly supervised ViT", "debug_wsl", ()))


PROFILES = {
    "fast": Profile(genes=40, replicates=2, plates=2, site_size=128, steps=60, batch_size=12),
    "default": Profile(genes=80, replicates=3, plates=3, site_size=192, steps=600, batch_size=16),
    # a GPU: the papers' ViT-S/16 sizes at 256 x 256 crops
    "gpu": Profile(genes=300, replicates=4, plates=4, site_size=512, steps=3000, batch_size=128,
                   random_model="vit_small_patch16_256", systems=(("MAE ViT-S/16", "mae_vit_small_patch16", ()), ("CA-MAE ViT-S/16", "camae_vit_small_patch16", ()),
                            ("MU-Net", "munet_small", ()), ("Weakly supervised ViT-S/16", "wsl_vit_small_patch16", ()))),
}


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_screens(out: Path, profile: Profile, seed: int) -> tuple[Path, Path]:
    common = dict(num_genes=profile.genes, replicates=profile.replicates, num_plates=profile.plates,
                  num_experiments=1, controls_per_plate=12, sites_per_well=2, size=profile.site_size, seed=seed)
    log(f"synthetic screens: {profile.genes} genes x {profile.replicates} replicates on {profile.plates} plates")
    screen = synth_screen(out / "screen", layout="rxrx", channels=6, **common)
    # the channel-generalization screen: JUMP layout, 16 bit, 5 channels
    jump = synth_screen(out / "screen_jump", layout="jump", channels=5, **{**common, "seed": seed + 1})
    return screen, jump


def train_system(out: Path, recipe: str, screen: Path, profile: Profile, overrides, device: str) -> Path:
    run = out / "runs" / recipe
    if (run / "encoder" / "config.json").exists():
        return run
    settings = [f"data.path={screen}", f"run.max_steps={profile.steps}", f"data.batch_size={profile.batch_size}",
                f"run.checkpoint_every={max(profile.steps // 3, 1)}", f"run.image_every={profile.steps}",
                f"run.device={device}", *overrides]
    if profile.site_size < 256 and not recipe.startswith("debug"):
        raise UserInputError(f"recipe {recipe} needs sites of at least 256 px, this profile renders "
                             f"{profile.site_size}")
    train(load_config(recipe, settings), run, resume=bool(checkpoint_dirs(run)), recipe=recipe)
    return run


def random_vit(out: Path, name: str) -> Path:
    """A randomly initialized ViT (the papers' untrained baseline) saved like a trained encoder."""
    path = out / "runs" / "random_vit"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        save_pretrained(create_model(name, in_chans=6), path,
                        channel_names=list(open_dataset(out / "screen").channels))
    return path


def handcrafted_sites(screen: Path, out: Path) -> pd.DataFrame:
    """Hand-crafted features of every full site, in the embedding job's table format."""
    path = out / "embeddings" / "handcrafted_sites.parquet"
    if path.exists():
        return pd.read_parquet(path)
    dataset = open_dataset(screen)
    embedder = HandcraftedEmbedder(list(dataset.channels))
    loader = make_tile_loader(dataset, batch_size=16, crop_size=min(dataset.image_shape), backend="torch")
    rows, features = [], []
    for batch in loader:
        rows.append(batch["index"].numpy())
        features.append(embedder.embed(batch["pixels"]))
    frame = site_table(dataset.table.iloc[np.concatenate(rows)], np.concatenate(features))
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
    return frame


def score(sites: pd.DataFrame, label: str) -> pd.DataFrame:
    """Map (site-level rows: center-scale, PCA, TVN on each plate's controls; mean per gene), then recall."""
    features = [c for c in sites.columns if c.startswith("feature_") and sites[c].nunique() > 1]
    controls_per_plate = sites[sites["perturbation"] == CONTROL_LABEL].groupby("plate").size().min()
    components = int(min(32, len(features), controls_per_plate - 1))  # TVN needs more controls than dimensions
    gene_map = build_map(sites, perturbation_col="perturbation", control_label=CONTROL_LABEL, batch_col="plate",
                         feature_cols=features, pca_components=components, tvn=True)
    recall = relationship_recall(gene_map, thresholds=THRESHOLDS)
    return recall.assign(method=label)


def embedded_sites(checkpoint: Path, screen: Path, out: Path, name: str, channels=None) -> pd.DataFrame:
    target = out / "embeddings" / name
    embed(checkpoint, screen, target, channels=channels, batch_size=8, shard_size=256, show_progress=False)
    return read_job(target, level="site")


def results_table(recalls: list[pd.DataFrame]) -> pd.DataFrame:
    table = pd.concat(recalls, ignore_index=True)
    columns = [c for c in table.columns if c.startswith("recall_")]
    return table.pivot_table(index="method", columns="source", values=columns[0], sort=False)


def run_demo(out, profile: str | Profile = "default", seed: int = 0, device: str = "auto") -> pd.DataFrame:
    """Runs the comparison (see the module docstring); returns recall per method and source."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UserInputError(f"unknown demo profile {profile!r}; choose one of {sorted(PROFILES)}")
        profile = PROFILES[profile]
    out, start = Path(out), time.time()
    screen, jump = make_screens(out, profile, seed)
    recalls, runs = [], {}
    for label, recipe, overrides in profile.systems:
        log(f"training {label} ({recipe}, {profile.steps} steps)")
        runs[recipe] = train_system(out, recipe, screen, profile, overrides, device)
        log(f"embedding with {label}")
        recalls.append(score(embedded_sites(runs[recipe], screen, out, recipe), label))
    log("hand-crafted features")
    recalls.append(score(handcrafted_sites(screen, out), "Hand-crafted features"))
    log("randomly initialized ViT")
    recalls.append(score(embedded_sites(random_vit(out, profile.random_model), screen, out, "random_vit"), "Random ViT"))
    ca_recipe = next(recipe for _, recipe, _ in profile.systems if "camae" in recipe)
    jump_channels = list(reversed(open_dataset(jump).channels))  # another count and order than in training
    log(f"CA-MAE channel generalization: JUMP screen, channels {jump_channels}")
    sites = embedded_sites(runs[ca_recipe], jump, out, "camae_on_jump", channels=jump_channels)
    recalls.append(score(sites, f"CA-MAE on JUMP ({len(jump_channels)} channels, reordered)"))
    table = results_table(recalls)
    write_results(out, table, recalls)
    log(f"done in {time.time() - start:.0f} s; results in {out / 'results.md'}")
    return table


def write_results(out: Path, table: pd.DataFrame, recalls: list[pd.DataFrame]) -> None:
    full = pd.concat(recalls, ignore_index=True)
    with atomic_path(out / "results.csv") as temporary:
        full.to_csv(temporary, index=False)
    text = "Recall of known relationships at the (0.05, 0.95) percentile thresholds (random: 0.10)\n\n"
    text += markdown_table(table)
    with atomic_path(out / "results.md") as temporary:
        temporary.write_text(text + "\n")
    print(text, flush=True)
    plot_recall_bars({method: rows for method, rows in full.groupby("method", sort=False)}, out / "recall_bars.png")


def markdown_table(table: pd.DataFrame) -> str:
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.iterrows():
        lines.append("| " + " | ".join([str(label)] + [f"{v:.3f}" for v in row]) + " |")
    return "\n".join(lines)
