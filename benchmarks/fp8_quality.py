"""FP8's quality gates, measured: the same training and embedding in bf16 and in FP8 on a synthetic screen.

    python -m benchmarks.fp8_quality                 # GPU: MAE ViT-L/8 (FP8 at maefast's default threshold)
    python -m benchmarks.fp8_quality --quick         # CPU: the debug MAE, torchao's emulation (quality, not speed)

What a user runs, twice from the same seed: `maefast.train` with run.precision=bf16 and =fp8 (the same steps,
data order and masks), then the bf16-trained encoder embeds the screen with precision bf16 and fp8
(`maefast.embed`). Gates (issue 19), one record each with `passed`:
  loss       the FP8 run's final loss (mean over its last logged interval) within 1% of the bf16 run's
  cosine     every tile's FP8 embedding at cosine similarity >= 0.999 to its bf16 embedding (also reported: the
             same of the embeddings centered on the tiles' mean, which a briefly trained encoder needs)
  recall     the FP8 map's recall of the screen's ground-truth complexes inside the bf16 map's 95% interval
             (maps as the demo builds them: center-scale, PCA, TVN on each plate's controls, mean per gene)
On a CPU FP8 is torchao's emulation (the same rounding, fp32 matmuls) and bf16 is CPU autocast: the records
say "CPU emulation"; they are quality figures, not GPU ones. --quick lowers FP8's size threshold to the debug
model's width (MAEFAST_FP8_MIN_FEATURES=64) so that its GEMMs convert.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import common
from maefast.data import make_tile_loader, open_dataset
from maefast.data.synthetic import synth_screen
from maefast.demo import complex_pairs, score
from maefast.embedding.api import embed
from maefast.embedding.encoder import load_encoder
from maefast.embedding.job import read_job
from maefast.embedding.runner import PooledEncoder, TileEmbedder
from maefast.job_setup import RunSetup
from maefast.models.attention_setup import configure_attention
from maefast.train.config import load_config
from maefast.train.loop import train
from maefast.train.state import checkpoint_dirs

LOSS_TOLERANCE, COSINE_GATE = 0.01, 0.999
GPU = dict(recipe="mae_vit_large_patch8", steps=150, batch_size=32, log_every=25, genes=40, replicates=2, plates=2,
           controls=24, site_size=512)
QUICK = dict(recipe="debug", steps=60, batch_size=12, log_every=20, genes=40, replicates=2, plates=2, controls=24,
             site_size=128)


def train_run(screen: Path, out: Path, settings: dict, precision: str, device: str) -> dict:
    overrides = [f"data.path={screen}", f"run.max_steps={settings['steps']}",
                 f"data.batch_size={settings['batch_size']}", f"run.log_every={settings['log_every']}",
                 f"run.checkpoint_every={settings['steps']}", f"run.image_every={settings['steps']}",
                 f"run.precision={precision}", f"run.device={device}", "data.num_workers=2"]
    return train(load_config(settings["recipe"], overrides), out, show_progress=False, recipe=settings["recipe"],
                 resume=bool(checkpoint_dirs(out)))  # a --workdir run already done is read back


def tile_cosines(encoder_dir: Path, screen: Path, device: torch.device, tiles: int = 256) -> dict[str, np.ndarray]:
    """Per-tile cosine similarity of FP8 embeddings to bf16 ones, on up to `tiles` tiles of the screen: of the
    embeddings ("raw", the gate) and of their deviations from the tiles' mean embedding ("centered", what a
    map's center-scaling keeps: a shared component, large in a briefly trained encoder, does not hide FP8's
    error there)."""
    encoder, _ = load_encoder(encoder_dir)
    size = encoder.config.img_size
    dataset = open_dataset(screen)
    loader = make_tile_loader(dataset, batch_size=8, crop_size=size, device=device, backend="torch")
    pixels = torch.cat([batch["pixels"] for _, batch in zip(range(max(1, tiles // 8)), loader)])[:tiles]
    embeddings = {}
    for precision in ("bf16", "fp8"):
        encoder, _ = load_encoder(encoder_dir)
        configure_attention(encoder, "sdpa")
        pooled = PooledEncoder(encoder, pool="mean", per_channel=False,
                               setup=RunSetup.resolve(device, precision, compile=False))
        embeddings[precision] = TileEmbedder(pooled, min(64, len(pixels)), compile=False)(pixels)
    fp8, bf16 = embeddings["fp8"], embeddings["bf16"]
    center = bf16.mean(dim=0, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity
    return {"raw": cosine(fp8, bf16, dim=1).cpu().numpy(),
            "centered": cosine(fp8 - center, bf16 - center, dim=1).cpu().numpy()}


def embedded_sites(encoder_dir: Path, screen: Path, out: Path, precision: str) -> pd.DataFrame:
    """`maefast embed` of the screen at `precision`: one row per site."""
    target = out / f"embed_{precision}"
    embed(encoder_dir, screen, target, batch_size=8, shard_size=256, show_progress=False, precision=precision,
          attention="sdpa")
    return read_job(target, level="site")


def recall(sites: pd.DataFrame, label: str, source: Path) -> dict:
    """Recall of the ground-truth pairs in `source` and its 95% interval, on the map the demo builds."""
    table = score(sites, label, [source], "learned").summary
    row = table[table["source"] == source.stem].iloc[0]
    return {"recall": float(row["recall"]), "low": float(row["recall_low"]), "high": float(row["recall_high"]),
            "pairs": int(row["n_pairs"])}


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--workdir", default=None, help="where the screen and runs go (default: temporary)")
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    settings = QUICK if args.quick else GPU
    if args.quick:
        os.environ.setdefault("MAEFAST_FP8_MIN_FEATURES", "64")
    rec = common.Recorder("fp8_quality", device, args.json_out)
    common.stop_on_sigterm()
    label = "CPU emulation" if device.type != "cuda" else "GPU"
    context = {"case": settings["recipe"], "fp8": label}
    with tempfile.TemporaryDirectory(prefix="fp8_quality_") as scratch:
        work = Path(args.workdir or scratch)
        try:
            screen = work / "screen"
            if not (screen / "genes.csv").exists():
                synth_screen(screen, layout="rxrx", channels=6, num_genes=settings["genes"],
                             replicates=settings["replicates"], num_plates=settings["plates"], num_experiments=1,
                             controls_per_plate=settings["controls"], sites_per_well=2, size=settings["site_size"],
                             seed=0, progress=False)
            runs = {p: train_run(screen, work / f"train_{p}", settings, p, device.type) for p in ("bf16", "fp8")}
            losses = {p: runs[p]["final_loss"] for p in runs}
            difference = abs(losses["fp8"] - losses["bf16"]) / abs(losses["bf16"])
            rec.emit(kind="quality", gate="loss", **context, value=round(difference, 5), unit="relative difference",
                     threshold=LOSS_TOLERANCE, passed=bool(difference <= LOSS_TOLERANCE), steps=settings["steps"],
                     losses={p: round(v, 6) for p, v in losses.items()})
            encoder_dir = work / "train_bf16" / "encoder"
            cosines = tile_cosines(encoder_dir, screen, device)
            raw, centered = cosines["raw"], cosines["centered"]
            rec.emit(kind="quality", gate="cosine", **context, value=round(float(raw.min()), 6),
                     unit="min cosine per tile (fp8 vs bf16)", threshold=COSINE_GATE,
                     passed=bool(raw.min() >= COSINE_GATE), mean=round(float(raw.mean()), 6), tiles=len(raw),
                     centered_min=round(float(centered.min()), 6), centered_mean=round(float(centered.mean()), 6))
            source = complex_pairs(screen)
            recalls = {}
            for precision in ("bf16", "fp8"):
                recalls[precision] = recall(embedded_sites(encoder_dir, screen, work, precision), precision, source)
            inside = recalls["bf16"]["low"] <= recalls["fp8"]["recall"] <= recalls["bf16"]["high"]
            rec.emit(kind="quality", gate="recall", **context, value=round(recalls["fp8"]["recall"], 4),
                     unit="recall of the ground-truth complexes (fp8)", passed=bool(inside),
                     bf16=round(recalls["bf16"]["recall"], 4),
                     bf16_interval=[round(recalls["bf16"]["low"], 4), round(recalls["bf16"]["high"], 4)],
                     pairs=recalls["bf16"]["pairs"])
        except common.TimeLimit as stop:
            rec.emit(kind="note", **context, skipped=f"{stop}; the gates not reported above were not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
