"""Model registry: `create_model(name, **overrides)` builds any registered model; `list_models()` names them.

The names and builders come from the model families (maefast.models.families: every variant of every family is
registered here); `register(name, factory, family)` adds one more. Overrides are fields of the model's config,
e.g. `create_model("mae_vit_small_patch16_256", in_chans=5, decoder_depth=4, mask_ratio=0.9)`.

As in timm, a name may carry a pretrained tag after a dot (`ca_vit_small_patch16_256.openphenom`): the
architecture of the published weights (`PRETRAINED`), which `maefast.create_model(..., pretrained=True)`
(maefast.models.pretrained) then loads. `list_models("*vit_s*")` filters with shell wildcards; an unknown
name is answered with the closest registered ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from maefast.errors import UserInputError
from maefast.limits import format_bytes, memory_budget
from maefast.models.families import CA_ENCODER, CA_MAE, FAMILIES, ModelFamily, add_variant
from maefast.models.mae import MAEConfig
from maefast.models.reference import OPENPHENOM_RELEASE
from maefast.models.vit import ViTConfig

_REGISTRY: dict[str, Callable[..., object]] = {}


class UnknownModelError(UserInputError, KeyError):
    """A model name that is not registered (a KeyError, as a failed lookup is)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class PretrainedWeights:
    """Published weights of an architecture: where they are (a Hugging Face Hub id), how they are stored (a torch
    pickle: read with torch.load(weights_only=True)), and the create_model options that build their architecture."""
    hub_id: str
    layout: str
    trust_pickle: bool
    overrides: dict = field(default_factory=dict)
    description: str = ""


_OPENPHENOM = "recursionpharma/OpenPhenom"
_OPENPHENOM_ENCODER = {k: v for k, v in OPENPHENOM_RELEASE["overrides"].items() if k in {f.name for f in
                                                                                          dataclasses.fields(ViTConfig)}}
# "<architecture>.<tag>" -> the published weights; the first tag of an architecture is its default
PRETRAINED: dict[str, PretrainedWeights] = {
    f"{CA_MAE.variant('vit_small_patch16_256')}.openphenom": PretrainedWeights(
        _OPENPHENOM, "reference", True, dict(OPENPHENOM_RELEASE["overrides"]),
        "OpenPhenom (Recursion): the CA-MAE ViT-S/16 of Kraus et al. 2024, encoder for 1 to 11 channels, decoders "
        "for 6"),
    f"{CA_ENCODER.variant('vit_small_patch16_256')}.openphenom": PretrainedWeights(
        _OPENPHENOM, "reference", True, _OPENPHENOM_ENCODER, "OpenPhenom's encoder alone (what embeds)"),
}


def register(name: str, factory: Callable[..., object], family: ModelFamily | None = None) -> None:
    """Registers `factory(**overrides) -> model` under `name`; `family` (maefast.models.families) lets the
    trainer and the embedding job handle it as that family's models."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    if family is not None:
        add_variant(name, family)


def list_models(filter: str | list[str] = "", pretrained: bool = False,
                exclude_filters: str | list[str] = ()) -> list[str]:
    """The registered names, sorted; as timm's list_models: `filter` (shell wildcards, e.g. "*vit_s*", or a list of
    them) keeps the names matching any, `exclude_filters` drops those matching any, and pretrained=True lists the
    names with published weights, with their tags ("ca_vit_small_patch16_256.openphenom")."""
    names = sorted(PRETRAINED) if pretrained else sorted(_REGISTRY)
    keep = [filter] if isinstance(filter, str) else list(filter)
    drop = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    keep = [pattern for pattern in keep if pattern]
    return [name for name in names if (not keep or any(fnmatch.fnmatch(name, p) for p in keep))
            and not any(fnmatch.fnmatch(name, p) for p in drop)]


def split_name(name: str) -> tuple[str, str | None]:
    """("ca_vit_small_patch16_256", "openphenom") for "ca_vit_small_patch16_256.openphenom"; (name, None) untagged."""
    architecture, _, tag = name.partition(".")
    return architecture, tag or None


def pretrained_weights(name: str) -> tuple[str, PretrainedWeights]:
    """The tagged name and published weights of `name` (tagged, or an architecture: its default tag)."""
    architecture, tag = split_name(check_name(name))
    tagged = name if tag else next((n for n in PRETRAINED if split_name(n)[0] == architecture), None)
    if tagged is None or tagged not in PRETRAINED:
        raise UserInputError(f"no published weights for {name!r}; models with weights: "
                             f"{', '.join(list_models(pretrained=True))}")
    return tagged, PRETRAINED[tagged]


def check_name(name: str) -> str:
    """`name` when its architecture (and tag) are registered; else UnknownModelError with the closest names."""
    architecture, tag = split_name(name)
    if architecture not in _REGISTRY:
        close = difflib.get_close_matches(architecture, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownModelError(f"unknown model {architecture!r}; {hint}`maefast models` (maefast.list_models()) "
                                f"lists them all, e.g. list_models(\"*{architecture[:5]}*\")")
    if tag is not None and name not in PRETRAINED:
        tags = [n for n in PRETRAINED if split_name(n)[0] == architecture]
        raise UnknownModelError(f"{architecture!r} has no pretrained tag {tag!r}; "
                                + (f"its tags: {', '.join(tags)}" if tags else "it has no published weights"))
    return name


for _family in FAMILIES:
    for _name, _size in _family.variants.items():
        register(_name, _family.factory(_size))


def create_model(name: str, **overrides):
    """Builds a registered model (random weights; a tagged name: the architecture of its published weights, which
    maefast.create_model(..., pretrained=True) loads); `list_models()` names them all. A model whose weights would
    not fit in the memory available (maefast.limits) is refused before any of them is allocated."""
    architecture, tag = split_name(check_name(name))
    if tag is not None:
        overrides = {**PRETRAINED[name].overrides, **overrides}
    factory = _REGISTRY[architecture]
    model = build_within_memory(architecture, factory, overrides)
    if torch.get_default_device().type != "meta":
        model = factory(**overrides)
    model.model_name = architecture
    return model


class _OverBudget(Exception):
    pass


def build_within_memory(name: str, factory, overrides: dict):
    """The model built on the meta device (no memory allocated), its weights and buffers counted as they
    are registered: UserInputError as soon as they pass the memory budget (a depth of 100000 stops after a
    few hundred blocks instead of building them all)."""
    budget, limit = memory_budget()
    total = 0

    def count(module, tensor_name, tensor):
        nonlocal total
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
            if total > budget:
                raise _OverBudget

    hooks = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            return factory(**overrides)
    except _OverBudget:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
        raise UserInputError(f"model {name}{f' ({options})' if options else ''}: its weights need more than "
                             f"{format_bytes(budget)}, {limit}; choose a smaller model") from None
    finally:
        for hook in hooks:
            hook.remove()


def model_config_dict(model) -> dict:
    """The config that rebuilds `model` with create_model (kept in checkpoints)."""
    config = model.config
    if isinstance(config, MAEConfig):
        fields = dataclasses.asdict(config)
        encoder = fields.pop("encoder")
        return {**encoder, **fields}
    return dataclasses.asdict(config)


def input_config(model):
    """The config that describes a model's input (img_size, in_chans, channel_agnostic, max_in_chans)."""
    config = model.config
    return config.encoder if isinstance(config, MAEConfig) else config
