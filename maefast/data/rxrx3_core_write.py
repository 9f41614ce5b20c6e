"""Writing a data set in RxRx3-core's published layout (maefast.data.rxrx3_core describes it)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maefast.data.dataset import Dataset
from maefast.data.decode import import_imagecodecs
from maefast.data.rxrx3_core import CODECS, CONTROL_SUFFIX, IMAGE_COLUMNS, KEY_COLUMN, METADATA_FILE
from maefast.data.torch_backend import ImageReader
from maefast.errors import UserInputError
from maefast.io import atomic_path, write_json_atomic


def encode_image(image: np.ndarray, codec: str) -> bytes:
    if codec == "jpeg2000":
        return bytes(import_imagecodecs().jpeg2k_encode(image, level=0, codecformat="jp2"))  # lossless
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def rxrx3_core_metadata(table: pd.DataFrame, perturbation_col: str = "perturbation") -> pd.DataFrame:
    """One row per well in RxRx3-core's metadata columns, from a data set's standard table (controls become
    "EMPTY_control", wells with a concentration COMPOUND treatments, the others CRISPR)."""
    wells = table.drop_duplicates(["batch", "plate", "well"])
    concentration = pd.to_numeric(wells.get("concentration", pd.Series(np.nan, index=wells.index)), errors="coerce")
    treatment = wells[perturbation_col].astype(str).where(~wells["is_control"].astype(bool), "EMPTY" + CONTROL_SUFFIX)
    gene = wells["gene"] if "gene" in wells.columns else wells[perturbation_col].where(concentration.isna())
    return pd.DataFrame({
        "well_id": (wells["batch"].astype(str) + "_" + wells["plate"].astype(str) + "_" + wells["well"].astype(str)),
        "experiment_name": wells["batch"].astype(str), "plate": wells["plate"].astype(str),
        "address": wells["well"].astype(str), "gene": gene.where(concentration.isna()), "treatment": treatment,
        "SMILES": "", "concentration": concentration,
        "perturbation_type": np.where(concentration.notna(), "COMPOUND", "CRISPR"),
        "cell_type": wells.get("cell_type", "synthetic")}).reset_index(drop=True)


def write_rxrx3_core(dataset: Dataset, out, codec: str = "jpeg2000", images_per_shard: int = 512) -> Path:
    """Writes `dataset` in the RxRx3-core layout under `out` (each site's selected channels, encoded with
    `codec`: "jpeg2000" (lossless) or "png"); returns `out`. Shards are written atomically, so an interrupted
    run resumes with the shards that are missing."""
    if codec not in CODECS:
        raise UserInputError(f"codec must be one of {CODECS}, got {codec!r}")
    if codec == "jpeg2000":
        import_imagecodecs()
    out = Path(out)
    reader = ImageReader(dataset)
    column = {v: k for k, v in IMAGE_COLUMNS.items()}[codec]
    count = math.ceil(len(dataset) / images_per_shard)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the Hugging Face image struct
    for index in range(count):
        path = out / "data" / f"train-{index:05d}-of-{count:05d}.parquet"
        if path.exists():
            continue
        keys, values = [], []
        for row in range(index * images_per_shard, min((index + 1) * images_per_shard, len(dataset))):
            record = dataset.table.iloc[row]
            for k, plane in enumerate(reader.read_image(row), 1):
                keys.append(f"{record['batch']}/Plate{record['plate']}/{record['well']}_s{record['site']}_{k}")
                values.append({"bytes": encode_image(plane, codec), "path": None})
        table = pa.table({KEY_COLUMN: pa.array(keys, pa.string()), column: pa.array(values, image_type)})
        with atomic_path(path) as temporary:
            pq.write_table(table, temporary, row_group_size=64)
    write_json_atomic(out / "channels.json", {str(k): name for k, name in enumerate(dataset.channels, 1)})
    with atomic_path(out / METADATA_FILE) as temporary:
        rxrx3_core_metadata(dataset.table).to_csv(temporary, index=False)
    return out
