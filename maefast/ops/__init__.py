"""Fused ops: each file holds the PyTorch reference (the specification) and the dispatch to kernels."""
from maefast.ops.attention import attention, attention_reference
from maefast.ops.mae_loss import MAELoss, mae_loss, mae_loss_reference
from maefast.ops.masking import Mask, all_tokens, random_masking
from maefast.ops.patches import patchify, self_standardize, unpatchify
from maefast.ops.tokenize import masked_targets, tokenize, tokenize_reference
from maefast.ops.unshuffle import unshuffle, unshuffle_reference

__all__ = [
    "attention", "attention_reference", "MAELoss", "mae_loss", "mae_loss_reference", "Mask",
    "all_tokens", "random_masking", "patchify", "self_standardize", "unpatchify", "masked_targets",
    "tokenize", "tokenize_reference", "unshuffle", "unshuffle_reference",
]
