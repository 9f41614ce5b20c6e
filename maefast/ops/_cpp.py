"""Zero-copy views of CPU tensors for maefast._C (buffer protocol), and the element kinds it understands.

numpy has no bfloat16, so 16-bit floats travel as int16 views; `kind` tells the C++ side what they are
(csrc/common.h keeps the same numbering).
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch

KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.uint8: 3, torch.uint16: 4, torch.int64: 5}


def kind(dtype: torch.dtype) -> int:
    if dtype not in KIND:
        raise TypeError(f"maefast._C does not take {dtype}; expected one of {list(KIND)}")
    return KIND[dtype]


NUMPY = {torch.float32: np.float32, torch.int16: np.int16, torch.uint8: np.uint8, torch.uint16: np.uint16,
         torch.int64: np.int64}


def buffer(tensor: torch.Tensor) -> np.ndarray:
    """A writable numpy view of `tensor`'s memory (a contiguous CPU tensor), kept alive by the view.

    Built from the data pointer rather than Tensor.numpy(), which marks the storage as never resizable
    again, and FSDP frees unsharded parameters by resizing their storage to zero.
    """
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError(f"maefast._C takes contiguous CPU tensors, got {tensor.device} "
                         f"contiguous={tensor.is_contiguous()}")
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    raw = (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())
    raw.owner = tensor  # the numpy view holds `raw`, and `raw` holds the tensor
    return np.frombuffer(raw, dtype=NUMPY[tensor.dtype]).reshape(tensor.shape)
