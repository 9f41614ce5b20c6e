"""`maefast demo`: the papers' comparison end to end on a synthetic screen anyone can generate.

Generate a screen whose gene perturbations shift morphology and stain intensities by known complex
(CORUM), pretrain a small MAE and CA-MAE, train a masked U-Net and a weakly supervised classifier, embed
the screen with each (and with hand-crafted features and a randomly initialized ViT), build maps
(center-scale, PCA, TVN on controls per plate, mean per gene), and score the recall of known
relationships, with intervals and a chance level, against the complexes the screen was rendered from
and the public sources. Then CA-MAE's channel generalization: embed a second screen in the JUMP layout
with fewer channels in another order.

The main screen also holds compounds at three concentrations that mimic the knockout of their target genes
(maefast.data.synthetic), so the drug-target benchmark of RxRx3-core (maefast.evaluate.drug_target) scores
every method; and the ViTs are embedded block by block in one pass (`embed --blocks all`), so the report
gives each block's recall and linear-probe accuracy (plates held out), as Kenyon-Dean et al. (2025) choose
Phenom-2's block.

Two reference features show where the signal is: the mean intensity of each channel (what every model's
per-crop self-standardization removes) and statistics of the self-standardized tiles the encoders see
(what is left for them). Writes results.md, results.csv, recall_bars.png, gene_map_pca.png, blocks.csv,
blocks.png, drug_target.csv and drug_target.png under --out (see maefast.demo_report and docs/demo.md);
every stage resumes where it stopped.

Profiles: "fast" and "default" run on a CPU (tiny ViTs on 64 x 64 crops); "gpu" is the papers' ViT-S/16
setting at 256 x 256 crops for one GPU (what it is expected to cost: `maefast demo --help`, docs/demo.md).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maefast.data import make_tile_loader, open_dataset
from maefast.data.synthetic import CONTROL_LABEL, synth_screen
from maefast.demo_report import (
    GROUND_TRUTH,
    HANDCRAFTED_LABEL,
    INTENSITY_LABEL,
    RANDOM_LABEL,
    TILES_LABEL,
    Scored,
    write_results,
)
from maefast.embedding.api import embed
from maefast.embedding.baselines import handcrafted_sites as baseline_sites
from maefast.embedding.encoder import load_encoder
from maefast.embedding.handcrafted import HandcraftedEmbedder
from maefast.embedding.job import aggregate_wells, read_job, site_table
from maefast.embedding.runner import embeds_blocks
from maefast.errors import UserInputError
from maefast.evaluate import (
    KNOWN_SOURCES,
    aggregate_map,
    compound_gene_maps,
    drug_target_benchmark,
    linear_probe,
    load_compound_targets,
    normalize_embeddings,
    recall_summary,
    score_map,
)
from maefast.io import atomic_path
from maefast.models import create_model, save_pretrained
from maefast.ops import self_standardize
from maefast.tables import BLOCK_COLUMN, feature_columns
from maefast.train.config import load_config
from maefast.train.loop import train
from maefast.train.state import checkpoint_dirs

THRESHOLDS = ((0.05, 0.95), (0.1, 0.9))
MAX_COMPONENTS = 32
# TVN whitens with each plate's control covariance: estimated from at least this many control sites per
# map dimension (with 24 control sites for 23 dimensions it whitened noise: docs/demo.md)
CONTROL_SITES_PER_COMPONENT = 3
PERMUTATIONS = 1000
CONCENTRATIONS = (0.1, 1.0, 10.0)  # the compounds' doses (micromolar)
DRUG_TARGET = dict(repeats=5, n_bootstrap=200)  # draws of the negatives, compound resamples
TILE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TILE_LEVELS = (0.0, 1.0, 2.0)  # fractions of pixels above these standardized values


@dataclass(frozen=True)
class Profile:
    genes: int
    replicates: int
    plates: int
    site_size: int
    steps: int
    batch_size: int
    controls_per_plate: int = 48  # control wells per plate (2 sites each): TVN's reference
    compounds: int = 6  # compounds at each of CONCENTRATIONS, replicated like the genes
    random_model: str = "vit_debug_patch8_64"  # the untrained baseline, the size of the trained ViTs
    # (label, recipe, extra overrides) of the trained systems
    systems: tuple = (("MAE ViT", "debug", ()), ("CA-MAE ViT", "debug_camae", ()),
                      ("MU-Net", "debug_munet", ()), ("Weakly supervised ViT", "debug_wsl", ()))


PROFILES = {
    "fast": Profile(genes=40, replicates=2, plates=2, site_size=128, steps=60, batch_size=12, controls_per_plate=24,
                    compounds=4),
    "default": Profile(genes=80, replicates=3, plates=3, site_size=192, steps=600, batch_size=16),
    # one GPU: the papers' ViT-S/16 systems at 256 x 256 crops
    "gpu": Profile(genes=300, replicates=4, plates=4, site_size=512, steps=3000, batch_size=128,
                   random_model="vit_small_patch16_256",
                   systems=(("MAE ViT-S/16", "mae_vit_small_patch16", ()),
                            ("CA-MAE ViT-S/16", "camae_vit_small_patch16", ()),
                            ("MU-Net", "munet_small", ()),
                            ("Weakly supervised ViT-S/16", "wsl_vit_small_patch16", ()))),
}



def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_screens(out: Path, profile: Profile, seed: int) -> tuple[Path, Path]:
    common = dict(num_genes=profile.genes, replicates=profile.replicates, num_plates=profile.plates,
                  num_experiments=1, controls_per_plate=profile.controls_per_plate, sites_per_well=2,
                  size=profile.site_size, seed=seed)
    log(f"synthetic screens: {profile.genes} genes x {profile.replicates} replicates on {profile.plates} plates, "
        f"{profile.controls_per_plate} control wells per plate, {profile.compounds} compounds at {CONCENTRATIONS}")
    screen = synth_screen(out / "screen", layout="rxrx", channels=6, num_compounds=profile.compounds,
                          concentrations=CONCENTRATIONS, **common)
    # the channel-generalization screen: JUMP layout, 16 bit, 5 channels
    jump = synth_screen(out / "screen_jump", layout="jump", channels=5, **{**common, "seed": seed + 1})
    return screen, jump


def complex_pairs(screen: Path) -> Path:
    """The screen's ground truth as a relationship file: every pair of genes rendered with one complex."""
    path = screen / f"{GROUND_TRUTH}.csv"
    if not path.exists():
        genes = pd.read_csv(screen / "genes.csv")
        pairs = [(a, b) for _, group in genes.groupby("complex") for a in group["gene"] for b in group["gene"] if a < b]
        with atomic_path(path) as temporary:
            pd.DataFrame(pairs, columns=["entity1", "entity2"]).to_csv(temporary, index=False)
    return path


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
    summary = train(load_config(recipe, settings), run, resume=bool(checkpoint_dirs(run)), recipe=recipe)
    if summary["step"] < profile.steps:  # stopped by SIGTERM: checkpointed, resumable
        raise UserInputError(f"training {recipe} stopped at step {summary['step']} of {profile.steps}; run the "
                             "demo again with the same --out to resume")
    return run


