"""The whole-model jobs that bench_train, bench_embed and profile_step time and profile, all on the same weights.

maefast, as a user gets it by default on CUDA, set up by maefast.job_setup as `maefast train` and `maefast embed`
set themselves up:
  "maefast"        the attention backend of each site tuned once at setup (choose_attention at the job's shapes),
                   then compiled as the job compiles it: training regionally (maefast.models.regions: each block
                   compiled, identical blocks share the graph), embedding the embedding job's runner (one graph
                   at fixed shapes, replayed by CUDA graphs)
  "maefast_eager"  the same tuned model, not compiled (for reference)
  "maefast_fp8"    (with fp8=True) the same in precision fp8: the GEMMs that pay run in FP8 (RunSetup.prepare)
The baselines a user would pick instead (attention through SDPA, PyTorch's own kernel choice):
  "reference", "reference_compiled"  the public reference's pipeline (benchmarks/reference_pipeline.py), eager
                                     and compiled regionally (one graph per kind of block)
  "timm", "timm_compiled"            (embedding) timm's VisionTransformer with the same weights, eager and
                                     compiled regionally; left out, with the reason, when timm is missing
Every compiled variant compiles its blocks, not the whole model, so compile time does not grow with depth
and no side is favoured; except maefast's embedding, compiled as `maefast embed` compiles it (its whole
forward as one graph for CUDA graphs: its compile time grows with depth). Every training variant steps the same
optimizer, fused AdamW on CUDA.
On a CPU the same variants run (compiled too), as a smoke test of the flow; CPU figures are not GPU figures.
A summary reports maefast against every baseline and its ratio against the fastest one, by name; compile
warm-ups are reported apart (`warmup_s`) and never counted in a throughput.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.reference_pipeline import compiled_run_block, reference_embed, reference_forward
from maefast.embedding.runner import PooledEncoder, TileEmbedder
from maefast.errors import installed
from maefast.job_setup import RunSetup, choose_attention, embedding_step, matmul_rate, training_step
from maefast.models.attention_setup import configure_attention
from maefast.models.regions import compile_regions
from maefast.ops.patches import pixel_scale, random_pixels
from maefast.train.optim import build_optimizer

QUICK_TRAIN_MODEL, QUICK_EMBED_MODEL = "mae_vit_debug_patch8_64", "vit_debug_patch8_64"


def random_crops(batch: int, channels: int, size: int, device) -> torch.Tensor:
    """Random uint16 crops on `device`."""
    return random_pixels(batch, channels, size, torch.uint16, device)


def run_setup(device: torch.device, precision: str = "auto") -> RunSetup:
    """How `maefast train` / `maefast embed` run on `device` by default (or in `precision`): bf16 and compiled on
    CUDA, fp32 on a CPU (where the benchmarks compile maefast too, as a smoke test of the flow)."""
    return RunSetup.resolve(device, precision)


@dataclass
class Job:
    """The variants of one job, in the order they are measured (maefast first, the compiled baselines last:
    their compile is what a time limit cuts), and the variants left out, with why."""
    variants: dict[str, Callable[[], None]]
    unavailable: dict[str, str] = field(default_factory=dict)
    setup: dict = field(default_factory=dict)


def optimizer_step(model, loss_fn: Callable, pixels: torch.Tensor, setup: RunSetup | None = None
                   ) -> Callable[[], None]:
    """One optimizer step of `loss_fn(pixels)` under `setup`'s autocast (default: the jobs' on the pixels'
    device), with its own AdamW over `model`'s parameters, fused on CUDA, as maefast.train.optim builds it."""
    optimizer = build_optimizer(model, "adamw", 1e-4, 0.05, (0.9, 0.95))
    setup = setup or run_setup(pixels.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = loss_fn(pixels)
        loss.backward()
        optimizer.step()
    return step


def uncompiled(step: Callable[[], None]) -> Callable[[], None]:
    """`step` with every compiled region running eagerly (the eager variant of a regionally compiled model)."""
    def run():
        with torch.compiler.set_stance("force_eager"):
            step()
    return run


def sdpa_copy(model):
    """A copy of `model` with SDPA at every attention site: the baselines' weights, untouched by tuning."""
    baseline = copy.deepcopy(model)
    configure_attention(baseline, "sdpa")
    return baseline


def maefast_training(model, pixels: torch.Tensor, fp8: bool = False) -> tuple[dict[str, Callable[[], None]], dict]:
    """({"maefast": compiled step, "maefast_eager": eager step}, setup): the attention backends chosen first, as
    `maefast train` chooses them (timed at the run's shapes on a GPU), then the blocks compiled regionally, as
    `maefast train` compiles them. fp8: in precision fp8, the model's GEMMs that pay converted to FP8 first, as
    run.precision=fp8 does (the step is then "maefast_fp8")."""
    setup = run_setup(pixels.device, "fp8" if fp8 else "auto")
    start = time.perf_counter()
    fp8_report = setup.prepare(model)
    batch_shape = (pixels.shape[0], pixels.shape[1], pixels.shape[-1])
    attention = choose_attention(model, "auto", setup, training_step(model, batch_shape, setup), needs_grad=True)
    record = {**({"fp8": fp8_report} if fp8 else {}), "attention": attention["choice"],
              "tune_s": round(time.perf_counter() - start, 2)}
    compile_regions(model)
    step = optimizer_step(model, lambda p: model(p).loss, pixels, setup)
    if fp8:
        return {"maefast_fp8": step}, record
    return {"maefast": step, "maefast_eager": uncompiled(step)}, record


def reference_training(model, pixels: torch.Tensor) -> dict[str, Callable[[], None]]:
    """{"reference", "reference_compiled"}: the reference pipeline's training step on an SDPA copy of `model`'s
    weights (taken before maefast's setup changes anything), eager and compiled regionally."""
    baseline = sdpa_copy(model)
    run_compiled = compiled_run_block()
    return {"reference": optimizer_step(baseline, lambda p: reference_forward(baseline, p)[0], pixels),
            "reference_compiled": optimizer_step(baseline,
                                                 lambda p: reference_forward(baseline, p, run=run_compiled)[0], pixels)}


def training_job(model, pixels: torch.Tensor) -> Job:
    """A training step (forward, backward, AdamW) of a maefast MAE / CA-MAE and of the reference pipeline."""
    baselines = reference_training(model, pixels)
    ours, setup = maefast_training(model, pixels)
    return Job({**ours, **baselines}, setup=setup)


def inference_step(fn: Callable, pixels: torch.Tensor) -> Callable[[], None]:
    setup = run_setup(pixels.device)

    def step():
        with torch.no_grad(), setup.autocast():
            fn(pixels)
    return step


def timm_encoder(encoder):
    """timm's VisionTransformer (ParallelScalingBlock, qk-norm, SDPA) holding `encoder`'s weights, and its
    embedding function (maefast's self-standardization, then the mean of the patch tokens); its blocks are
    compiled regionally, so the function runs compiled unless under torch.compiler.set_stance("force_eager")."""
    import timm.models.vision_transformer as tv
    config = encoder.config
    model = tv.VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                                 embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                 num_classes=0, global_pool=config.global_pool, class_token=True,
                                 init_values=config.init_values, block_fn=tv.ParallelScalingBlock,
                                 qkv_bias=False, qk_norm=True)
    model.load_state_dict(encoder.state_dict())
    model = model.to(encoder.cls_token.device).eval()
    compile_regions(model, blocks=list(model.blocks))

    def embed(pixels):
        images = F.instance_norm(pixels.float() / pixel_scale(pixels.dtype), eps=1e-5)
        return model.forward_features(images)[:, 1:].mean(dim=1)
    return embed


