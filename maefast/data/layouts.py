"""The data layouts maefast reads, and opening a data set in any of them.

rxrx: RxRx-style per-channel PNG files; jump: JUMP-CP-style per-channel TIFF files with a load_data table;
packed: maefast's own shards (`maefast data pack`); rxrx3-core: RxRx3-core's parquet shards of encoded channel
images (maefast.data.rxrx3_core). Each reader turns the layout's metadata into the
standard table of maefast.data.dataset (one row per image); `open_dataset` picks the reader.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.data import rxrx3_core
from maefast.data.dataset import PACKED_FORMAT, Dataset, file_dataset, require_inside_root, sample_rows
from maefast.errors import UserInputError
from maefast.fields import matches
from maefast.io import read_json, read_table

LAYOUTS = ("rxrx", "jump", "packed", rxrx3_core.LAYOUT)
ILLUMINATION = ("raw", "illum")
CONTROL_LABELS = ("EMPTY", "control", "negcon", "non-targeting", "DMSO")
RXRX_PERTURBATION_COLUMNS = ("perturbation", "gene", "sirna", "treatment")
JUMP_PERTURBATION_COLUMNS = ("Metadata_Perturbation", "Metadata_Symbol", "Metadata_JCP2022", "Metadata_broad_sample")


def open_dataset(path, layout: str = "auto", channels=None, illumination: str = "raw",
                 allow_outside_root: bool = False) -> Dataset:
    """Reads a screen's metadata into a Dataset. layout: "auto" | "rxrx" | "jump" | "packed" | "rxrx3-core".

    rxrx: a folder with metadata.csv and {experiment}/Plate{plate}/{well}_s{site}_w{k}.png files.
    jump: a load_data table (.csv or .parquet), or a folder holding load_data.csv / load_data.parquet.
    packed: a folder written by `maefast data pack` (manifest.json, index.parquet, shards/).
    rxrx3-core: a folder with metadata_rxrx3_core.csv and data/*.parquet shards of encoded images.
    channels: names to select and reorder (default: all, in stored order).
    illumination: "raw" or "illum" (jump: divide by the FileName_Illum*/PathName_Illum* .npy functions).
    allow_outside_root: let file paths built from the metadata (rxrx experiment/plate/well, jump PathName_* /
    FileName_*, packed shard names) leave the data root (the folder, or the load_data table's folder);
    by default such a path is refused, naming its row.
    """
    dataset = read_layout(path, layout, illumination, allow_outside_root)
    _check_ids(dataset.table, Path(path))
    return dataset if channels is None else dataset.select_channels(channels)


def read_layout(path, layout: str = "auto", illumination: str = "raw", allow_outside_root: bool = False) -> Dataset:
    """open_dataset without the duplicate-id check and channel selection (`data check` reports those)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise UserInputError(f"layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
    if illumination not in ILLUMINATION:
        raise UserInputError(f"illumination must be 'raw' or 'illum', got {illumination!r}")
    if illumination == "illum" and layout != "jump":
        raise UserInputError(f"illumination='illum' needs the jump layout (illumination files), got {layout}")
    if layout == "packed":
        return read_packed(path, allow_outside_root)
    if layout == "rxrx":
        return read_rxrx(path, allow_outside_root)
    if layout == rxrx3_core.LAYOUT:
        return rxrx3_core.read_rxrx3_core(path, allow_outside_root)
    return read_jump(path, illumination, allow_outside_root)


def detect_layout(path: Path) -> str:
    if path.is_dir() and (path / "manifest.json").is_file():
        return "packed"
    if path.is_file() and path.suffix in (".csv", ".parquet"):
        return "jump"
    if path.is_dir() and any((path / f"load_data{s}").is_file() for s in (".csv", ".parquet")):
        return "jump"
    if rxrx3_core.is_rxrx3_core(path):
        return rxrx3_core.LAYOUT
    if path.is_dir() and (path / "metadata.csv").is_file():
        return "rxrx"
    raise UserInputError(f"cannot tell the layout of {path}: expected a packed folder (manifest.json), a jump "
                         "load_data table (.csv/.parquet) or a folder with metadata.csv (rxrx); pass layout=")


def read_packed(path: Path, allow_outside_root: bool = False) -> Dataset:
    """packed: a folder written by `maefast data pack` (manifest.json, index.parquet, shards/)."""
    manifest_path, index_path = path / "manifest.json", path / "index.parquet"
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != PACKED_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise UserInputError(f"{manifest_path}: expected format {PACKED_FORMAT!r}, got {found!r}")
    if not manifest.get("complete"):
        raise UserInputError(f"{path}: packing is not complete (run `maefast data pack` again to resume)")
    channels, dtype, shape = manifest.get("channels"), manifest.get("dtype"), manifest.get("image_shape")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)
            and len(set(channels)) == len(channels)):
        raise UserInputError(f"{manifest_path}: \"channels\" must list the stored channels' names, each once; "
                             f"found {channels!r}")
    if dtype not in ("uint8", "uint16"):
        raise UserInputError(f"{manifest_path}: \"dtype\" must be uint8 or uint16, found {dtype!r}")
    if not (isinstance(shape, list) and len(shape) == 2 and all(matches(n, int) and n > 0 for n in shape)):
        raise UserInputError(f"{manifest_path}: \"image_shape\" must be [height, width], found {shape!r}")
    table = read_table(index_path)
    _require(table, ("id", "shard", "row"), index_path)
    if not pd.api.types.is_integer_dtype(table["row"]) or pd.api.types.is_bool_dtype(table["row"]):
        raise UserInputError(f"{index_path}: column row must hold integers (positions in the shards), found "
                             f"{table['row'].dtype}")
    _require_values(table, ("id", "shard"), index_path)
    table["shard"] = [str(path.resolve() / "shards" / name) for name in table["shard"]]
    require_inside_root(table["shard"], path, index_path, "shard", allow_outside_root)
    return Dataset(root=path, layout="packed", table=table, stored_channels=tuple(channels),
                   channels=tuple(channels), image_shape=tuple(shape), dtype=np.dtype(dtype))


