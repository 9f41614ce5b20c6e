"""The baselines every benchmark can put beside a model (Svatko et al. 2026 found untrained models and simple
structural features on a par with trained ones on common microscopy benchmarks):

- "random": the encoder of the same architecture with random weights (seeded), embedded by the same job;
- "handcrafted": the CellProfiler-style features of maefast.embedding.handcrafted, computed on whole sites.

`baseline_embeddings(kind, checkpoint=..., data=..., out=...)` computes one (resumably, cached under `out`)
and returns its table in the embedding job's format: one row per site or per well.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maefast.choices import BASELINES
from maefast.data import make_tile_loader, open_dataset
from maefast.embedding.handcrafted import HandcraftedEmbedder
from maefast.embedding.job import aggregate_wells, site_table
from maefast.embedding.outputs import read_embeddings
from maefast.errors import UserInputError
from maefast.io import atomic_path
from maefast.models.checkpoint import from_pretrained, resolve_checkpoint, save_pretrained
from maefast.models.registry import create_model, model_config_dict
from maefast.tables import LEVELS


def check_baselines(kinds) -> list[str]:
    unknown = [kind for kind in kinds if kind not in BASELINES]
    if unknown:
        raise UserInputError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    return list(dict.fromkeys(kinds))


def random_weights_checkpoint(checkpoint, out, model: str | None = None, trust_pickle: bool = False,
                              seed: int = 0) -> Path:
    """Saves (once) the model of `checkpoint`, rebuilt with random weights (torch seed `seed`), as a checkpoint
    folder with the same channel names; a bare weights file needs its architecture `model`."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    checkpoint = resolve_checkpoint(checkpoint)
    if checkpoint.folder is not None:
        trained = from_pretrained(checkpoint, trust_pickle=trust_pickle)
        channels = (checkpoint.config or {}).get("channel_names")
    elif model is not None:
        trained, channels = create_model(model), []
    else:
        raise UserInputError(f"{checkpoint} is a bare weights file: name its architecture (--model) for the random "
                             f"baseline")
    torch.manual_seed(seed)
    random = create_model(trained.model_name, **model_config_dict(trained))
    return save_pretrained(random, out, channel_names=list(channels or []))


def handcrafted_sites(data, out, layout: str = "auto", channels=None, batch_size: int = 16,
                      allow_outside_root: bool = False) -> pd.DataFrame:
    """Hand-crafted features of every whole site of `data`, in the embedding job's site format; computed once
    and kept in `out`/sites.parquet (with wells.parquet, the mean per well)."""
    path = Path(out) / "sites.parquet"
    if path.exists():
        return pd.read_parquet(path)
    dataset = open_dataset(data, layout, channels, allow_outside_root=allow_outside_root)
    embedder = HandcraftedEmbedder(list(dataset.channels))
    loader = make_tile_loader(dataset, batch_size=batch_size, crop_size=min(dataset.image_shape), backend="torch")
    rows, features = [], []
    for batch in loader:
        rows.append(batch["index"].numpy())
        features.append(embedder.embed(batch["pixels"]))
    sites = site_table(dataset.table.iloc[np.concatenate(rows)], np.concatenate(features))
    with atomic_path(Path(out) / "wells.parquet") as temporary:
        aggregate_wells(sites).to_parquet(temporary, index=False)
    with atomic_path(path) as temporary:
        sites.to_parquet(temporary, index=False)
    return sites


def baseline_embeddings(kind: str, *, checkpoint, data, out, level: str = "well", model: str | None = None,
                        trust_pickle: bool = False, seed: int = 0, **embed_options) -> pd.DataFrame:
    """The `kind` baseline's embeddings of `data` (see the module docstring), cached in `out`/`kind`.

    checkpoint: the model whose architecture the random baseline copies; embed_options go to maefast.embed
    for it (blocks, pool, channels, ...)."""
    check_baselines([kind])
    if level not in LEVELS:
        raise UserInputError(f"level must be one of {LEVELS}, got {level!r}")
    folder = Path(out) / kind
    if kind == "handcrafted":
        sites = handcrafted_sites(data, folder, channels=embed_options.get("channels"))
        return sites if level == "site" else pd.read_parquet(folder / "wells.parquet")
    from maefast.embedding.api import embed
    weights = random_weights_checkpoint(checkpoint, folder / "encoder", model, trust_pickle, seed)
    embed(weights, data, folder / "embeddings", show_progress=False, **embed_options)
    return read_embeddings(folder / "embeddings", level=level)
