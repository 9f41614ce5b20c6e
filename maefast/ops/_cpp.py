"""Zero-copy views of CPU tensors for maefast._C (buffer protocol), and the element kinds it understands.

numpy has no bfloat16, so 16-bit floats travel as int16 views; `kind` tells the C++ side what they are
(csrc/common.h keeps the same numbering).
"""
from __future__ import annotations

import torch

KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.uint8: 3, torch.uint16: 4, torch.int64: 5}


def kind(dtype: torch.dtype) -> int:
    if dtype not in KIND:
        raise TypeError(f"maefast._C does not take {dtype}; expected one of {list(KIND)}")
    return KIND[dtype]


def buffer(tensor: torch.Tensor):
    """A numpy view sharing memory with `tensor` (which must be a contiguous CPU tensor)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError(f"maefast._C takes contiguous CPU tensors, got {tensor.device} "
                         f"contiguous={tensor.is_contiguous()}")
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return tensor.numpy()
