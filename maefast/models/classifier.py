"""Weakly supervised learning (WSL) baseline: the papers' ViT encoder trained to classify perturbations.

Kraus et al. 2024 (arXiv 2404.10242) compare MAEs with classifiers trained on the perturbation label of
each image (e.g. the siRNA), embedding with the classifier's penultimate features.

`loss, logits, None = model(pixels, labels)`: pixels (B, C, H, W) integer or float in [0, 1], labels (B,)
int64 class indices; loss is cross-entropy (optional label smoothing), None when labels is None. The
third output keeps the (loss, prediction, mask) shape of the masked models. Its model family
(maefast.models.families) tells the trainer to pass the labels. `model.embed(pixels)` -> (B, D): the
features the linear head reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from maefast.errors import UserInputError
from maefast.models.common import TrainingOutput, field_names, inference, reject_unknown_options
from maefast.models.vit import VisionTransformer, ViTConfig


@dataclass
class ClassifierConfig(ViTConfig):
    """The encoder's fields (flat, as ViTConfig) plus the head's; num_classes has no usable default."""
    num_classes: int = 0
    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.channel_agnostic:
            raise UserInputError("the WSL classifier uses a C-channel encoder; channel_agnostic must be False")
        if self.num_classes < 2:
            raise UserInputError(f"num_classes must be at least 2, got {self.num_classes}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserInputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def encoder_config(self) -> ViTConfig:
        """The encoder's fields; its own head is none (the classifier's head is `head`)."""
        return ViTConfig(**{**{name: getattr(self, name) for name in field_names(ViTConfig)}, "num_classes": 0})


class WeaklySupervisedClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = VisionTransformer(config.encoder_config())
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)  # small logits at first: loss starts near log(num_classes)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def num_tokens(self, channels: int) -> int:
        return self.encoder.num_tokens(channels)

    def check_labels(self, labels: torch.Tensor, batch: int) -> None:
        if labels.shape != (batch,):
            raise UserInputError(f"labels must have shape ({batch},) for {batch} images, got {tuple(labels.shape)}")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
        if torch.compiler.is_compiling():
            return  # the range check reads the labels (a device sync); eager calls make it, compiled steps skip it
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.config.num_classes:
            raise UserInputError(f"labels must be in [0, {self.config.num_classes}), got values in [{low}, {high}]")

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> TrainingOutput:
        """Returns (loss or None, logits (B, num_classes), None); the loss has no parts."""
        logits = self.forward_head(self.encoder.forward_tokens(pixels))
        if labels is None:
            return TrainingOutput(None, logits, None)
        self.check_labels(labels, pixels.shape[0])
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        return TrainingOutput(loss, logits, None)

    # timm's API, as on the encoders (forward_features and embed: inference, maefast.models.common.inference)
    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(pixels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.encoder.forward_head(features, pre_logits=True)
        return pooled if pre_logits else self.head(pooled)

    @inference
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) penultimate features: the encoder's pooled output (CLS or patch mean per global_pool)."""
        return self.forward_head(self.forward_features(pixels), pre_logits=True)

    @property
    def num_blocks(self) -> int:
        return self.encoder.num_blocks

    def forward_intermediates(self, pixels: torch.Tensor, *args, **options):
        return self.encoder.forward_intermediates(pixels, *args, **options)

    def embed_blocks(self, pixels: torch.Tensor, blocks=None, pool: str = "mean",
                     per_channel: bool = False) -> torch.Tensor:
        """(B, K, D) the encoder's block-wise embeddings (VisionTransformer.embed_blocks: normed block tokens,
        mean or CLS; not the head's input, which adds fc_norm for global_pool="avg")."""
        return self.encoder.embed_blocks(pixels, blocks, pool, per_channel)


def classifier_factory(encoder_fields: dict):
    known = field_names(ClassifierConfig)

    def build(**overrides):
        reject_unknown_options(overrides, classifier=known)
        if "num_classes" not in overrides:
            raise TypeError("a WSL classifier needs num_classes=<number of perturbation classes>")
        return WeaklySupervisedClassifier(ClassifierConfig(**{**encoder_fields, **overrides}))
    return build
