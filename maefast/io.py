"""Durable file output and safe input of what maefast wrote.

Output is written to a temporary name beside the target, then renamed when complete. Input is read only
from formats whose reading cannot run code (JSON, safetensors: never pickle), and a missing or damaged
file is reported with its path.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from maefast.errors import UserInputError

if TYPE_CHECKING:  # imported where used: maefast's command line and configs import this module without torch
    import pandas as pd
    import torch


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path in the target's directory; renames it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Writes tensors to a safetensors file atomically, with the usual file mode (safetensors writes its own
    temporary file, mode 0600, and renames it); a failed write (a full disk, a file size limit) raises an
    OSError naming the file, as any other failed write does (SafetensorError is not an OSError)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    with atomic_path(path) as temporary:
        try:
            save_file(tensors, str(temporary), metadata=metadata)
        except SafetensorError as error:
            code = re.search(r"os error (\d+)", str(error))
            raise OSError(int(code.group(1)) if code else errno.EIO, f"{path}: could not write ({error})") from None
        os.chmod(temporary, 0o666 & ~current_umask())


def write_yaml_atomic(path: str | os.PathLike, payload) -> None:
    """A job's effective config, as YAML in the order of its keys (config.yaml of training and embedding)."""
    with atomic_path(path) as temporary:
        temporary.write_text(yaml.safe_dump(payload, sort_keys=False))


def read_json(path: str | os.PathLike):
    """A JSON file; FileNotFoundError or UserInputError naming the file when it is missing or damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: damaged or truncated JSON ({error})") from None


def read_table(path: str | os.PathLike, **csv_options) -> pd.DataFrame:
    """A .parquet table, or else a CSV (csv_options go to pandas.read_csv); UserInputError naming the file
    when it cannot be parsed."""
    import pandas as pd
    path = Path(path)
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, **csv_options)
    except ValueError as error:  # how pandas and pyarrow refuse a file (ParserError, ArrowInvalid, ...)
        raise UserInputError(f"{path}: cannot be read as a table ({type(error).__name__}: {error})") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; UserInputError naming the file when it is damaged or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise UserInputError(f"{path}: damaged or truncated safetensors file ({error})") from None


def check_finite(tensors: dict[str, torch.Tensor], source) -> None:
    """UserInputError naming `source` and its tensors that hold NaN or infinity (weights that would train or
    embed to NaN, with the blame on the images)."""
    import torch
    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserInputError(f"{source}: non-finite values (NaN or infinity) in {len(bad)} tensor(s): "
                             f"{', '.join(bad[:5])}{more}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


# -- nested state (optimizer, RNG, counters) as <stem>.safetensors + <stem>.json --------------------------
# Tensors and numpy arrays go to the safetensors file; the JSON keeps the structure and every other value.
# Tuples and dicts with keys other than strings are tagged so that they come back as they were.
TENSOR, ARRAY, TUPLE, ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"


def write_state(stem: Path, state) -> None:
    """Writes `state` (nested dicts, lists, tuples of tensors, numpy arrays, numbers, strings, None)."""
    import torch
    tensors: dict[str, torch.Tensor] = {}

    def encode(value):
        if isinstance(value, torch.Tensor):
            tensors[str(len(tensors))] = value.detach().cpu().contiguous()
            return {TENSOR: str(len(tensors) - 1)}
        if isinstance(value, np.ndarray):
            tensors[str(len(tensors))] = torch.from_numpy(np.ascontiguousarray(value))
            return {ARRAY: str(len(tensors) - 1)}
        if isinstance(value, tuple):
            return {TUPLE: [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {ITEMS: [[encode(k), encode(v)] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):  # a numpy scalar comes back as the Python number
            return value.item()
        raise TypeError(f"write_state: cannot store a {type(value).__name__}")

    structure = encode(state)
    write_safetensors(tensors, stem.with_suffix(".safetensors"))
    with atomic_path(stem.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(structure))


def read_state(stem: Path):
    """What write_state wrote; UserInputError naming the file when either file is damaged."""
    tensors = read_safetensors(stem.with_suffix(".safetensors"))
    structure = read_json(stem.with_suffix(".json"))

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if TENSOR in value or ARRAY in value:
            key = value.get(TENSOR, value.get(ARRAY))
            if key not in tensors:
                raise UserInputError(f"{stem.with_suffix('.json')} names tensor {key}, which "
                                     f"{stem.with_suffix('.safetensors')} lacks: the two files do not belong together")
            return tensors[key] if TENSOR in value else tensors[key].numpy()
        if TUPLE in value:
            return tuple(decode(v) for v in value[TUPLE])
        if ITEMS in value:
            return {decode(k): decode(v) for k, v in value[ITEMS]}
        return {k: decode(v) for k, v in value.items()}

    return decode(structure)