def read_rxrx(root: Path, allow_outside_root: bool = False) -> Dataset:
    """RxRx: root/metadata.csv with experiment, plate, well (or address), site columns; one row per site.

    Files: root/{experiment}/Plate{plate}/{well}_s{site}_w{k}.png. Channel names are the w-tokens
    ("w1", "w2", ...) found for a sample of sites, or the names in root/channels.json ({"w1": "DNA", ...}).
    """
    metadata_path = root / "metadata.csv"
    table = read_table(metadata_path)
    if "well" not in table.columns and "address" in table.columns:
        table = table.rename(columns={"address": "well"})
    _require(table, ("experiment", "plate", "well", "site"), metadata_path)
    _require_values(table, ("experiment", "plate", "well", "site_id") if "site_id" in table else
                    ("experiment", "plate", "well"), metadata_path)
    table["plate"] = table["plate"].astype(str).str.replace("^Plate", "", regex=True)
    table["site"] = _whole_numbers(table["site"], "site", metadata_path)
    base = (root.resolve().as_posix() + "/" + table["experiment"].astype(str) + "/Plate" + table["plate"]
            + "/" + table["well"].astype(str) + "_s" + table["site"].astype(str) + "_w")
    require_inside_root(base, root, metadata_path, "experiment, plate, well", allow_outside_root)
    tokens = _rxrx_channel_tokens(base)
    names = _rxrx_channel_names(root, tokens)
    for token, name in zip(tokens, names):
        table[f"file_{name}"] = base + token[1:] + ".png"
    if "site_id" in table.columns:
        table["id"] = table["site_id"].astype(str)
    else:
        table["id"] = (table["experiment"].astype(str) + "_" + table["plate"] + "_" + table["well"].astype(str)
                       + "_" + table["site"].astype(str))
    table["batch"] = table["experiment"].astype(str)
    table["perturbation"] = _first_column(table, RXRX_PERTURBATION_COLUMNS)
    if "well_type" in table.columns:
        table["is_control"] = table["well_type"].astype(str).str.contains("control")
    else:
        table["is_control"] = _control_flag(table)
    return file_dataset(root, "rxrx", table, names)


def read_jump(path: Path, illumination: str = "raw", allow_outside_root: bool = False) -> Dataset:
    """JUMP-CP: a load_data table with FileName_Orig<Channel>, PathName_Orig<Channel>, Metadata_* columns.

    Relative PathName_* values are resolved against the table's folder, the data root that the paths must
    stay in unless allow_outside_root. With illumination="illum", the FileName_Illum<Channel> /
    PathName_Illum<Channel> columns name .npy illumination functions.
    """
    table_path = path if path.is_file() else next(
        p for p in (path / "load_data.parquet", path / "load_data.csv") if p.is_file())
    table = read_table(table_path)
    names = [c[len("FileName_Orig"):] for c in table.columns if c.startswith("FileName_Orig")]
    if not names:
        raise UserInputError(f"{table_path}: no FileName_Orig<Channel> columns; expected e.g. FileName_OrigDNA")
    _require(table, [f"PathName_Orig{n}" for n in names] + ["Metadata_Plate", "Metadata_Well", "Metadata_Site"],
             table_path)
    _require_values(table, [f"{kind}_Orig{n}" for n in names for kind in ("FileName", "PathName")]
                    + ["Metadata_Plate", "Metadata_Well"], table_path)
    base_dir = table_path.parent.resolve()
    for name in names:
        table[f"file_{name}"] = _join_paths(base_dir, table[f"PathName_Orig{name}"], table[f"FileName_Orig{name}"])
        require_inside_root(table[f"file_{name}"], base_dir, table_path, f"PathName_Orig{name}, FileName_Orig{name}",
                            allow_outside_root)
    if illumination == "illum":
        _require(table, [f"{kind}_Illum{n}" for n in names for kind in ("FileName", "PathName")], table_path)
        _require_values(table, [f"{kind}_Illum{n}" for n in names for kind in ("FileName", "PathName")], table_path)
        for name in names:
            table[f"illum_{name}"] = _join_paths(base_dir, table[f"PathName_Illum{name}"],
                                                 table[f"FileName_Illum{name}"])
            require_inside_root(table[f"illum_{name}"], base_dir, table_path,
                                f"PathName_Illum{name}, FileName_Illum{name}", allow_outside_root)
    keys = [c for c in ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site")
            if c in table.columns]
    table["id"] = table[keys].astype(str).agg("__".join, axis=1)
    batch_keys = [c for c in ("Metadata_Source", "Metadata_Batch") if c in table.columns] or ["Metadata_Plate"]
    table["batch"] = table[batch_keys].astype(str).agg("__".join, axis=1)
    table["plate"] = table["Metadata_Plate"].astype(str)
    table["well"] = table["Metadata_Well"].astype(str)
    table["site"] = _whole_numbers(table["Metadata_Site"], "Metadata_Site", table_path)
    table["perturbation"] = _first_column(table, JUMP_PERTURBATION_COLUMNS)
    if "Metadata_pert_type" in table.columns:
        table["is_control"] = table["Metadata_pert_type"].astype(str).isin(["control", "negcon"])
    else:
        table["is_control"] = _control_flag(table)
    return file_dataset(base_dir, "jump", table, names, illumination)


