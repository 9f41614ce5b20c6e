"""Reading embeddings wherever they are, and exporting a finished job's tables in the formats biologists use.

`read_embeddings` takes a finished `maefast embed` folder, a folder of parquet shards, or one file in any of
maefast.tables.FORMATS; `export_embeddings` writes a finished job's sites and wells as h5ad or
pycytominer tables beside its parquet shards.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from maefast.embedding.job import MANIFEST_FILE, read_job
from maefast.errors import UserInputError
from maefast.tables import EXPORT_SUFFIXES, LEVELS, check_format, feature_columns, read_table, write_table


def read_embeddings(path, level: str = "site", metadata=None) -> pd.DataFrame:
    """Embeddings (or a map) as one table: metadata columns, then feature columns.

    path: a finished `maefast embed` output folder (level "site" or "well"), a folder of parquet shards,
    or a file in any of maefast.tables.FORMATS (parquet, .h5ad, pycytominer CSV / parquet).
    metadata: a table (CSV or parquet) joined on the columns it shares with the embeddings, for published
    embeddings that carry only an id (OpenPhenom's RxRx3-core embeddings: well_id + features, with
    metadata_rxrx3_core.csv, whose standard columns batch, plate, well, perturbation, is_control are added).
    """
    table = read_embedding_table(path, level)
    return table if metadata is None else with_metadata(table, metadata)


def with_metadata(table: pd.DataFrame, path) -> pd.DataFrame:
    """`table` with the rows of the metadata table at `path` that match it on their shared columns."""
    from maefast.data.rxrx3_core import METADATA_COLUMNS, standard_metadata
    metadata = read_table(path)
    if set(METADATA_COLUMNS[1:4]) <= set(metadata.columns):  # RxRx3-core's well metadata
        metadata = standard_metadata(metadata)
    features = feature_columns(table, required=False)
    keys = [c for c in table.columns if c in metadata.columns and c not in features]
    if not keys:
        raise UserInputError(f"{path}: no column in common with the embeddings (their metadata columns are "
                             f"{[c for c in table.columns if c not in features][:10]})")
    if metadata.duplicated(keys).any():
        raise UserInputError(f"{path}: several rows share the same {keys}; the metadata must name each once")
    merged = table.merge(metadata, on=keys, how="left", indicator=True)
    unmatched = merged["_merge"] != "both"
    if unmatched.any():
        raise UserInputError(f"{path}: no metadata for {int(unmatched.sum())} embedding rows, e.g. "
                             f"{merged.loc[unmatched, keys].iloc[0].to_dict()}")
    return merged[[c for c in merged.columns if c not in features and c != "_merge"] + features]


def read_embedding_table(path, level: str) -> pd.DataFrame:
    if level not in LEVELS:
        raise UserInputError(f"level must be one of {LEVELS}, got {level!r}")
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST_FILE).exists() or (path / "shards").is_dir():
            return read_job(path, level=level)  # refuses an unfinished job
        shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))  # dot names: partial
        if not shards:
            raise FileNotFoundError(f"{path}: neither an embedding job's output nor a folder of *.parquet shards")
        return pd.concat([read_table(shard) for shard in shards], ignore_index=True)
    return read_table(path)


def export_embeddings(job: Path, format: str, levels=LEVELS) -> list[Path]:
    """Writes a finished embedding job's tables as `<job>/sites<suffix>`, `<job>/wells<suffix>`."""
    if check_format(format) == "parquet":
        return []
    job = Path(job)
    return [write_table(read_embeddings(job, level), job / f"{level}s{EXPORT_SUFFIXES[format]}", format)
            for level in levels]
