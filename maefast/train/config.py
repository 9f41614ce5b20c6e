"""Training configuration: small dataclasses, YAML recipes, `--set section.key=value` overrides.

Every value is checked before any data is read; a bad one is refused with its key and what is allowed.
Built and overridden as every maefast config is (maefast.fields); the embedding job's is EmbedConfig.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from maefast.choices import ATTENTION_CHOICES, COMPILE_CHOICES, DALI_DEVICES, DEVICES, LOADER_BACKENDS, PRECISIONS
from maefast.data.decode import ERROR_POLICIES
from maefast.data.layouts import LAYOUTS
from maefast.data.plan import MAX_SEED
from maefast.errors import UserInputError
from maefast.fields import apply_assignment, build, safe_yaml, set_value


@dataclass
class ModelSection:
    name: str = "mae_vit_small_patch16_256"
    overrides: dict = field(default_factory=dict)  # create_model options, e.g. in_chans, decoder_depth
    # attention kernel of every attention site: auto (on a GPU the fastest, timed once at setup; recorded in
    # the run directory and the checkpoints, and reused on resume) or a backend: sdpa, cudnn, flash, ...
    attention: str = "auto"


@dataclass
class DataSection:
    path: str = ""                 # dataset root (stored absolute, so that a run resumes from any directory)
    synthetic: bool = False        # no data set: train on a synthetic screen rendered into <out>/data
    layout: str = "auto"           # auto | rxrx | jump | packed
    channels: list[str] = field(default_factory=list)  # names to select / reorder; empty: all, in stored order
    crop_size: int = 256
    crops_per_image: int = 1
    batch_size: int = 32
    num_workers: int = 2           # DALI threads or DataLoader worker processes
    backend: str = "auto"          # auto | dali | torch
    prefetch: int = 2              # batches a DALI pipeline runs ahead of the step
    dali_device: str = "auto"      # where DALI decodes, crops and flips: auto (the run's device) | cpu | gpu
    on_error: str = "raise"        # raise | skip
    allow_outside_root: bool = False  # let metadata paths leave the data root (open_dataset's opt-in)
    synthetic_genes: int = 12      # synthetic screen (data.synthetic): perturbed genes, 2 wells each
    synthetic_site_size: int = 256


@dataclass
class OptimSection:
    name: str = "lion"             # lion | adamw
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.1   # one-cycle: linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0         # max global grad norm; 0 disables
    accumulation: int = 1


@dataclass
class RunSection:
    max_steps: int = 1000
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda
    precision: str = "auto"        # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32 | fp8 (bf16 + FP8 GEMMs)
    compile: str | bool = "auto"   # auto (torch.compile on CUDA, not on the CPU) | true | false (job_setup.RunSetup)
    # recompute each block's activations in the backward: false | true (= full: keep only block inputs) |
    # selective (keep matmul and attention outputs, recompute the cheap ops)
    activation_checkpointing: bool | str = False
    parallel: str = "ddp"          # ddp | fsdp (only used under torchrun with world size > 1)
    checkpoint_every: int = 200
    # auto: sharded under FSDP (every rank writes its part, asynchronously), whole otherwise (rank 0 writes
    # model.safetensors); see maefast.train.sharded. Either kind resumes on any world size.
    checkpoint_format: str = "auto"
    keep_checkpoints: int = 3
    log_every: int = 10
    image_every: int = 200
    nonfinite_limit: int = 5       # consecutive non-finite losses tolerated before stopping


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.attention": ATTENTION_CHOICES,
    "run.compile": COMPILE_CHOICES,
    "data.layout": ("auto", *LAYOUTS),
    "data.backend": LOADER_BACKENDS,
    "data.dali_device": DALI_DEVICES,
    "data.on_error": ERROR_POLICIES,
    "data.allow_outside_root": (False, True),
    "optim.name": ("lion", "adamw"),
    "run.device": DEVICES,
    "run.precision": PRECISIONS,
    "run.parallel": ("ddp", "fsdp"),
    "run.checkpoint_format": ("auto", "whole", "sharded"),
    "run.activation_checkpointing": (False, True, "full", "selective"),
}
POSITIVE = ("data.crop_size", "data.crops_per_image", "data.batch_size", "data.prefetch", "data.synthetic_genes",
            "data.synthetic_site_size", "optim.accumulation", "run.max_steps", "run.checkpoint_every",
            "run.keep_checkpoints", "run.log_every", "run.image_every", "run.nonfinite_limit")


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("maefast.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return recipe_mapping(safe_yaml(path.read_text(), f"recipe {path}"), f"recipe {path}")
    if name_or_path not in recipe_names():
        raise UserInputError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(recipe_names())} "
                             f"(or a path to a .yaml file)")
    text = resources.files("maefast.recipes").joinpath(f"{name_or_path}.yaml").read_text()
    return recipe_mapping(safe_yaml(text, f"recipe {name_or_path}"), f"recipe {name_or_path}")


def recipe_mapping(raw, what: str) -> dict:
    """A recipe is a mapping of sections to mappings (an empty file is an empty recipe)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserInputError(f"{what}: expected a mapping of sections ({', '.join(SECTIONS)}), got a "
                             f"{type(raw).__name__}")
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise UserInputError(f"{what}: section {name!r} must be a mapping of keys to values, got a "
                                 f"{type(values).__name__}")
    return raw


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "run": RunSection}


