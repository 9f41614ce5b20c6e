"""RxRx3-core's published layout (Kraus et al. 2025; huggingface.co/datasets/recursionpharma/rxrx3-core):

    <root>/metadata_rxrx3_core.csv        one row per well: well_id, experiment_name, plate, address, gene,
                                          treatment, SMILES, concentration, perturbation_type, cell_type
    <root>/data/train-00000-of-00035.parquet ...
                                          one row per channel image: `__key__` (a string,
                                          "<experiment>/Plate<plate>/<address>_s<site>_<channel>") and the
                                          encoded image, a JPEG 2000 (column `jp2`) or PNG (column `png`)
                                          file, stored as bytes or as the Hugging Face image struct
                                          {bytes, path}
    <root>/channels.json (optional)       {"1": "DNA", ...}: channel names (default w1, w2, ...)

`read_rxrx3_core` opens it as a Dataset: one row per site, with `shard_<channel>` and `row_<channel>` (the
parquet file and row of each channel image) and the standard metadata: batch = experiment_name, plate,
well = address, perturbation = treatment with its guide suffix removed (EFAAR's rule: "GENE_2" -> "GENE";
"<name>_control" kept), is_control = the treatment ends in "_control".

Every path (the PyTorch loader, DALI, `data check`, `data pack`) decodes a channel image with `decode_image`,
bounded as maefast's readers bound files (maefast.data.decode): its bytes are checked against the data set's
spec before anything is decoded (maefast._C.check_encoded: the header, a JPEG 2000's codestream structure, the
table of accepted formats, the decompression ratio cap); then PNG decodes through maefast's own C++ reader and
JPEG 2000 through imagecodecs (`pip install "maefast[jpeg2000]"`), whose allocations the checked header bounds.
So each path refuses a bad image for the same named reason, and on_error="skip" skips it on each.

The root may be a URL prefix on object storage (maefast.data.storage): the metadata and channels.json are read
from the store, and each parquet shard (a data object) through the storage layer's bounded cache, from whose
local copy EncodedImages reads row groups; the table's shard paths are then URLs, which the loader reads ahead.

maefast.data.rxrx3_core_write.write_rxrx3_core(dataset, out) writes any data set in this layout (`maefast
data synth --layout rxrx3-core` uses it for the synthetic screen).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maefast.data.dataset import Dataset, common_format
from maefast.data.decode import (
    ImageReadError,
    ImageSpec,
    decode_jpeg2000,
    describe_header,
    local_file,
    readers,
    reading,
    spec_of_header,
)
from maefast.data.storage import (
    StorageError,
    absolute,
    is_file,
    is_remote,
    list_names,
    located,
    normalized,
    read_metadata_json,
    read_metadata_table,
)
from maefast.errors import UserInputError

LAYOUT = "rxrx3-core"
METADATA_FILE = "metadata_rxrx3_core.csv"
KEY_COLUMN = "__key__"
IMAGE_COLUMNS = {"jp2": "jpeg2000", "png": "png"}  # column -> codec
CODECS = ("jpeg2000", "png")
KEY = re.compile(r"^(?P<experiment>[^/]+)/Plate(?P<plate>[^/]+)/(?P<well>[A-Za-z]+\d+)"
                 r"_s(?P<site>\d+)_w?(?P<channel>\d+)(?:\.\w+)?$")
CONTROL_SUFFIX = "_control"
METADATA_COLUMNS = ["well_id", "experiment_name", "plate", "address", "gene", "treatment", "SMILES", "concentration",
                    "perturbation_type", "cell_type"]


def is_rxrx3_core(path) -> bool:
    """Whether `path` (a local folder or a URL prefix) holds RxRx3-core's metadata file."""
    return is_file(located(path, METADATA_FILE))


def shard_files(root) -> list[str]:
    """The parquet shards of images (data/*.parquet, else *.parquet at the root) as absolute paths or URLs."""
    for folder in (located(root, "data"), root):
        names = sorted(name for name in list_names(folder) if name.endswith(".parquet"))
        if names:
            return [absolute(located(folder, name)) for name in names]
    raise FileNotFoundError(f"{root}: no parquet shards of images in {located(root, 'data')} (expected "
                            "data/train-00000-of-000NN.parquet)")


def perturbation_of(treatment: pd.Series) -> pd.Series:
    """EFAAR's rule for RxRx3-core: a treatment's name before its first "_" (the guide), controls kept whole."""
    text = treatment.astype(str)
    return text.where(text.str.contains(CONTROL_SUFFIX, regex=False), text.str.split("_").str[0])


