"""The embedding job's configuration, as the training job's: one typed dataclass whose fields are the one table
of defaults, overridden the same way from the command line and from Python.

    maefast embed --checkpoint C --data D --out O --batch-size 32 --set tile_batch=256
    maefast.embed("C", "D", "O", batch_size=32, overrides=["tile_batch=256"])

Both build the same EmbedConfig: the defaults below, then `--set key=value` assignments (YAML values), then the
typed values of the flags or keyword arguments; every value is checked before anything is read. The job saves
the effective config as <out>/config.yaml. The flags of `maefast embed` are made from these fields (name,
type, default, help), so the command line and the API cannot drift apart.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from maefast.choices import ATTENTION_CHOICES, COMPILE_CHOICES, DEVICES, LOADER_BACKENDS, PRECISIONS, WEIGHTS_LAYOUTS
from maefast.data.decode import ERROR_POLICIES
from maefast.data.layouts import LAYOUTS
from maefast.errors import UserInputError
from maefast.fields import apply_assignment, build, matches
from maefast.tables import FORMATS


def setting(default, help: str, **options):
    """A field with its help text (what `maefast embed --help` shows); flag=False: set with --set only."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **options})
    return field(default=default, metadata={"help": help, **options})


@dataclass
class EmbedConfig:
    checkpoint: str = setting("", "maefast checkpoint folder, training run folder, reference (OpenPhenom) folder, "
                                  "Hugging Face Hub id (owner/name), or timm/reference weights file", required=True)
    data: str = setting("", "data set root (rxrx, jump or packed)", required=True)
    model: str | None = setting(None, "architecture of a bare weights file, e.g. vit_large_patch8_256 (its block "
                                      "type, pooling and biases are read from the weights)")
    model_options: dict = setting({}, "create_model options over the checkpoint's, e.g. --set model.global_pool=avg "
                                      "(--set model.KEY=VALUE sets model_options.KEY)", flag=False)
    weights_layout: str = setting("auto", "layout of the checkpoint's weights")
    trust_pickle: bool = setting(False, "allow weights stored as a torch pickle (as the reference's "
                                        "model.safetensors is), loaded with torch.load(weights_only=True)")
    layout: str = setting("auto", "data set layout")
    channels: list[str] = setting([], "channel names to use, in order (comma-separated); empty: the checkpoint's "
                                      "channels, else the data set's")
    allow_outside_root: bool = setting(False, "let file paths in the data set's metadata leave its root "
                                              "(refused by default)")
    pool: str = setting("mean", "mean of the patch tokens, or the CLS token")
    per_channel: bool = setting(False, "CA-MAE: one embedding per channel, concatenated")
    batch_size: int = setting(16, "images per loader batch (each gives several tiles)")
    shard_size: int = setting(1024, "images per output shard")
    precision: str = setting("auto", "auto: bf16 on CUDA, fp32 on the CPU; fp8: bf16 with the encoder's large GEMMs "
                                     "in FP8 (torchao, the fp8 extra; GPUs with FP8 tensor cores, emulated on the "
                                     "CPU)")
    compile: str | bool = setting("auto", "torch.compile with fixed shapes and CUDA graphs (auto: on CUDA)")
    attention: str = setting("auto", "attention kernel of every site: auto (on CUDA the fastest, timed once) or a "
                                     "backend")
    tile_batch: int | str = setting("auto", "tiles per encoder forward: auto (on CUDA the largest batch that fits "
                                            "and still gets faster, timed once; elsewhere one loader batch's tiles) "
                                            "or a number")
    blocks: str | list[int] | None = setting(None, "embed these encoder blocks from one forward, one row per site "
                                                   "and block (a block column): all, last, or 0-based indices "
                                                   "such as 8,12,16 (negative: from the end); unset: the final "
                                                   "embedding only")
    backend: str = setting("auto", "loader backend")
    on_error: str = setting("raise", "an image that cannot be read: raise, or skip it (listed in the manifest)")
    workers: int | None = setting(None, "loader threads / processes (0: read in this process)")
    device: str = setting("auto", "auto: CUDA when there is one")
    format: str = setting("parquet", "also write the finished sites and wells as AnnData (sites.h5ad, "
                                     "wells.h5ad) or pycytominer tables (sites.pycytominer.csv.gz / .parquet); "
                                     "parquet shards always")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        values = self.to_dict()
        for key, allowed in CHOICES.items():
            if values[key] not in allowed:
                raise UserInputError(f"{key}={values[key]!r} is not allowed; choose one of {allowed}")
        for key in ("checkpoint", "data"):
            if not values[key]:
                raise UserInputError(f"{key} is required: the {'encoder' if key == 'checkpoint' else 'data set'} "
                                     f"to embed with")
        for key in ("batch_size", "shard_size"):
            if values[key] < 1:
                raise UserInputError(f"{key}={values[key]!r} must be a positive integer")
        if self.workers is not None and self.workers < 0:
            raise UserInputError(f"workers={self.workers!r} must be >= 0 (0: read in this process)")
        if self.tile_batch != "auto" and not (matches(self.tile_batch, int) and self.tile_batch >= 1):
            raise UserInputError(f"tile_batch must be 'auto' or a positive integer, got {self.tile_batch!r}")
        if (isinstance(self.blocks, str) and self.blocks not in BLOCK_NAMES) or self.blocks == []:
            raise UserInputError(f"blocks must be {' or '.join(BLOCK_NAMES)} or block indices such as 8,12,16, "
                                 f"got {self.blocks!r}")


BLOCK_NAMES = ("all", "last")


def block_selection(value):
    """EmbedConfig.blocks from how it is written: "all" / "last", indices as text ("8,12,16", the command line's
    and `--set`'s form), one index (`--set blocks=8`) or a list; anything else is left for validate to name."""
    if isinstance(value, str) and value not in BLOCK_NAMES:
        try:
            return [int(part) for part in value.split(",")]
        except ValueError:
            return value
    if matches(value, int):
        return [value]
    return value


CHOICES = {
    "weights_layout": WEIGHTS_LAYOUTS,
    "layout": ("auto", *LAYOUTS),
    "pool": ("mean", "cls"),
    "precision": PRECISIONS,
    "compile": COMPILE_CHOICES,
    "attention": ATTENTION_CHOICES,
    "backend": LOADER_BACKENDS,
    "on_error": ERROR_POLICIES,
    "device": DEVICES,
    "format": FORMATS,
}


MODEL_OPTION = "model."  # `--set model.KEY=VALUE` sets model_options.KEY (model itself is the architecture's name)


def embed_config(values: dict | None = None, assignments: list[str] | None = None) -> EmbedConfig:
    """The checked EmbedConfig of the defaults, then the `--set` assignments ("key=value" text), then `values`
    ({key: value}, already typed: keyword arguments or the command line's flags)."""
    raw: dict = {}
    for assignment in assignments or []:
        if assignment.startswith(MODEL_OPTION):  # model.global_pool=avg: an option of the architecture
            apply_assignment(raw.setdefault("model_options", {}), assignment.removeprefix(MODEL_OPTION))
        else:
            apply_assignment(raw, assignment)
    raw.update(values or {})
    if "blocks" in raw:
        raw["blocks"] = block_selection(raw["blocks"])
    config = build(EmbedConfig, raw)
    config.validate()
    return config