def _rxrx_channel_tokens(base: pd.Series) -> list[str]:
    """The channel tokens w<k> of the files found for a sample of sites (their union: a site missing a
    channel file, the first one included, does not drop that channel from the dataset)."""
    found, listings = set(), {}
    for row in sample_rows(len(base)):
        prefix = Path(base.iloc[row])
        if prefix.parent not in listings:
            listings[prefix.parent] = os.listdir(prefix.parent) if prefix.parent.is_dir() else []
        pattern = re.compile(rf"^{re.escape(prefix.name)}(\d+)\.png$")
        found.update(int(m.group(1)) for name in listings[prefix.parent] if (m := pattern.match(name)))
    if not found:
        first = Path(base.iloc[0])
        raise FileNotFoundError(f"no channel files {first.name}<k>.png in {first.parent} (nor for the other "
                                "sampled sites of metadata.csv)")
    return [f"w{k}" for k in sorted(found)]


def _rxrx_channel_names(root: Path, tokens: list[str]) -> list[str]:
    mapping_path = root / "channels.json"
    if not mapping_path.is_file():
        return tokens
    mapping = read_json(mapping_path)
    missing = [t for t in tokens if t not in mapping]
    if missing:
        raise UserInputError(f"{mapping_path}: no name for channel file token(s) {missing}")
    return [mapping[t] for t in tokens]


def _join_paths(base: Path, folders: pd.Series, names: pd.Series) -> pd.Series:
    def join(folder, name):
        folder = Path(str(folder))
        return str((folder if folder.is_absolute() else base / folder) / str(name))
    return pd.Series([join(f, n) for f, n in zip(folders, names)], index=folders.index)


def _first_column(table: pd.DataFrame, candidates) -> pd.Series:
    for column in candidates:
        if column in table.columns:
            return table[column]
    return pd.Series([None] * len(table), index=table.index, dtype=object)


def _control_flag(table: pd.DataFrame) -> pd.Series:
    if "is_control" in table.columns:
        return table["is_control"].astype(bool)
    return table["perturbation"].isin(CONTROL_LABELS)


def _require(table: pd.DataFrame, columns, source: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserInputError(f"{source}: missing metadata column(s) {missing}; found {list(table.columns)}")


def _require_values(table: pd.DataFrame, columns, source: Path) -> None:
    """Refuses an empty table, and a missing value (empty cell, NaN) in any of `columns`, naming its row:
    such a value would otherwise become the text "nan" in an id or a file path."""
    if table.empty:
        raise UserInputError(f"{source}: the metadata lists no images (a header without rows)")
    for column in columns:
        missing = np.flatnonzero(table[column].isna().to_numpy())
        if len(missing):
            raise UserInputError(f"{source}: column {column} has no value in row {table.index[missing[0]]}"
                                 f"{f' (and {len(missing) - 1} more rows)' if len(missing) > 1 else ''}")


def _whole_numbers(values: pd.Series, column: str, source: Path) -> pd.Series:
    """`values` as int64, or UserInputError naming the first row whose value is not a whole number (text, an
    empty cell, 1.7: a site number that would otherwise be cut to 1)."""
    if values.empty:
        raise UserInputError(f"{source}: the metadata lists no images (a header without rows)")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero((numbers.isna() | (numbers != numbers.round())).to_numpy())
    if len(bad):
        value = values.tolist()[bad[0]]  # a Python value, for the message
        raise UserInputError(f"{source}: column {column} must hold whole numbers; row {values.index[bad[0]]} has "
                             f"{value!r}{f' (and {len(bad) - 1} more rows)' if len(bad) > 1 else ''}")
    return numbers.astype(np.int64)


def _check_ids(table: pd.DataFrame, path: Path) -> None:
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise UserInputError(f"{path}: duplicate image ids, e.g. {list(duplicated.unique()[:5])}; "
                             "every row must describe a different image")