def standard_metadata(table: pd.DataFrame) -> pd.DataFrame:
    """RxRx3-core's well metadata with maefast's standard columns added: batch, plate, well, perturbation,
    is_control (the published embeddings' metadata too)."""
    missing = [c for c in ("experiment_name", "plate", "address", "treatment") if c not in table.columns]
    if missing:
        raise UserInputError(f"RxRx3-core metadata lacks column(s) {missing}; found {list(table.columns)[:10]}")
    return table.assign(batch=table["experiment_name"].astype(str), plate=table["plate"].astype(str),
                        well=table["address"].astype(str), perturbation=perturbation_of(table["treatment"]),
                        is_control=table["treatment"].astype(str).str.contains(CONTROL_SUFFIX, regex=False))


def image_column(schema: pa.Schema, shard: str) -> str:
    found = [c for c in IMAGE_COLUMNS if c in schema.names]
    if KEY_COLUMN not in schema.names or len(found) != 1:
        raise UserInputError(f"{shard}: expected the columns {KEY_COLUMN} and one image column of "
                             f"{list(IMAGE_COLUMNS)}; found {schema.names}")
    return found[0]


def read_rxrx3_core(root, allow_outside_root: bool = False) -> Dataset:
    """The RxRx3-core layout at `root` (a local folder or a URL prefix) as a Dataset (see the module
    docstring). Shards are found inside the root, so allow_outside_root has nothing to allow."""
    root = normalized(str(root)) if is_remote(root) else Path(root)
    images = []
    for shard in shard_files(root):
        local = local_file(shard)  # a URL's copy in the storage cache (StorageError naming it when it cannot be had)
        schema = pq.read_schema(local)
        image_column(schema, shard)
        keys = pq.read_table(local, columns=[KEY_COLUMN]).column(KEY_COLUMN).to_pylist()
        parsed = [KEY.match(str(key)) for key in keys]
        bad = [key for key, match in zip(keys, parsed) if match is None]
        if bad:
            raise UserInputError(f"{shard}: {len(bad)} {KEY_COLUMN} value(s) are not "
                                 f"<experiment>/Plate<plate>/<well>_s<site>_<channel>, e.g. {bad[0]!r}")
        images.append(pd.DataFrame([m.groupdict() for m in parsed]).assign(shard=shard,
                                                                            row=np.arange(len(keys))))
    images = pd.concat(images, ignore_index=True)
    duplicated = images.duplicated(["experiment", "plate", "well", "site", "channel"])
    if duplicated.any():
        raise UserInputError(f"{root}: {int(duplicated.sum())} channel images appear twice, e.g. "
                             f"{images[duplicated].iloc[0].to_dict()}")
    tokens = sorted(images["channel"].unique(), key=int)
    names = channel_names(root, tokens)
    sites = images.pivot(index=["experiment", "plate", "well", "site"], columns="channel", values=["shard", "row"])
    if sites.isna().any().any():
        incomplete = sites[sites.isna().any(axis=1)].index[0]
        raise UserInputError(f"{root}: site {'/'.join(map(str, incomplete))} lacks some of the channels {tokens}")
    table = pd.DataFrame({f"{kind}_{name}": sites[(kind, token)].to_numpy()
                          for kind in ("shard", "row") for token, name in zip(tokens, names)},
                         index=sites.index).reset_index()
    for name in names:
        table[f"row_{name}"] = table[f"row_{name}"].astype(np.int64)
    metadata_path = located(root, METADATA_FILE)
    metadata = standard_metadata(read_metadata_table(metadata_path))
    table = table.rename(columns={"experiment": "batch"}).merge(
        metadata, on=["batch", "plate", "well"], how="left", indicator=True, validate="many_to_one")
    unmatched = table["_merge"] != "both"
    if unmatched.any():
        example = table.loc[unmatched, ["batch", "plate", "well"]].iloc[0].to_dict()
        raise UserInputError(f"{metadata_path}: no row for {int(unmatched.sum())} imaged sites, e.g. {example}")
    table = table.drop(columns="_merge")
    table["site"] = table["site"].astype(int)
    table["id"] = table["batch"] + "_" + table["plate"] + "_" + table["well"] + "_" + table["site"].astype(str)
    table = table.sort_values(["batch", "plate", "well", "site"], ignore_index=True)
    images = EncodedImages()

    def probe(row: int, name: str):
        shard, position = table.at[row, f"shard_{name}"], int(table.at[row, f"row_{name}"])
        with reading(f"{shard}#{position}", table.at[row, "id"]):
            return describe_header(readers().encoded_header(images.encoded(shard, position)))

    shape, dtype, _ = common_format(table, names, root, probe)  # read by decode_image, whatever the codec
    return Dataset(root=root, layout=LAYOUT, table=table, stored_channels=tuple(names), channels=tuple(names),
                   image_shape=shape, dtype=dtype)


