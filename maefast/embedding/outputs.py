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
from maefast.tables import EXPORT_SUFFIXES, LEVELS, check_format, read_table, write_table


def read_embeddings(path, level: str = "site") -> pd.DataFrame:
    """Embeddings (or a map) as one table: metadata columns, then feature columns.

    path: a finished `maefast embed` output folder (level "site" or "well"), a folder of parquet shards,
    or a file in any of maefast.tables.FORMATS (parquet, .h5ad, pycytominer CSV / parquet).
    """
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