def random_vit(out: Path, name: str) -> Path:
    """A randomly initialized ViT (the papers' untrained baseline) saved like a trained encoder."""
    path = out / "runs" / "random_vit"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        save_pretrained(create_model(name, in_chans=6), path,
                        channel_names=list(open_dataset(out / "screen").channels))
    return path


def cached_sites(path: Path, compute) -> pd.DataFrame:
    if path.exists():
        return pd.read_parquet(path)
    frame = compute()
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
    return frame


def handcrafted_sites(screen: Path, out: Path) -> pd.DataFrame:
    """Hand-crafted features of every full site, in the embedding job's table format."""
    return baseline_sites(screen, out / "embeddings" / "handcrafted")


def channel_intensity_sites(handcrafted: pd.DataFrame, channels: list[str]) -> pd.DataFrame:
    """The mean intensity of each channel (columns of the hand-crafted table): whole-stain brightness."""
    names = HandcraftedEmbedder(channels).feature_names
    columns = feature_columns(handcrafted)  # in the order of names
    wanted = [columns[names.index(f"{channel}_intensity_mean")] for channel in channels]
    metadata = [c for c in handcrafted.columns if c not in columns]
    return handcrafted[metadata + wanted]


def tile_statistics(pixels: torch.Tensor) -> np.ndarray:
    """(N, C, s, s) tiles -> (N, C * 8): per channel of each self-standardized tile, the TILE_QUANTILES and
    the fractions of pixels above TILE_LEVELS: what of a tile's pixel distribution the encoders receive."""
    z = self_standardize(pixels).flatten(2).cpu().numpy()
    quantiles = np.moveaxis(np.quantile(z, TILE_QUANTILES, axis=2), 0, 2)
    fractions = np.stack([(z > level).mean(2) for level in TILE_LEVELS], axis=2)
    return np.concatenate([quantiles, fractions], axis=2).reshape(len(z), -1)


def tile_statistics_sites(screen: Path, out: Path, tile: int) -> pd.DataFrame:
    """tile_statistics of every `tile` x `tile` tile, averaged per site (as the embedding job averages tiles)."""
    def compute():
        dataset = open_dataset(screen)
        loader = make_tile_loader(dataset, batch_size=16, crop_size=tile, backend="torch")
        sums, counts = {}, {}
        for batch in loader:
            for row, values in zip(batch["index"].tolist(), tile_statistics(batch["pixels"])):
                sums[row] = sums.get(row, 0) + values
                counts[row] = counts.get(row, 0) + 1
        rows = sorted(sums)
        return site_table(dataset.table.iloc[rows], np.stack([sums[r] / counts[r] for r in rows]))
    return cached_sites(out / "embeddings" / f"tile_statistics_{tile}.parquet", compute)