def codec_of(dataset: Dataset) -> str:
    """The codec of a data set's channel images, from its shards' image columns: "jpeg2000", "png", or "mixed"
    when its shards differ (the GPU pipeline decodes JPEG 2000 on the device only in a data set of it alone)."""
    shards = pd.unique(dataset.table[[f"shard_{name}" for name in dataset.channels]].to_numpy().ravel())
    codecs = {IMAGE_COLUMNS[image_column(pq.read_schema(local_file(shard)), Path(shard))] for shard in shards}
    return codecs.pop() if len(codecs) == 1 else "mixed"


def channel_names(root, tokens: list[str]) -> list[str]:
    path = located(root, "channels.json")
    if not is_file(path):
        return [f"w{token}" for token in tokens]
    mapping = {str(k).removeprefix("w"): v for k, v in read_metadata_json(path).items()}
    missing = [t for t in tokens if t not in mapping]
    if missing:
        raise UserInputError(f"{path}: no name for channel(s) {missing}")
    return [mapping[t] for t in tokens]


def decode_image(data: bytes, where: str = "image", image_id: str | None = None,
                 spec: ImageSpec | None = None) -> np.ndarray:
    """One encoded channel image (PNG or JPEG 2000, told apart by its bytes) -> the 2-D uint8 / uint16 array
    `spec` says (without a spec, the one its header describes); ImageReadError naming `where` otherwise. The
    bytes are checked against the spec before anything is decoded (see the module docstring)."""
    with reading(where, image_id):
        module = readers()
        if spec is None:
            spec = spec_of_header(module.encoded_header(data), where)
        bounds = (int(spec.shape[0]), int(spec.shape[1]), spec.itemsize, spec.max_ratio)
        if module.check_encoded(data, *bounds) == "png":
            return module.decode_image(data, *bounds)
    return decode_jpeg2000(data, spec, where, image_id)


class EncodedImages:
    """Reads encoded channel images from parquet shards by (shard, row), keeping the last `cached` row groups
    (a shard is read one row group at a time, never whole). Threads may share one: reads take turns."""

    def __init__(self, cached: int = 8):
        self.cached = cached
        self._files: dict[str, tuple[pq.ParquetFile, str, np.ndarray]] = {}
        self._groups: OrderedDict[tuple[str, int], list] = OrderedDict()
        self._lock = threading.Lock()

    def _file(self, shard: str):
        if shard not in self._files:
            try:
                handle = pq.ParquetFile(local_file(shard))  # a URL's shard: its copy in the storage cache
            except StorageError as error:
                raise ImageReadError(shard, error.reason, kind=error.kind) from None
            except (OSError, pa.ArrowException) as error:
                kind = "missing" if not Path(shard).exists() else "unreadable"
                raise ImageReadError(shard, f"unreadable shard ({error})", kind=kind) from error
            starts = np.cumsum([0] + [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)])
            self._files[shard] = (handle, image_column(handle.schema_arrow, shard), starts)
        return self._files[shard]

    def encoded(self, shard: str, row: int) -> bytes:
        with self._lock:
            handle, column, starts = self._file(shard)
            group = int(np.searchsorted(starts, row, side="right") - 1)
            if not 0 <= row < starts[-1]:
                raise ImageReadError(shard, f"row {row} is not in the shard ({starts[-1]} rows)", kind="format")
            key = (shard, group)
            if key not in self._groups:
                values = handle.read_row_group(group, columns=[column]).column(column).to_pylist()
                self._groups[key] = [v["bytes"] if isinstance(v, dict) else v for v in values]
                if len(self._groups) > self.cached:
                    self._groups.popitem(last=False)
            self._groups.move_to_end(key)
            value = self._groups[key][row - starts[group]]
        if value is None:
            raise ImageReadError(f"{shard}#{row}", "no image bytes", kind="missing")
        return value

    def decode(self, shard: str, row: int, image_id: str | None = None, spec: ImageSpec | None = None) -> np.ndarray:
        """The channel image at (shard, row), checked against `spec` and decoded (decode_image)."""
        return decode_image(self.encoded(shard, row), f"{shard}#{row}", image_id, spec)

    def read_image(self, dataset: Dataset, row: int) -> np.ndarray:
        """(C, H, W) pixels of the selected channels of table row `row`, each checked against the spec."""
        record = dataset.table.iloc[row]
        return np.stack([self.decode(record[f"shard_{name}"], int(record[f"row_{name}"]), record["id"], dataset.spec)
                         for name in dataset.channels])

    def read_images(self, dataset: Dataset, rows, pool) -> list:
        """read_image of each row, on the threads of `pool` (a concurrent.futures executor): its pixels, or the
        ImageReadError that refused it."""
        def read(row):
            try:
                return self.read_image(dataset, int(row))
            except ImageReadError as error:
                return error
        return list(pool.map(read, rows))
