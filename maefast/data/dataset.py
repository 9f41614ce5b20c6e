"""The dataset description: one row per image, explicit channel names, from any supported layout.

`open_dataset(path, layout="auto", channels=None)` returns a `Dataset` whose `table` has the columns

    id, batch, plate, well, site, perturbation, is_control    (the standard metadata)
    file_<channel> for each stored channel                    (absolute paths; rxrx and jump)
    illum_<channel>                                           (jump with illumination="illum")
    shard, row                                                (packed: the shard file and the row in it)
    shard_<channel>, row_<channel>                            (rxrx3-core: the parquet file and row of each
                                                               channel's encoded image)

plus any extra metadata columns of the source. `dataset.channels` is the selected channel order, which
every loader hands over; `select_channels` picks and reorders channels by name.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.data.decode import ImageReadError, ImageSpec, probe_channel
from maefast.data.identity import content_fingerprint
from maefast.data.storage import is_remote, normalized
from maefast.errors import UserInputError

STANDARD_COLUMNS = ("id", "batch", "plate", "well", "site", "perturbation", "is_control")
PACKED_FORMAT = "maefast-packed-v1"
PATH_COLUMN_PREFIXES = ("file_", "illum_", "shard")  # columns of file paths
SOURCE_COLUMN_PREFIXES = ("file_", "illum_", "shard_", "row_")  # where each channel image of a source lies
HEADER_SAMPLE = 16  # images whose headers decide the size and dtype of a per-channel-file dataset
OUTSIDE_ROOT_HINT = ("metadata paths must stay inside the data root unless allowed: open_dataset(..., "
                     "allow_outside_root=True), --allow-outside-root, or --set data.allow_outside_root=true")


@dataclass(frozen=True)
class Dataset:
    root: Path | str                  # a local folder (or load_data table), or a URL (maefast.data.storage)
    layout: str                       # "rxrx" | "jump" | "packed" | "rxrx3-core"
    table: pd.DataFrame               # one row per image, see the module docstring
    stored_channels: tuple[str, ...]  # channels as stored (packed: the order inside the shards)
    channels: tuple[str, ...]         # the selected channels, in the order loaders hand them over
    image_shape: tuple[int, int]      # (height, width) of every image
    dtype: np.dtype                   # uint8 or uint16
    illumination: str = "raw"         # "raw" | "illum" (jump only)
    compressed: bool = False          # channel files are JPEG / JPEG 2000 (else PNG / TIFF; packed: shards)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    @property
    def spec(self) -> ImageSpec:
        """What every channel image must be (size, dtype, one page); every loader checks it."""
        return ImageSpec(tuple(self.image_shape), np.dtype(self.dtype), compressed=self.compressed)

    @property
    def channel_index(self) -> list[int]:
        """Positions of the selected channels among the stored channels."""
        return [self.stored_channels.index(name) for name in self.channels]

    def channel_files(self, row: int) -> list[str]:
        """The selected channels' files of image `row` (rxrx and jump)."""
        record = self.table.iloc[row]
        return [record[f"file_{name}"] for name in self.channels]

    def illum_files(self, row: int) -> list[str] | None:
        if self.illumination != "illum":
            return None
        record = self.table.iloc[row]
        return [record[f"illum_{name}"] for name in self.channels]

    def select_channels(self, names) -> Dataset:
        return replace(self, channels=_select(names, self.stored_channels))

    def subset(self, rows) -> Dataset:
        """The dataset restricted to the given row positions (in that order)."""
        return replace(self, table=self.table.iloc[np.asarray(rows)].reset_index(drop=True))

    def describe(self) -> str:
        return (f"{self.layout} dataset at {self.root}: {len(self)} images, channels {list(self.channels)}, "
                f"{self.image_shape[0]}x{self.image_shape[1]} {self.dtype}")

    def fingerprint(self) -> dict:
        """What identifies the data a job reads: layout, image count, selected channels, image shape, dtype, a
        hash of the index table (its file paths relative to the root, so a moved data set keeps its
        fingerprint) and one of the files' content (maefast.data.identity: sizes and sampled bytes of every
        file the loaders read, so another screen with the same table is told apart)."""
        table = self.table.copy()
        if is_remote(self.root):
            prefixes = {str(self.root) + "/"}
        else:
            base = self.root if self.root.is_dir() else self.root.parent
            prefixes = {base.as_posix() + "/", base.resolve().as_posix() + "/"}
        for column in [c for c in table.columns if c.startswith(PATH_COLUMN_PREFIXES)]:
            for prefix in prefixes:
                table[column] = table[column].astype(str).str.removeprefix(prefix)
        digest = hashlib.sha256(json.dumps([str(c) for c in table.columns]).encode())
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
        return {"layout": self.layout, "images": len(self), "channels": list(self.channels),
                "image_shape": list(self.image_shape), "dtype": str(self.dtype), "table_sha256": digest.hexdigest(),
                "content": content_fingerprint(self.files_read())}

    def files_read(self, rows=None) -> list[str]:
        """Every file the loaders read (of the images at row positions `rows`, default all), in table order:
        the shards (packed; rxrx3-core: the parquet shards holding the selected channels' images), or each
        image's selected channel files (and illumination functions)."""
        table = self.table if rows is None else self.table.iloc[np.asarray(rows)]
        if self.layout == "packed":
            return [str(p) for p in table["shard"]]
        columns = [f"{'shard' if self.layout == 'rxrx3-core' else 'file'}_{c}" for c in self.channels]
        if self.illumination == "illum":
            columns += [f"illum_{c}" for c in self.channels]
        return [str(p) for p in table[columns].to_numpy().ravel()]