def maefast_embedding(encoder, pixels: torch.Tensor, fp8: bool = False
                      ) -> tuple[dict[str, Callable[[], torch.Tensor]], dict]:
    """({"maefast": the embedding job's runner, "maefast_eager": its uncompiled forward}, setup): what `maefast
    embed` runs (maefast.embedding.runner.TileEmbedder): on a GPU bf16 weights, the attention backend tuned
    once at the job's shapes, and compiled (fixed shapes, CUDA graphs); on a CPU compiled too, as a smoke test.
    fp8: `maefast embed --precision fp8` (the step is then "maefast_fp8"). Each step returns the embeddings."""
    setup = RunSetup.resolve(pixels.device, "fp8" if fp8 else "auto", compile=True)
    start = time.perf_counter()
    pooled = PooledEncoder(encoder, pool="mean", per_channel=False, setup=setup)
    tiles = pixels.shape[0]
    attention = choose_attention(pooled.encoder, "auto", setup, embedding_step(pooled, tiles, pixels.shape[1:], setup),
                                 needs_grad=False)
    runner = TileEmbedder(pooled, tiles, compile=setup.compile)
    record = {**({"fp8": pooled.fp8} if fp8 else {}), "attention": attention["choice"],
              "tune_s": round(time.perf_counter() - start, 2)}

    def run(fn):
        def step():
            return fn(pixels)  # the embeddings, for a caller that compares them
        return step
    if fp8:
        return {"maefast_fp8": run(runner)}, record
    return {"maefast": run(runner), "maefast_eager": run(pooled)}, record


