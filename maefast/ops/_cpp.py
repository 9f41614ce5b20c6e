"""Zero-copy views of CPU tensors for maefast._C (buffer protocol), and the element kinds it understands.

numpy has no bfloat16, so 16-bit floats travel as int16 views; `kind` tells the C++ side what they are,
with the numbering the extension itself exports (maefast._C.ELEMENT_KINDS, from csrc/common.h's enum).
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch

from maefast.ops.backend import cpp_extension


def kind(dtype: torch.dtype) -> int:
    kinds = cpp_extension().ELEMENT_KINDS
    name = str(dtype).removeprefix("torch.")
    if name not in kinds:
        raise TypeError(f"maefast._C does not take {dtype}; expected one of {sorted(kinds)}")
    return kinds[name]


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