def file_dataset(root, layout: str, table: pd.DataFrame, channels: list[str],
                 illumination: str = "raw") -> Dataset:
    """A Dataset over per-channel files; size and dtype are the ones most of a sample of headers show."""
    if table.empty:
        raise UserInputError(f"{root}: the metadata lists no images")
    table = table.reset_index(drop=True)

    def probe(row: int, channel: str):
        return probe_channel(table.at[row, f"file_{channel}"])

    shape, dtype, compressed = common_format(table, channels, root, probe)
    return Dataset(root=root, layout=layout, table=table, stored_channels=tuple(channels),
                   channels=tuple(channels), image_shape=shape, dtype=dtype, illumination=illumination,
                   compressed=compressed)


def sample_rows(count: int, size: int = HEADER_SAMPLE) -> np.ndarray:
    """Up to `size` row positions spread evenly over `count` rows, the first included."""
    return np.unique(np.linspace(0, count - 1, min(count, size)).round().astype(np.int64))


def common_format(table: pd.DataFrame, channels, root, probe) -> tuple[tuple[int, int], np.dtype, bool]:
    """The (height, width), dtype and family (JPEG / JPEG 2000 or PNG / TIFF) most headers of a sample of images
    show (`probe(row, channel)`: the (height, width), kind and compression of one channel image's header,
    maefast.data.decode.describe_header): one odd or unreadable image, the first one included, does not set the
    norm (the loaders refuse or skip it against it)."""
    found, errors = Counter(), []
    for row in sample_rows(len(table)):
        for channel in channels:
            try:
                found[probe(row, channel)] += 1
            except ImageReadError as error:
                errors.append(error)
    if not found:
        raise UserInputError(f"{root}: none of the {len(errors)} sampled channel files has a readable header, "
                             f"e.g. {errors[0]}")
    (shape, kind, compressed), _ = found.most_common(1)[0]
    if kind not in ("uint8", "uint16"):
        raise UserInputError(f"{root}: most sampled channel files are {shape[0]}x{shape[1]} {kind} images; maefast "
                             "reads single-page uint8 or uint16 images (see the table of formats in docs/data.md)")
    return shape, np.dtype(kind), compressed


def require_inside_root(paths: pd.Series, root, source, columns: str, allowed: bool) -> None:
    """Refuses file paths built from metadata that leave the data root (through `..` or an absolute path),
    naming the first such row, unless `allowed`. Symbolic links inside the root are followed as they are:
    they are the file system owner's choice, not the metadata's. A `..` after a symbolic link goes up from
    the link's target, as the kernel resolves it (`link/..` is the target's parent, not the root), so the
    part of a path up to its last `..` must resolve inside the root."""
    if allowed or paths.empty:
        return
    if is_remote(root):  # keys have no links: a URL is inside when its key, ".." resolved, is under the root's
        inside = str(root).rstrip("/") + "/"
        outside = [i for i, path in enumerate(paths.astype(str)) if not normalized(path).startswith(inside)]
        _refuse_outside(paths, outside, root, source, columns)
        return
    real_root = os.path.realpath(root)
    prefixes = (os.path.join(os.path.normpath(Path(root).resolve()), ""), os.path.join(real_root, ""))
    text = paths.astype(str)
    suspicious = ~text.str.startswith(prefixes[0]) | text.str.contains("/../", regex=False) | text.str.endswith("/..")
    outside = [i for i in np.flatnonzero(suspicious.to_numpy()) if _leaves_root(text.iloc[i], prefixes)]
    _refuse_outside(paths, outside, root, source, columns)


def _refuse_outside(paths: pd.Series, outside: list[int], root, source, columns: str) -> None:
    if outside:
        first = outside[0]
        more = f" (and {len(outside) - 1} more rows)" if len(outside) > 1 else ""
        raise UserInputError(f"{source}: row {paths.index[first]} ({columns}) names {paths.astype(str).iloc[first]}, "
                             f"outside the data root {root}{more}; {OUTSIDE_ROOT_HINT}")


def _leaves_root(path: str, prefixes: tuple[str, str]) -> bool:
    if not os.path.join(os.path.normpath(path), "").startswith(prefixes[0]):
        return True
    parts = path.split("/")
    if ".." not in parts:
        return False
    last = len(parts) - 1 - parts[::-1].index("..")
    up_to = os.path.realpath("/".join(parts[:last + 1]) or "/")  # as the kernel walks it: links, then ".."
    return not os.path.join(up_to, "").startswith(prefixes[1])


def _select(names, stored: tuple[str, ...]) -> tuple[str, ...]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise UserInputError("channels: select at least one channel")
    unknown = [n for n in names if n not in stored]
    if unknown:
        raise UserInputError(f"channels: unknown channel(s) {unknown}; the dataset has {list(stored)}")
    if len(set(names)) != len(names):
        raise UserInputError(f"channels: each channel at most once, got {names}")
    return tuple(names)
