"""Regional compilation: torch.compile each repeated block of a model instead of the whole model.

A ViT's blocks run the same code on different weights, so dynamo traces and inductor compiles one block and
every identical block reuses that graph (the drop-path rate is a tensor, so blocks differing only in it stay
identical; a block without drop path is a second graph). Compile time then no longer grows with depth: ViT-L's
24 encoder blocks cost what one does. What runs between the blocks (the tokenizer and the other fused ops,
which are opaque custom ops anyway, the final norm, the decoder's projections and the loss) stays eager.
"""
from __future__ import annotations

import torch.nn as nn

from maefast.models.families import family_of


def compile_regions(model: nn.Module, blocks: list[nn.Module] | None = None, **options) -> list[nn.Module]:
    """Compiles each of `blocks` in place (default: the model family's blocks, e.g. an MAE's encoder and
    decoder blocks) with torch.compile(fullgraph=True, **options); returns them. The model is used as before;
    `torch.compiler.set_stance("force_eager")` runs it uncompiled."""
    blocks = family_of(model).blocks(model) if blocks is None else list(blocks)
    for block in blocks:
        block.compile(**{"fullgraph": True, **options})
    return blocks