def normalized_sites(sites: pd.DataFrame) -> pd.DataFrame:
    """Site rows center-scaled, PCA-reduced and TVN-whitened on each plate's control sites (the map's first
    step); constant features dropped, components limited by the control sites available."""
    features = [c for c in feature_columns(sites) if sites[c].nunique() > 1]
    control_sites = int(sites[sites["perturbation"] == CONTROL_LABEL].groupby("plate").size().min())
    components = int(min(MAX_COMPONENTS, len(features), control_sites // CONTROL_SITES_PER_COMPONENT))
    return normalize_embeddings(sites, perturbation_col="perturbation", control_label=CONTROL_LABEL,
                                batch_col="plate", feature_cols=features, pca_components=components, tvn=True)


def genes_only(sites: pd.DataFrame) -> pd.DataFrame:
    """The gene knockout and control rows (compound rows have a concentration)."""
    return sites if "concentration" not in sites.columns else sites[sites["concentration"].isna()]


def final_block(sites: pd.DataFrame) -> pd.DataFrame:
    """The last block's rows of block-wise embeddings (the final embedding), without the block column."""
    if BLOCK_COLUMN not in sites.columns:
        return sites
    return sites[sites[BLOCK_COLUMN] == sites[BLOCK_COLUMN].max()].drop(columns=BLOCK_COLUMN).reset_index(drop=True)


def recall_of(normalized: pd.DataFrame, sources: list) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(gene map, recall at every threshold pair, recall_summary at the first) of normalized gene rows."""
    gene_map = aggregate_map(normalized, perturbation_col="perturbation", drop_labels=[CONTROL_LABEL])
    scores = score_map(gene_map, sources=sources, thresholds=THRESHOLDS)
    return gene_map, scores.recall, recall_summary(gene_map, scores, THRESHOLDS[0], permutations=PERMUTATIONS, seed=0)


def probe_of(normalized: pd.DataFrame) -> dict:
    """Linear probe of the gene on normalized well embeddings (of normalized gene rows), each plate held out in
    turn."""
    return linear_probe(aggregate_wells(normalized), perturbation_col="perturbation", holdout_col="plate",
                        control_label=CONTROL_LABEL, n_bootstrap=PERMUTATIONS)


def drug_target_of(sites: pd.DataFrame, screen: Path) -> pd.DataFrame | None:
    """The drug-target benchmark of the screen's compounds (None for a screen without them)."""
    targets = screen / "compound_targets.csv"
    if not targets.exists() or "concentration" not in sites.columns:
        return None
    maps = compound_gene_maps(normalized_sites(sites), perturbation_col="perturbation",
                              concentration_col="concentration", control_label=CONTROL_LABEL)
    return drug_target_benchmark(*maps, load_compound_targets(targets), **DRUG_TARGET)


def score(sites: pd.DataFrame, label: str, sources: list, kind: str, screen: Path) -> Scored:
    """Map (site rows: center-scale, PCA, TVN on each plate's controls; mean per gene), recall with intervals
    and the permutation chance level, the drug-target benchmark and, of block-wise embeddings, recall and
    linear probe per block. kind: "learned", "baseline" or "reference" (for the report)."""
    final = final_block(sites)
    normalized_final = normalized_sites(genes_only(final))
    gene_map, recall, summary = recall_of(normalized_final, sources)
    blocks = None
    if BLOCK_COLUMN in sites.columns:
        rows, last = [], sites[BLOCK_COLUMN].max()
        for block, block_sites in sites.groupby(BLOCK_COLUMN, sort=True):
            if block == last:  # the final embedding, scored above (sources[0] is the ground truth)
                normalized, truth = normalized_final, summary.iloc[0]
            else:
                normalized = normalized_sites(genes_only(block_sites.drop(columns=BLOCK_COLUMN).reset_index(drop=True)))
                truth = recall_of(normalized, sources[:1])[2].iloc[0]
            rows.append({"block": int(block), **{k: truth[k] for k in ("recall", "recall_low", "recall_high",
                                                                        "p_value")},
                         **probe_of(normalized)})
        blocks = pd.DataFrame(rows).assign(method=label)
    drug = drug_target_of(final, screen)
    return Scored(label, kind, gene_map, recall.assign(method=label), summary.assign(method=label), blocks,
                  None if drug is None else drug.assign(method=label))


def embedded_sites(checkpoint: Path, screen: Path, out: Path, name: str, channels=None,
                   blocks: str | None = None) -> pd.DataFrame:
    target = out / "embeddings" / name
    embed(checkpoint, screen, target, channels=channels, batch_size=8, shard_size=256, show_progress=False,
          blocks=blocks)
    return read_job(target, level="site")


def blockwise(checkpoint: Path) -> bool:
    """Whether the checkpoint's embedder is a ViT, whose blocks are embedded one by one (not the MU-Net)."""
    return embeds_blocks(load_encoder(checkpoint)[0])


def resolve_profile(profile: str | Profile, steps: int | None = None) -> Profile:
    if not isinstance(profile, Profile):
        if profile not in PROFILES:
            raise UserInputError(f"unknown demo profile {profile!r}; choose one of {sorted(PROFILES)}")
        profile = PROFILES[profile]
    if steps is None:
        return profile
    if steps < 1:
        raise UserInputError(f"steps must be at least 1, got {steps}")
    return dataclasses.replace(profile, steps=steps)


def run_demo(out, profile: str | Profile = "default", seed: int = 0, device: str = "auto",
             steps: int | None = None) -> pd.DataFrame:
    """Runs the comparison (see the module docstring); returns recall at (0.05, 0.95) per method and source.

    steps: training steps per system instead of the profile's (the trained systems need more than the
    CPU profiles give them to carry signal: docs/demo.md); use a new `out` for another value.
    """
    profile = resolve_profile(profile, steps)
    out, start = Path(out), time.time()
    screen, jump = make_screens(out, profile, seed)
    sources = [complex_pairs(screen), *KNOWN_SOURCES]
    scored, runs = [], {}
    for label, recipe, overrides in profile.systems:
        log(f"training {label} ({recipe}, {profile.steps} steps)")
        runs[recipe] = train_system(out, recipe, screen, profile, overrides, device)
        every_block = blockwise(runs[recipe])
        log(f"embedding with {label}" + (", every block" if every_block else ""))
        sites = embedded_sites(runs[recipe], screen, out, recipe, blocks="all" if every_block else None)
        scored.append(score(sites, label, sources, "learned", screen))
    log("hand-crafted features, channel intensities, tile statistics")
    handcrafted = handcrafted_sites(screen, out)
    scored.append(score(handcrafted, HANDCRAFTED_LABEL, sources, "baseline", screen))
    log("randomly initialized ViT")
    random_path = random_vit(out, profile.random_model)
    scored.append(score(embedded_sites(random_path, screen, out, "random_vit", blocks="all"), RANDOM_LABEL, sources,
                        "baseline", screen))
    channels = list(open_dataset(screen).channels)
    scored.append(score(channel_intensity_sites(handcrafted, channels), INTENSITY_LABEL, sources, "reference",
                        screen))
    tile = create_model(profile.random_model).config.img_size
    scored.append(score(tile_statistics_sites(screen, out, tile), TILES_LABEL, sources, "reference", screen))
    ca_recipe = next(recipe for _, recipe, _ in profile.systems if "camae" in recipe)
    jump_channels = list(reversed(open_dataset(jump).channels))  # another count and order than in training
    log(f"CA-MAE channel generalization: JUMP screen, channels {jump_channels}")
    sites = embedded_sites(runs[ca_recipe], jump, out, "camae_on_jump", channels=jump_channels)
    scored.append(score(sites, f"CA-MAE on JUMP ({len(jump_channels)} channels, reordered)",
                        [complex_pairs(jump), *KNOWN_SOURCES], "learned", jump))
    write_results(out, scored, describe_setting(profile, (screen, jump), device, tile))
    log(f"done in {time.time() - start:.0f} s; results in {out / 'results.md'}")
    return pd.concat([s.summary for s in scored]).pivot_table(index="method", columns="source", values="recall",
                                                             sort=False)


def describe_setting(profile: Profile, screens: tuple[Path, Path], device: str, tile: int) -> dict:
    """What the report says about the run (complexes_main / _jump: gene -> complex of each screen)."""
    genes = [pd.read_csv(screen / "genes.csv") for screen in screens]
    crops_per_image = load_config(profile.systems[0][1]).data.crops_per_image
    return dict(genes=profile.genes, complexes=genes[0]["complex"].nunique(), replicates=profile.replicates,
                compounds=profile.compounds, concentrations=CONCENTRATIONS,
                plates=profile.plates, controls_per_plate=profile.controls_per_plate, site_size=profile.site_size,
                steps=profile.steps, batch_size=profile.batch_size, crops_per_image=crops_per_image,
                device=device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu", tile=tile,
                thresholds=THRESHOLDS[0], permutations=PERMUTATIONS,
                complexes_main=genes[0].set_index("gene")["complex"],
                complexes_jump=genes[1].set_index("gene")["complex"])