def embedding_baselines(encoder, pixels: torch.Tensor) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    """({"timm", "reference", "timm_compiled", "reference_compiled"}: steps on an SDPA copy of `encoder`'s
    weights, {variant: why it cannot run}): timm only where it is installed."""
    baseline = sdpa_copy(encoder)
    run_compiled = compiled_run_block()
    steps, unavailable = {}, {}
    if installed("timm"):
        timm_embed = timm_encoder(baseline)
        steps["timm"] = uncompiled(inference_step(timm_embed, pixels))
    else:
        unavailable = dict.fromkeys(("timm", "timm_compiled"), "timm is not installed (python -m pip install timm)")
    steps["reference"] = inference_step(lambda p: reference_embed(baseline, p), pixels)
    if "timm" in steps:
        steps["timm_compiled"] = inference_step(timm_embed, pixels)
    steps["reference_compiled"] = inference_step(lambda p: reference_embed(baseline, p, run=run_compiled), pixels)
    return steps, unavailable


def embedding_job(encoder, pixels: torch.Tensor) -> Job:
    """An embedding step (no gradients) of a maefast encoder, of timm's ViT and of the reference pipeline."""
    baselines, unavailable = embedding_baselines(encoder, pixels)
    ours, setup = maefast_embedding(encoder, pixels)
    return Job({**ours, **baselines}, unavailable, setup)


def run_job(rec: common.Recorder, job: Job, device: torch.device, reps: int, crops_per_step: int,
            flops_per_crop: float, matmul_flops: float, candidate: str = "maefast",
            measured_before: dict[str, float] | None = None, **context) -> dict:
    """Times every variant of `job` (one record each, as it finishes) and emits the summary: crops/s of
    `candidate` against every baseline (the variants not named maefast*, and `measured_before`: crops/s of
    baselines measured earlier in the same run), `ratio` against the fastest baseline (named in `vs`). context:
    fields of every record (precision: default the jobs' precision on `device`)."""
    context.setdefault("precision", run_setup(device).precision)
    def crops_per_s(timing: common.Timing) -> float:
        return crops_per_step / (timing.ms * 1e-3)

    def report(timing: common.Timing) -> None:
        if timing.error:
            rec.emit(**context, backend=timing.name, skipped=timing.error)
            return
        value = crops_per_s(timing)
        rec.emit(**context, backend=timing.name, value=round(value, 2), unit="crops/s", ms=round(timing.ms, 3),
                 warmup_s=round(timing.warmup_s, 1), mfu=round(value * flops_per_crop / matmul_flops, 4))

    for name, reason in job.unavailable.items():
        rec.emit(**context, backend=name, skipped=reason)
    timings = common.time_variants(job.variants, device, reps, report=report)
    if common.stopped():
        rec.emit(**context, kind="note", skipped="time limit (SIGTERM): the variants not measured are left out")
    measured = {name: crops_per_s(t) for name, t in timings.items() if t.ms is not None}
    baselines = {**(measured_before or {}),
                 **{name: value for name, value in measured.items() if not name.startswith("maefast")}}
    ours = measured.get(candidate)
    strongest = max(baselines, key=baselines.get) if baselines else None
    not_run = {**job.unavailable, **{name: t.error for name, t in timings.items() if t.error},
               **{name: "not reached: time limit" for name in job.variants if name not in timings}}
    return rec.emit(kind="summary", **context, backend=candidate, unit="crops/s",
                    value=ours and round(ours, 2), baseline=strongest and round(baselines[strongest], 2),
                    vs=strongest, ratio=round(ours / baselines[strongest], 3) if ours and strongest else None,
                    ratios={name: round(ours / value, 3) for name, value in baselines.items()} if ours else {},
                    crops_per_s={name: round(value, 2) for name, value in measured.items()},
                    mfu=ours and round(ours * flops_per_crop / matmul_flops, 4),
                    warmup_s={name: round(t.warmup_s, 1) for name, t in timings.items() if t.warmup_s is not None},
                    not_run=not_run, gflop_per_crop=round(flops_per_crop / 1e9, 2),
                    matmul_tflops=round(matmul_flops / 1e12, 2), **job.setup)


def job_matmul_rate(device: torch.device) -> float:
    """FLOP/s of a dense matmul in the precision the jobs run in, measured now (the MFU denominator), as
    `maefast train` measures it."""
    return matmul_rate(device, run_setup(device).precision)