def build_config(raw: dict) -> TrainConfig:
    """The config of a recipe's dict (with its overrides applied), checked (validate), its data path absolute.
    A model key other than ModelSection's is a create_model option: `--set model.global_pool=avg` is
    `--set model.overrides.global_pool=avg`."""
    model = raw.get("model")
    if isinstance(model, dict):
        options = {key: model.pop(key) for key in list(model) if key not in {f.name for f in
                                                                             dataclasses.fields(ModelSection)}}
        if options:
            model["overrides"] = {**(model.get("overrides") or {}), **options}
    config = build(TrainConfig, raw)
    validate(config)
    config.data.path = absolute_data_path(config.data.path)
    return config


def absolute_data_path(path: str) -> str:
    """A local data path as a run stores it: absolute, so that a resume from another directory reads the same data
    (a URL such as s3://bucket/screen stays as it is)."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def validate(config: TrainConfig) -> None:
    flat = {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise UserInputError(f"{key}={flat[key]!r} is not allowed; choose one of {allowed}")
    for key in POSITIVE:
        if flat[key] < 1:
            raise UserInputError(f"{key}={flat[key]!r} must be a positive integer")
    if config.data.num_workers < 0:
        raise UserInputError(f"data.num_workers={config.data.num_workers!r} must be >= 0 (0: read in the training "
                             f"process)")
    if not 0 <= config.run.seed <= MAX_SEED:
        raise UserInputError(f"run.seed={config.run.seed!r} must be an integer from 0 to {MAX_SEED}")
    optim = config.optim
    if optim.lr <= 0:
        raise UserInputError(f"optim.lr={optim.lr!r} must be a positive number")
    if optim.weight_decay < 0:
        raise UserInputError(f"optim.weight_decay={optim.weight_decay!r} must be >= 0")
    if not all(0 <= b < 1 for b in optim.betas):
        raise UserInputError(f"optim.betas={list(optim.betas)!r} must be two numbers in [0, 1)")
    if not 0 <= optim.warmup_fraction < 1:
        raise UserInputError(f"optim.warmup_fraction={optim.warmup_fraction!r} must be in [0, 1)")
    if not 0 <= optim.min_lr_ratio <= 1:
        raise UserInputError(f"optim.min_lr_ratio={optim.min_lr_ratio!r} must be in [0, 1]")
    if optim.grad_clip < 0:
        raise UserInputError(f"optim.grad_clip={optim.grad_clip!r} must be >= 0 (0 disables clipping)")
    from maefast.models.families import FAMILIES, family_of, trainable_names
    from maefast.models.registry import create_model, input_config, list_models
    if config.model.name not in list_models():
        raise UserInputError(f"model.name={config.model.name!r} is not a registered model; "
                             f"trainable models: {trainable_names(list_models())}")
    family = family_of(config.model.name)
    if not family.trainable:
        kinds = ", ".join(f"{f.name} (e.g. {min(f.variants)})" for f in FAMILIES if f.trainable)
        raise UserInputError(f"model.name={config.model.name!r} ({family.name} family) cannot be trained; the "
                             f"trainable families are {kinds}")
    # options the data set gives at training time (a classifier's num_classes) take a stand-in value here
    overrides = {**family.build_options, **config.model.overrides}
    try:
        with torch.device("meta"):  # checks every model value without allocating weights
            model = create_model(config.model.name, **overrides)
    except UserInputError as error:
        raise UserInputError(f"model.overrides: {error}") from None
    img_size = input_config(model).img_size
    if config.data.crop_size != img_size:
        raise UserInputError(f"data.crop_size={config.data.crop_size} must equal the model's img_size {img_size}")


def load_config(recipe: str, assignments: list[str] | None = None, values: dict | None = None) -> TrainConfig:
    """The recipe, then the `--set` assignments ("section.key=value" text), then `values` ({"section.key": value},
    already typed: the command line's own flags), checked."""
    raw = read_recipe(recipe)
    for assignment in assignments or []:
        apply_assignment(raw, assignment)
    for key, value in (values or {}).items():
        set_value(raw, key, value)
    return build_config(raw)
