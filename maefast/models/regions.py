"""Regional compilation: torch.compile each repeated block of a model instead of the whole model.

A ViT's blocks run the same code on different weights, so dynamo traces and inductor compiles one block and
every identical block reuses that graph (the drop-path rate is a tensor, so blocks differing only in it stay
identical; a block without drop path is a second graph). Compile time then no longer grows with depth: ViT-L's
24 encoder blocks cost what one does. What runs between the blocks (the tokenizer and the other fused ops,
which are opaque custom ops anyway, the final norm, the decoder's projections and the loss) stays eager.

Only each block's `forward` is compiled, not the module's call: the hooks the jobs attach to a block
(activation checkpointing, FSDP2's all-gathers) run outside its graph, as they do around torchtitan's compiled
blocks, so a block compiles the same with or without them. Parameter names do not change.
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn

from maefast.models.families import family_of


def compile_regions(model: nn.Module, blocks: list[nn.Module] | None = None, **options) -> list[nn.Module]:
    """Compiles the forward of each of `blocks` in place with torch.compile(fullgraph=True, **options) and
    returns them. blocks: default the model family's blocks (an MAE's encoder and decoder blocks), or the whole
    model for a family without repeated blocks (the MU-Net, whose stages all differ). The model is used as
    before; `torch.compiler.set_stance("force_eager")` runs it uncompiled."""
    if blocks is None:
        blocks = family_of(model).blocks(model) or [model]
    for block in blocks:
        # the class's forward compiled and bound to the block, as an instance attribute: nn.Module.__call__ runs
        # it between the module's hooks, and a deep copy of the model binds it to the copied block
        compiled = torch.compile(type(block).forward, **{"fullgraph": True, **options})
        block.forward = types.MethodType(compiled, block)
    return list(blocks)
