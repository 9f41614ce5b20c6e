"""Embedding and map tables on disk, in the formats biologists' tools read.

In memory a table is a pandas DataFrame of metadata columns and feature columns; a map is indexed by
perturbation. Every maefast writer names the features `feature_names(count)`: feature_0000, feature_0001, ...
(four digits at least, more when there are more features, so that the names sort in order); every reader
takes the columns that start with the prefix (`feature_columns`), so tables named otherwise before (a map's
feature_0, feature_1, ...) read as they are. On disk (`FORMATS`):

  parquet               the table as it is (maefast's own format; an embedding job's shards)
  h5ad                  AnnData: X = features (float32), obs = metadata, obs_names = the map's perturbations, a
                        site table's ids or a well table's batch/plate/well (row numbers when none is unique),
                        var = feature names. Needs anndata (pip install "maefast[anndata]").
  pycytominer-csv       pycytominer / CellProfiler style: metadata columns prefixed `Metadata_`, then the
  pycytominer-parquet   features under their own names; CSV (gzip when the name ends in .gz) or parquet. Read
                        back without the prefix; a column named either way is found (`metadata_column`).

Every file is written to a temporary name and renamed when complete; `read_table` reads each of them back
into the same table (maefast.embedding.outputs.read_embeddings also reads an embedding job's folder).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.errors import MissingDependency, UserInputError
from maefast.io import atomic_path
from maefast.io import read_table as read_named_table

FORMATS = ("parquet", "h5ad", "pycytominer-csv", "pycytominer-parquet")
METADATA_PREFIX = "Metadata_"
FEATURE_PREFIX = "feature_"
BLOCK_COLUMN = "block"  # block-wise embeddings: the 0-based encoder block of each row (embed --blocks)
LEVELS = ("site", "well")
# file names per format: read_table recognizes a format by the name, so write_table insists on these
NAME_ENDINGS = {"parquet": (".parquet",), "h5ad": (".h5ad",), "pycytominer-csv": (".csv", ".csv.gz"),
                "pycytominer-parquet": (".parquet",)}
# the files `maefast embed --format` adds to a finished job, per level
EXPORT_SUFFIXES = {"h5ad": ".h5ad", "pycytominer-csv": ".pycytominer.csv.gz",
                   "pycytominer-parquet": ".pycytominer.parquet"}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UserInputError(f"format must be one of {FORMATS}, got {name!r}")
    return name


def import_anndata():
    try:
        import anndata
    except ImportError:
        raise MissingDependency("AnnData (.h5ad) files need the anndata package: "
                                "python -m pip install \"maefast[anndata]\"") from None
    return anndata


def feature_names(count: int) -> list[str]:
    """The names of `count` feature columns, as every maefast writer names them: feature_0000, feature_0001, ..."""
    width = max(4, len(str(count - 1)))
    return [f"{FEATURE_PREFIX}{i:0{width}d}" for i in range(count)]


def feature_columns(table: pd.DataFrame, prefix: str = FEATURE_PREFIX, names: Sequence[str] | None = None,
                    required: bool = True) -> list[str]:
    """The feature columns of `table`: `names` if given (each must be a column), else every column starting with
    `prefix`, in table order. required: refuse a table with none (an embedding job whose images were all
    skipped has none)."""
    if names is not None:
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise UserInputError(f"unknown feature column(s) {missing[:5]}; columns are {list(table.columns)[:10]}")
        return list(names)
    features = [c for c in table.columns if str(c).startswith(prefix)]
    if required and not features:
        raise UserInputError(f"no feature columns: none starts with {prefix!r} (columns: {list(table.columns)[:10]})")
    return features


def metadata_column(table: pd.DataFrame, name: str) -> str:
    """The column of `table` that `name` means: itself, or the same column with or without pycytominer's
    `Metadata_` prefix (a pycytominer file's `Metadata_gene` reads as `gene`, and either name finds it).
    UserInputError when there is none."""
    candidates = [name, name.removeprefix(METADATA_PREFIX), METADATA_PREFIX + name]
    found = next((c for c in candidates if c in table.columns), None)
    if found is None:
        raise UserInputError(f"unknown column {name!r}; the columns are {[str(c) for c in table.columns][:12]}")
    return found


def row_names(table: pd.DataFrame) -> pd.Index | None:
    """What names a table's rows in an AnnData file (obs_names): the map's perturbation index, a site table's `id`,
    a well table's batch / plate / well joined by "/"; None when no column names every row once."""
    if named_index(table) is not None:
        return table.index.astype(str)
    for columns in (["id"], [c for c in ("batch", "plate", "well") if c in table.columns]):
        if columns and set(columns) <= set(table.columns):
            names = pd.Index(table[columns].astype(str).agg("/".join, axis=1))
            if names.is_unique:
                return names
    return None


def named_index(table: pd.DataFrame) -> str | None:
    """The index's name when it carries data (a map's perturbations), else None (row numbers)."""
    if isinstance(table.index, pd.RangeIndex) and table.index.name is None:
        return None
    return table.index.name or "index"


# -- writing --------------------------------------------------------------------------------------------

def write_table(table: pd.DataFrame, path, format: str = "parquet", feature_prefix: str = FEATURE_PREFIX) -> Path:
    """Writes `table` to `path` in `format` atomically; returns the path."""
    path = Path(path)
    if not path.name.lower().endswith(NAME_ENDINGS[check_format(format)]):
        raise UserInputError(f"{path}: a {format} file's name ends with {' or '.join(NAME_ENDINGS[format])} "
                         f"(so that it is read back as {format})")
    writer = {"parquet": write_parquet, "h5ad": write_h5ad, "pycytominer-csv": write_pycytominer_csv,
              "pycytominer-parquet": write_pycytominer_parquet}[check_format(format)]
    with atomic_path(path) as temporary:
        writer(table, temporary, feature_prefix, path)
    return path


def write_parquet(table, temporary: Path, feature_prefix: str, path: Path) -> None:
    table.to_parquet(temporary, index=named_index(table) is not None)


def write_h5ad(table, temporary: Path, feature_prefix: str, path: Path) -> None:
    anndata = import_anndata()
    features = feature_columns(table, feature_prefix)
    obs = table.drop(columns=features)
    index, names = named_index(table), row_names(table)
    obs.index = names if names is not None else pd.RangeIndex(len(obs)).astype(str)
    obs.index.name = index
    obs.columns = [str(c) for c in obs.columns]
    var = pd.DataFrame(index=pd.Index([str(f) for f in features], name="feature"))
    data = anndata.AnnData(X=table[features].to_numpy(np.float32), obs=obs, var=var)
    data.uns["maefast"] = {"index": index or ""}
    data.write_h5ad(temporary)


def pycytominer_frame(table: pd.DataFrame, feature_prefix: str) -> pd.DataFrame:
    if named_index(table) is not None:
        table = table.reset_index()
    features = feature_columns(table, feature_prefix)
    metadata = [c for c in table.columns if c not in features]
    renamed = {c: c if str(c).startswith(METADATA_PREFIX) else f"{METADATA_PREFIX}{c}" for c in metadata}
    return table[metadata + features].rename(columns=renamed)


def write_pycytominer_csv(table, temporary: Path, feature_prefix: str, path: Path) -> None:
    compression = "gzip" if path.name.endswith(".gz") else None  # the temporary name says nothing
    pycytominer_frame(table, feature_prefix).to_csv(temporary, index=False, compression=compression)


def write_pycytominer_parquet(table, temporary: Path, feature_prefix: str, path: Path) -> None:
    pycytominer_frame(table, feature_prefix).to_parquet(temporary, index=False)


# -- reading --------------------------------------------------------------------------------------------

def read_h5ad(path: Path) -> pd.DataFrame:
    data = import_anndata().read_h5ad(path)
    obs = data.obs.copy()
    for column in obs.columns:  # anndata stores strings as categoricals
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].astype(obs[column].cat.categories.dtype)
    X = data.X.toarray() if hasattr(data.X, "toarray") else np.asarray(data.X)
    features = pd.DataFrame(X, columns=list(data.var_names), index=obs.index)
    table = pd.concat([obs, features], axis=1)
    index = dict(data.uns.get("maefast", {})).get("index") or None
    if index is None:
        return table.reset_index(drop=True)
    table.index.name = index
    return table


def from_pycytominer(table: pd.DataFrame) -> pd.DataFrame:
    """Metadata_ columns lose their prefix (unless that would clash with a column); the rest are features."""
    renamed = {c: c[len(METADATA_PREFIX):] for c in table.columns if str(c).startswith(METADATA_PREFIX)}
    clashes = set(renamed.values()) & set(table.columns)
    return table.rename(columns={k: v for k, v in renamed.items() if v not in clashes})


def read_table(path) -> pd.DataFrame:
    """One file in any of FORMATS (by its name: .h5ad, .csv[.gz] / .tsv[.gz], else parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such embeddings or map file")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return read_h5ad(path)
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        return from_pycytominer(read_named_table(path, sep="\t" if ".tsv" in name else ","))
    table = read_named_table(path)
    if any(str(c).startswith(METADATA_PREFIX) for c in table.columns):
        return from_pycytominer(table)
    return table
