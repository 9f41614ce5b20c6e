"""The whole-model jobs that bench_train, bench_embed and profile_step time and profile, all on the same weights.

maefast, as a user gets it by default on CUDA, set up by maefast.job_setup as `maefast train` and `maefast embed`
set themselves up:
  "maefast"        the attention backend of each site tuned once at setup (choose_attention at the job's shapes),
                   then torch.compile(fullgraph=True)
  "maefast_eager"  the same tuned model, not compiled (for reference)
The baselines a user would pick instead (attention through SDPA, PyTorch's own kernel choice):
  "reference", "reference_compiled"  the public reference's pipeline (benchmarks/reference_pipeline.py), eager
                                     and under torch.compile
  "timm", "timm_compiled"            (embedding) timm's VisionTransformer with the same weights, eager and
                                     under torch.compile; left out, with the reason, when timm is missing
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
from benchmarks.reference_pipeline import reference_embed, reference_forward
from maefast.embedding.runner import PooledEncoder, TileEmbedder
from maefast.errors import installed
from maefast.job_setup import RunSetup, choose_attention, matmul_rate, training_step
from maefast.models.attention_setup import configure_attention
from maefast.ops.patches import pixel_scale, random_pixels

QUICK_TRAIN_MODEL, QUICK_EMBED_MODEL = "mae_vit_debug_patch8_64", "vit_debug_patch8_64"


def random_crops(batch: int, channels: int, size: int, device) -> torch.Tensor:
    """Random uint16 crops on `device`."""
    return random_pixels(batch, channels, size, torch.uint16, device)


def run_setup(device: torch.device) -> RunSetup:
    """How `maefast train` / `maefast embed` run on `device` by default: bf16 and compiled on CUDA, fp32 on a CPU
    (where the benchmarks compile maefast too, as a smoke test of the flow)."""
    return RunSetup.resolve(device)


@dataclass
class Job:
    """The variants of one job, in the order they are measured (maefast first, the compiled baselines last:
    their compile is what a time limit cuts), and the variants left out, with why."""
    variants: dict[str, Callable[[], None]]
    unavailable: dict[str, str] = field(default_factory=dict)
    setup: dict = field(default_factory=dict)


def optimizer_step(model, loss_fn: Callable, pixels: torch.Tensor) -> Callable[[], None]:
    """One optimizer step of `loss_fn(pixels)` (its own AdamW over `model`'s parameters)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    setup = run_setup(pixels.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = loss_fn(pixels)
        loss.backward()
        optimizer.step()
    return step


def sdpa_copy(model):
    """A copy of `model` with SDPA at every attention site: the baselines' weights, untouched by tuning."""
    baseline = copy.deepcopy(model)
    configure_attention(baseline, "sdpa")
    return baseline


def maefast_training(model, pixels: torch.Tensor) -> tuple[dict[str, Callable[[], None]], dict]:
    """({"maefast": compiled step, "maefast_eager": eager step}, setup): the attention backends chosen first, as
    `maefast train` chooses them (timed at the run's shapes on a GPU), then torch.compile(fullgraph=True)."""
    setup = run_setup(pixels.device)
    start = time.perf_counter()
    batch_shape = (pixels.shape[0], pixels.shape[1], pixels.shape[-1])
    attention = choose_attention(model, "auto", setup, training_step(model, batch_shape, setup), needs_grad=True)
    record = {"attention": attention["choice"], "tune_s": round(time.perf_counter() - start, 2)}
    compiled = torch.compile(model, fullgraph=True)
    return {"maefast": optimizer_step(model, lambda p: compiled(p).loss, pixels),
            "maefast_eager": optimizer_step(model, lambda p: model(p).loss, pixels)}, record


def training_job(model, pixels: torch.Tensor) -> Job:
    """A training step (forward, backward, AdamW) of a maefast MAE / CA-MAE and of the reference pipeline."""
    baseline = sdpa_copy(model)
    ours, setup = maefast_training(model, pixels)

    def reference(p):
        return reference_forward(baseline, p)[0]
    return Job({**ours, "reference": optimizer_step(baseline, reference, pixels),
                "reference_compiled": optimizer_step(baseline, torch.compile(reference), pixels)}, setup=setup)


def inference_step(fn: Callable, pixels: torch.Tensor) -> Callable[[], None]:
    setup = run_setup(pixels.device)

    def step():
        with torch.no_grad(), setup.autocast():
            fn(pixels)
    return step


def timm_encoder(encoder):
    """timm's VisionTransformer (ParallelScalingBlock, qk-norm, SDPA) holding `encoder`'s weights, and its
    embedding function (maefast's self-standardization, then the mean of the patch tokens)."""
    import timm.models.vision_transformer as tv
    config = encoder.config
    model = tv.VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                                 embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                 num_classes=0, global_pool=config.global_pool, class_token=True,
                                 init_values=config.init_values, block_fn=tv.ParallelScalingBlock,
                                 qkv_bias=False, qk_norm=True)
    model.load_state_dict(encoder.state_dict())
    model = model.to(encoder.cls_token.device).eval()

    def embed(pixels):
        images = F.instance_norm(pixels.float() / pixel_scale(pixels.dtype), eps=1e-5)
        return model.forward_features(images)[:, 1:].mean(dim=1)
    return embed


