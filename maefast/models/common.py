"""Pieces shared by the models, their configs and the registry's factories."""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.utils._pytree as pytree

from maefast.errors import UnknownOptionError, UserInputError


class TrainingOutput(tuple):
    """What a model's training forward computes: `loss, pred, mask = model(pixels)` as a tuple, and by name
    `.loss`, `.pred`, `.mask` and `.parts`, the named terms of the loss ({"mse": ..., "fourier": ...} for the
    masked models; {} when the loss has no parts). pred is what the model predicts (the masked models'
    patches, a classifier's logits); mask is None where nothing is masked. It passes through torch.compile
    and the distributed wrappers as a pytree (the tensors of loss, pred, mask and the parts)."""

    def __new__(cls, loss: torch.Tensor | None, pred: torch.Tensor, mask: torch.Tensor | None,
                parts: dict[str, torch.Tensor] | None = None):
        output = super().__new__(cls, (loss, pred, mask))
        output.parts = dict(parts or {})
        return output

    @property
    def loss(self) -> torch.Tensor | None:
        return self[0]

    @property
    def pred(self) -> torch.Tensor:
        return self[1]

    @property
    def mask(self) -> torch.Tensor | None:
        return self[2]

    def __repr__(self) -> str:
        return f"TrainingOutput(loss={self.loss!r}, parts={list(self.parts)})"


def _flatten_output(output: TrainingOutput):
    return [*output, *output.parts.values()], list(output.parts)


def _unflatten_output(values, part_names: list[str]) -> TrainingOutput:
    values = list(values)
    return TrainingOutput(*values[:3], dict(zip(part_names, values[3:])))


pytree.register_pytree_node(TrainingOutput, _flatten_output, _unflatten_output,
                            serialized_type_name="maefast.models.common.TrainingOutput")


def inference(method):
    """For a model's feature entry points (embed, forward_features): they run as inference whatever the module's
    mode, under torch.inference_mode (no_grad with FP8 GEMMs; either way no autograd graph, no activations kept)
    and with eval semantics (no drop path), the module's mode restored afterwards. Inside torch.compile the
    caller's context stands (the embedding job compiles an eval, no-grad forward). Features with gradients: the
    model's own forward, or forward_tokens."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return method(self, *args, **kwargs)
        training = self.training
        # torchao's FP8 training tensors refuse inference mode (a row-wise scaled input cannot be reshaped there),
        # so a model with FP8 GEMMs (maefast.models.fp8 marks it) runs under no_grad, also without a graph
        with torch.no_grad() if getattr(self, "runs_fp8", False) else torch.inference_mode():
            if training:
                self.train(False)
            try:
                return method(self, *args, **kwargs)
            finally:
                if training:
                    self.train(True)
    return run


class PatchGrid:
    """For configs with img_size and patch_size: the side and size of the patch grid."""

    img_size: int
    patch_size: int

    @property
    def grid_side(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_side ** 2


class InputChannels:
    """For input configs with `in_chans` (and, on channel-agnostic ViTs, `max_in_chans`): the one check of how
    many channels a model takes."""

    in_chans: int
    channel_agnostic = False  # a class default: ViTConfig makes it a field

    def accepted_channels(self) -> str:
        return f"1 to max_in_chans={self.max_in_chans}" if self.channel_agnostic else f"in_chans={self.in_chans}"

    def takes_channels(self, count: int) -> bool:
        return 1 <= count <= self.max_in_chans if self.channel_agnostic else count == self.in_chans

    def check_channels(self, count: int, source: str = "the input", advice: str = "") -> None:
        """UserInputError when a model of this config cannot take `count` channels: "<source> has <count>
        channels; the model takes in_chans=3<advice>"."""
        if not self.takes_channels(count):
            raise UserInputError(f"{source} has {count} channels; the model takes {self.accepted_channels()}"
                                 f"{advice}")


def field_names(config_class) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def reject_unknown_options(overrides: dict, **options_by_part: set[str]) -> None:
    """UnknownOptionError (a TypeError) naming the options no part accepts, and each part's options (part
    names as given)."""
    unknown = set(overrides).difference(*options_by_part.values())
    if unknown:
        listed = ", ".join(f"{part.replace('_', '-')} options: {sorted(names)}"
                           for part, names in options_by_part.items())
        raise UnknownOptionError(f"unknown model option(s) {sorted(unknown)}; {listed}")
