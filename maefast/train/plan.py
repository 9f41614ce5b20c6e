"""`maefast plan`: the per-GPU memory and the step time of a training job, before it runs.

For a model, a batch per GPU, a world size, a precision and a GPU's memory: the bytes of the parameters,
gradients and optimizer state (whole under DDP, divided by the world size under FSDP2), FSDP2's gathered
blocks, and the activations autograd keeps between the forward and the backward, without activation
checkpointing, with selective and with full recomputation; the largest batch that fits; the step time the
FLOP count gives at a matmul rate.

The activations are counted per op from what each op of maefast's forward saves for its backward (the
tensors `torch.autograd.graph.saved_tensors_hooks` sees), per token of each block type: `encoder_block_bytes`,
`decoder_block_bytes`, the CA-MAE decoder's shared cross-attention, and the stem and head of the model
(tokenizer, norms, projections, loss). Matmul inputs and outputs and attention outputs take the activation
dtype (bf16 under autocast, else fp32); LayerNorm inputs and statistics, the attention's log-sum-exp and the
loss are fp32 (CUDA autocast runs LayerNorm in fp32; the encoder's residual stream stays fp32). fp32 counts
are checked against the saved tensors and the measured peak of small models on the CPU
(tests/train/test_plan.py); CPU autocast runs LayerNorm in bf16, so the bf16 counts (CUDA autocast's rules)
are not measured on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from maefast.errors import UserInputError
from maefast.models.mae import MAEConfig

RECOMPUTE = ("none", "selective", "full")
OPTIMIZER_MOMENTS = {"lion": 1, "adamw": 2}  # fp32 values per parameter
PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("bf16", "fp32")
# Of a GPU's memory, the share a job's tensors may fill: the rest is the CUDA context, NCCL's buffers and the
# caching allocator's fragmentation.
USABLE_SHARE = 0.9
FP32 = 4
INDEX = 8  # int64 indices


@dataclass(frozen=True)
class Dtypes:
    """Bytes per value of what a block saves: `act` for matmul inputs / outputs and attention outputs, `param`
    for a block's parameters as its forward reads them (bf16 when FSDP2 gathers them in bf16), `cast` whether
    autocast makes 16-bit copies (a LayerNorm's input is then cast back to fp32 and saved so)."""
    act: int
    param: int

    @property
    def cast(self) -> bool:
        return self.act < FP32

    @staticmethod
    def of(precision: str, parallel: str) -> Dtypes:
        if precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fp32":
            return Dtypes(act=FP32, param=FP32)
        return Dtypes(act=2, param=2 if parallel == "fsdp" else FP32)


def layer_norm_bytes(dim: int) -> int:
    """Per token: the fp32 input (or its fp32 copy under autocast) and the mean and 1/std."""
    return FP32 * dim + 2 * FP32


def encoder_block_bytes(dim: int, hidden: int, heads: int, dtypes: Dtypes) -> int:
    """Per token, what one encoder block (models.layers.ParallelBlock.forward) saves."""
    a = dtypes.act
    qk_norm_inputs = 2 * FP32 * dim if dtypes.cast else 0  # fp32 copies of q and k (else views of in_proj's output)
    return (layer_norm_bytes(dim) + a * dim + a * (hidden + 3 * dim)  # in_norm, in_proj in and out
            + qk_norm_inputs + 2 * heads * 2 * FP32  # q and k LayerNorms' statistics per head
            + 3 * a * dim + heads * FP32  # attention: normed q and k, output; log-sum-exp
            + a * hidden + a * (dim + hidden))  # GELU's input, the fused out-projection's input


def encoder_block_fixed_bytes(dim: int, hidden: int, dtypes: Dtypes) -> int:
    """What one encoder block saves whatever the batch: its fused out-projection weight (the two weights side
    by side, times LayerScale) before and after the scaling; under DDP with autocast the bf16 copies of that
    product and of the in-projection's weight (autocast's cast of a parameter is saved, FSDP2 gathers them)."""
    out_weight = dim * (dim + hidden)
    fixed = 2 * dtypes.param * out_weight
    if dtypes.cast and dtypes.param == FP32:
        fixed += dtypes.act * out_weight + dtypes.act * dim * (hidden + 3 * dim)
    return fixed


def decoder_block_bytes(dim: int, hidden: int, heads: int, dtypes: Dtypes) -> int:
    """Per token, what one decoder block (models.layers.Block) saves."""
    a = dtypes.act
    attention = a * dim + 3 * a * dim + a * dim + heads * FP32  # qkv input and output, attention output, lse
    mlp = a * dim + 2 * a * hidden  # fc1 input, GELU input, fc2 input
    return 2 * layer_norm_bytes(dim) + attention + mlp


def decoder_block_fixed_bytes(dim: int, hidden: int, dtypes: Dtypes) -> int:
    """Under DDP with autocast, the bf16 copies of the block's weights (saved by its matmuls)."""
    if dtypes.cast and dtypes.param == FP32:
        return dtypes.act * (4 * dim * dim + 2 * dim * hidden)
    return 0


def selective_encoder_block_bytes(dim: int, hidden: int, heads: int, dtypes: Dtypes) -> int:
    """Per token, what an encoder block keeps under selective recomputation (distributed.checkpoint_blocks:
    the outputs of matmuls and attention, and the block's input)."""
    a = dtypes.act
    return FP32 * dim + a * (hidden + 3 * dim) + a * dim + heads * FP32 + a * dim


def selective_decoder_block_bytes(dim: int, hidden: int, heads: int, dtypes: Dtypes) -> int:
    a = dtypes.act
    return a * dim + 3 * a * dim + a * dim + heads * FP32 + a * dim + a * hidden + a * dim


def mae_activations(config: MAEConfig, channels: int, dtypes: Dtypes, recompute: str = "none",
                    pixel_bytes: int = 1, block_gradients: tuple[int, int] = (0, 0)) -> Activations:
    """What a (CA-)MAE's training forward keeps for the backward, for images of `channels` channels.
    `block_gradients`: the bytes of the parameter gradients of an encoder block and of a decoder block, which
    the backward adds as it passes them."""
    if recompute not in RECOMPUTE:
        raise UserInputError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    enc, a = config.encoder, dtypes.act
    patches = enc.num_patches * (channels if enc.channel_agnostic else 1)
    kept = int(patches * (1.0 - config.mask_ratio))
    masked = patches - kept
    visible = kept + 1  # + CLS
    decoded = patches + 1
    dim, hidden, heads = enc.embed_dim, int(enc.embed_dim * enc.mlp_ratio), enc.num_heads
    ddim, dhidden, dheads = (config.decoder_embed_dim, int(config.decoder_embed_dim * config.decoder_mlp_ratio),
                             config.decoder_num_heads)
    patch_values = enc.patch_size ** 2 * (1 if enc.channel_agnostic else channels)

    # The forward's segments in order, each (images' bytes it saves, bytes it saves whatever the batch, bytes it
    # keeps under recomputation): the tokenizer, the encoder blocks, the encoder's norm and the projection to
    # the decoder (and the CA-MAE decoder's shared cross-attention and MLP), the decoder blocks, the head (the
    # decoder's norm, the prediction, the loss: prediction, gathered prediction, target, Fourier transform).
    stem = Segment(pixel_bytes * channels * enc.img_size ** 2 + INDEX * kept)
    encoder_block = Segment(visible * encoder_block_bytes(dim, hidden, heads, dtypes),
                            encoder_block_fixed_bytes(dim, hidden, dtypes), visible * FP32 * dim,
                            visible * selective_encoder_block_bytes(dim, hidden, heads, dtypes),
                            visible * 2 * a * (hidden + 3 * dim), block_gradients[0])
    middle = visible * (layer_norm_bytes(dim) + a * dim)
    decoder_tokens = patches // channels if enc.channel_agnostic else decoded
    decoder_block = Segment(decoder_tokens * decoder_block_bytes(ddim, dhidden, dheads, dtypes),
                            decoder_block_fixed_bytes(ddim, dhidden, dtypes), decoder_tokens * a * ddim,
                            decoder_tokens * selective_decoder_block_bytes(ddim, dhidden, dheads, dtypes),
                            decoder_tokens * 2 * a * max(3 * ddim, dhidden), block_gradients[1])
    head = decoded * (a * ddim + a * patch_values) + INDEX * masked + 4 * FP32 * masked * patch_values
    middle = [Segment(middle)]
    if enc.channel_agnostic:  # the shared cross-attention and MLP, then a decoder stack per channel
        norms = (2 if dtypes.cast else 1) * FP32 * ddim + 4 * FP32  # query and context norms of the same tokens
        middle.append(Segment(patches * (norms + 6 * a * ddim + config.cross_attention_heads * FP32)))
        middle.append(Segment(patches * (layer_norm_bytes(ddim) + a * (ddim + 2 * dhidden))))
        decoder_blocks = config.decoder_depth * channels
    else:
        head += decoded * layer_norm_bytes(ddim)
        decoder_blocks = config.decoder_depth
    segments = [stem, *[encoder_block] * enc.depth, *middle, *[decoder_block] * decoder_blocks, Segment(head)]
    return Activations(segments, recompute)


@dataclass(frozen=True)
class Segment:
    """A part of the forward: per image, the bytes it saves for the backward (`saved`), and under full or
    selective recomputation (`full`, `selective`: a block's input, or its matmul and attention outputs);
    `fixed`: bytes it saves whatever the batch. A part that is not a block is never recomputed."""
    saved: int
    fixed: int = 0
    full: int | None = None
    selective: int | None = None
    gradients: int | None = None  # per image, the gradients alive during its backward (default: `saved`)
    parameter_gradients: int = 0  # bytes of its parameters' gradients, from its backward to the optimizer step

    def kept(self, recompute: str) -> int:
        held = {"none": self.saved, "full": self.full, "selective": self.selective}[recompute]
        return self.saved if held is None else held


@dataclass(frozen=True)
class Activations:
    """The activations of a batch at their peak. The backward runs the segments in reverse: while it is in
    segment i, the segments before it still hold what they kept, and segment i holds everything it saved
    (recomputed if it was not kept) and about as much again in gradients of those tensors, and the parameter
    gradients of segment i and of those after it exist."""
    segments: list[Segment]
    recompute: str

    def at(self, batch: int) -> int:
        held, peak = 0, 0
        parameter_gradients = sum(segment.parameter_gradients for segment in self.segments)
        for segment in self.segments:
            kept = batch * segment.kept(self.recompute) + (segment.fixed if self.recompute == "none" else 0)
            gradients = segment.saved if segment.gradients is None else segment.gradients
            working = batch * (segment.saved + gradients) + segment.fixed
            peak = max(peak, held + working + parameter_gradients)
            held += kept
            parameter_gradients -= segment.parameter_gradients
        return peak


@dataclass(frozen=True)
class Plan:
    """One setting's memory per GPU (bytes) and step time."""
    model: str
    world_size: int
    parallel: str
    precision: str
    recompute: str
    optimizer: str
    batch: int  # images per GPU
    gpu_memory: int
    parameters: int  # count, whole model
    weights: int  # bytes per GPU: fp32 master weights
    gradients: int  # fp32 gradients (+ DDP's gradient buckets)
    optimizer_state: int
    gathered: int  # FSDP2: the bf16 blocks gathered (running and prefetched) and a block's unsharded gradient
    activations: Activations
    step_flops: int  # per GPU
    matmul_rate: float  # FLOP/s

    @property
    def static(self) -> int:
        """What is allocated outside the backward (the blocks' gradients are counted where it makes them)."""
        block_gradients = sum(segment.parameter_gradients for segment in self.activations.segments)
        return self.weights + self.gradients - block_gradients + self.optimizer_state + self.gathered

    @property
    def total(self) -> int:
        """The peak: in the backward, or at the optimizer step (every gradient, no activations)."""
        return max(self.static + self.activations.at(self.batch),
                   self.weights + self.gradients + self.optimizer_state + self.gathered)

    @property
    def peak_activations(self) -> int:
        """What the peak holds beyond the weights, all gradients, the optimizer state and the gathered blocks."""
        return self.total - (self.weights + self.gradients + self.optimizer_state + self.gathered)

    @property
    def usable(self) -> int:
        return int(self.gpu_memory * USABLE_SHARE)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    @property
    def largest_batch(self) -> int:
        """The most images per GPU whose memory fits (0: not even one)."""
        fits, too_many = 0, 1
        while self.static + self.activations.at(too_many) <= self.usable and too_many < 1 << 30:
            fits, too_many = too_many, 2 * too_many
        while too_many - fits > 1:  # the activations grow with the batch: bisect
            middle = (fits + too_many) // 2
            fits, too_many = (middle, too_many) if self.static + self.activations.at(middle) <= self.usable \
                else (fits, middle)
        return fits

    @property
    def step_seconds(self) -> float:
        return self.step_flops / self.matmul_rate


def meta_model(name: str, overrides: dict | None = None):
    """The registry's model `name` on the meta device (shapes, no memory)."""
    import torch

    from maefast.models.families import family_of
    from maefast.models.registry import create_model
    with torch.device("meta"):
        return create_model(name, **{**family_of(name).build_options, **(overrides or {})})


def plan_training(model, batch: int, world_size: int, gpu_memory: int, precision: str = "bf16",
                  parallel: str = "fsdp", recompute: str = "none", optimizer: str = "adamw",
                  channels: int | None = None, matmul_rate: float = 989e12, overrides: dict | None = None) -> Plan:
    """The plan of training `model` (a registry name of an MAE or CA-MAE, or such a model built by create_model,
    e.g. by meta_model) with `batch` images per GPU on `world_size` GPUs of `gpu_memory` bytes. `channels`: the
    images' channels (default the model's)."""
    from maefast.models.families import family_of
    if parallel not in PARALLEL:
        raise UserInputError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if optimizer not in OPTIMIZER_MOMENTS:
        raise UserInputError(f"optimizer must be one of {tuple(OPTIMIZER_MOMENTS)}, got {optimizer!r}")
    if batch < 1 or world_size < 1 or gpu_memory < 1 or matmul_rate <= 0:
        raise UserInputError(f"batch, world size, GPU memory and matmul rate must be positive, got {batch}, "
                             f"{world_size}, {gpu_memory}, {matmul_rate}")
    built = meta_model(model, overrides) if isinstance(model, str) else model
    family = family_of(built)
    if not isinstance(getattr(built, "config", None), MAEConfig):
        raise UserInputError(f"maefast plan counts the activations of MAEs and CA-MAEs; {built.model_name} is a "
                             f"{family.name} model")
    channels = built.config.encoder.in_chans if channels is None else channels
    dtypes = Dtypes.of(precision, parallel)
    parameters = sum(p.numel() for p in built.parameters())
    shards = world_size if parallel == "fsdp" else 1
    ddp_buckets = FP32 * parameters if parallel == "ddp" and world_size > 1 else 0
    block_parameters = [sum(p.numel() for p in block.parameters()) for block in family.blocks(built)]
    gathered = 0
    if parallel == "fsdp" and world_size > 1:
        gathered = (2 * dtypes.param + FP32) * max(block_parameters)
    # the gradients of an encoder block (the first) and of a decoder block (the last), on this GPU
    block_gradients = (FP32 * block_parameters[0] // shards, FP32 * block_parameters[-1] // shards)
    flops = family.training_flops(built, channels) * batch
    if recompute == "full":  # a second forward of the blocks
        flops += flops // 3
    return Plan(built.model_name, world_size, parallel, precision, recompute, optimizer, batch, gpu_memory, parameters,
                weights=FP32 * parameters // shards, gradients=FP32 * parameters // shards + ddp_buckets,
                optimizer_state=OPTIMIZER_MOMENTS[optimizer] * FP32 * parameters // shards, gathered=gathered,
                activations=mae_activations(built.config, channels, dtypes, recompute,
                                            block_gradients=block_gradients), step_flops=flops,
                matmul_rate=matmul_rate)