def maefast_embedding(encoder, pixels: torch.Tensor) -> tuple[dict[str, Callable[[], None]], dict]:
    """({"maefast": the embedding job's runner, "maefast_eager": its uncompiled forward}, setup): what `maefast
    embed` runs (maefast.embedding.runner.TileEmbedder): on a GPU bf16 weights, the attention backend tuned
    once at the job's shapes, and torch.compile with CUDA graphs; on a CPU compiled too, as a smoke test."""
    setup = RunSetup.resolve(pixels.device, compile=True)
    start = time.perf_counter()
    pooled = PooledEncoder(encoder, pool="mean", per_channel=False, setup=setup)
    attention = choose_attention(pooled.encoder, "auto", setup, lambda: pooled(pixels), needs_grad=False)
    runner = TileEmbedder(pooled, pixels.shape[0], compile=setup.compile)
    record = {"attention": attention["choice"], "tune_s": round(time.perf_counter() - start, 2)}

    def run(fn):
        def step():
            fn(pixels)
        return step
    return {"maefast": run(runner), "maefast_eager": run(pooled)}, record


def embedding_job(encoder, pixels: torch.Tensor) -> Job:
    """An embedding step (no gradients) of a maefast encoder, of timm's ViT and of the reference pipeline."""
    baseline = sdpa_copy(encoder)
    ours, setup = maefast_embedding(encoder, pixels)

    def reference(p):
        return reference_embed(baseline, p)
    baselines = {"reference": reference}
    if installed("timm"):
        baselines = {"timm": timm_encoder(baseline), **baselines}
    unavailable = {} if "timm" in baselines else dict.fromkeys(
        ("timm", "timm_compiled"), "timm is not installed (python -m pip install timm)")
    variants = {**ours, **{name: inference_step(fn, pixels) for name, fn in baselines.items()},
                **{f"{name}_compiled": inference_step(torch.compile(fn), pixels) for name, fn in baselines.items()}}
    return Job(variants, unavailable, setup)


def run_job(rec: common.Recorder, job: Job, device: torch.device, reps: int, crops_per_step: int,
            flops_per_crop: float, matmul_flops: float, **context) -> dict:
    """Times every variant of `job` (one record each, as it finishes) and emits the summary: crops/s of
    "maefast" against every baseline, `ratio` against the fastest baseline (named in `vs`)."""
    context["precision"] = run_setup(device).precision
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
    baselines = {name: value for name, value in measured.items() if not name.startswith("maefast")}
    ours = measured.get("maefast")
    strongest = max(baselines, key=baselines.get) if baselines else None
    not_run = {**job.unavailable, **{name: t.error for name, t in timings.items() if t.error},
               **{name: "not reached: time limit" for name in job.variants if name not in timings}}
    return rec.emit(kind="summary", **context, backend="maefast", unit="crops/s",
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
