"""The headline figures, measured in one process so that nothing compiles twice: the GPU suite's first call.

    python -m benchmarks.headline --json-out records.jsonl     # GPU: ViT-L/8, bf16 then FP8
    python -m benchmarks.headline --quick                       # CPU dry run of the same flow (debug models)
    python -m benchmarks.headline --parts train,profile         # a subset, in the same order

Parts, in this order, each printing its records as soon as it has measured them (a run cut short by the
suite's time limit keeps what it measured):
  train      MAE ViT-L/8 training, batch 64, bf16: maefast (attention tuned at setup, blocks compiled
             regionally) and the reference pipeline compiled regionally (benchmarks/jobs.py)
  profile    where that same compiled maefast step's GPU time goes (benchmarks/profile_step.py), with the
             step already warm: no second compile
  embed      ViT-L/8 embedding, batch 128: maefast (the embedding job's runner) and timm compiled regionally
  train_fp8  the training step again with the GEMMs that pay in FP8 (maefast.models.fp8), against the bf16
             figures of `train`
  embed_fp8  the embedding with FP8 GEMMs, against `embed`'s figures, and its quality gate on ViT-L/8 (random
             weights, LayerScale at 1): cosine similarity of every tile's embedding to the bf16 one >= 0.999
The plan printed first gives each part's expected seconds on a fresh H100 / H200 with empty caches
(estimates until a GPU run records the real ones: records `"kind": "part"`). Variants left out here (eager,
CA-MAE, the reference's embedding) run in the suite's second call (`gpu_suite.sh --rest`).
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass

import torch

import maefast
from benchmarks import common, jobs, profile_step
from maefast.models.families import family_of
from maefast.models.flops import embedding_flops

COSINE_GATE = 0.999


@dataclass(frozen=True)
class Setting:
    train_model: str
    embed_model: str
    train_batch: int
    embed_batch: int
    reps: int
    channels: int = 6


GPU = Setting("mae_vit_large_patch8_256", "vit_large_patch8_256", train_batch=64, embed_batch=128, reps=10)
QUICK = Setting(jobs.QUICK_TRAIN_MODEL, jobs.QUICK_EMBED_MODEL, train_batch=8, embed_batch=16, reps=2)
# the debug models are 64 wide: with maefast.models.fp8's threshold lowered to that their GEMMs convert too
QUICK_FP8_MIN_FEATURES = "64"
# expected seconds of each part on a fresh H100 / H200 (cold inductor and Triton caches), from the
# 2026-12-02 review's estimates with regional compilation; to be replaced by a GPU run's "part" records
EXPECTED_S = {"train": 110, "profile": 15, "embed": 90, "train_fp8": 70, "embed_fp8": 60}
PARTS = tuple(EXPECTED_S)


class Headline:
    """The state the parts share: the device, the measured rates, the steps and figures of earlier parts."""

    def __init__(self, setting: Setting, device: torch.device, json_out: str | None):
        self.setting, self.device, self.json_out = setting, device, json_out
        self.matmul = jobs.job_matmul_rate(device)
        self.figures: dict[str, dict[str, float]] = {}  # part -> {variant: crops/s}
        self.train_step = None
        self.reference_embeddings = None  # bf16 embeddings of the embed part's crops

    def recorder(self, bench: str) -> common.Recorder:
        return common.Recorder(bench, self.device, self.json_out)

    def crops(self, model, batch: int) -> torch.Tensor:
        size = getattr(model.config, "encoder", model.config).img_size
        torch.manual_seed(1)
        return jobs.random_crops(batch, self.setting.channels, size, self.device)

    def mae(self):
        torch.manual_seed(0)
        return maefast.create_model(self.setting.train_model, in_chans=self.setting.channels).to(self.device)

    def encoder(self):
        """The embedding parts' encoder: random weights with LayerScale at 1 instead of its 1e-4 start, so that
        every block carries signal into the embedding (FP8's error in the blocks shows in embed_fp8's cosine)."""
        torch.manual_seed(0)
        encoder = maefast.create_model(self.setting.embed_model, in_chans=self.setting.channels)
        with torch.no_grad():
            for block in encoder.blocks:
                block.ls.gamma.fill_(1.0)
        return encoder.to(self.device).eval()

    def measure(self, bench: str, part: str, job: jobs.Job, batch: int, flops: float, candidate: str,
                measured_before: dict | None = None, **context) -> dict:
        summary = jobs.run_job(self.recorder(bench), job, self.device, self.setting.reps, batch, flops, self.matmul,
                               candidate=candidate, measured_before=measured_before, part=part, batch=batch,
                               channels=self.setting.channels, **context)
        self.figures[part] = dict(summary["crops_per_s"])
        return summary

    # -- the parts ---------------------------------------------------------------------------------------
    def train(self) -> None:
        model = self.mae()
        pixels = self.crops(model, self.setting.train_batch)
        baselines = jobs.reference_training(model, pixels)
        ours, setup = jobs.maefast_training(model, pixels)
        self.train_step = ours["maefast"]
        job = jobs.Job({"maefast": ours["maefast"], "reference_compiled": baselines["reference_compiled"]},
                       setup=setup)
        flops = family_of(model).training_flops(model, self.setting.channels)
        self.measure("train", "train", job, self.setting.train_batch, flops, "maefast", case=self.setting.train_model)

    def profile(self) -> None:
        if self.train_step is None:
            raise RuntimeError("the profile part profiles the train part's step: run train first")
        unit = "GPU kernel time" if self.device.type == "cuda" else "CPU op self time"
        events = profile_step.profile_steps(self.train_step, self.device, steps=2)
        result = profile_step.breakdown(events, self.device, profile_step.maefast_kernel_names())
        case = f"train {self.setting.train_model} b{self.setting.train_batch} maefast"
        profile_step.report(self.recorder("profile"), case, result, 2, 15, unit)
        self.train_step = None  # the bf16 training model goes before the embedding part

    def embed(self) -> None:
        encoder = self.encoder()
        pixels = self.crops(encoder, self.setting.embed_batch)
        baselines, unavailable = jobs.embedding_baselines(encoder, pixels)
        ours, setup = jobs.maefast_embedding(encoder, pixels)
        variants = {"maefast": ours["maefast"]}
        variants.update({k: v for k, v in baselines.items() if k == "timm_compiled"})
        job = jobs.Job(variants, {k: v for k, v in unavailable.items() if k == "timm_compiled"}, setup)
        flops = embedding_flops(encoder.config, self.setting.channels)
        self.measure("embed", "embed", job, self.setting.embed_batch, flops, "maefast",
                     case=self.setting.embed_model)
        self.reference_embeddings = ours["maefast"]().float()  # of the crops embed_fp8 embeds too

    def train_fp8(self) -> None:
        model = self.mae()
        pixels = self.crops(model, self.setting.train_batch)
        ours, setup = jobs.maefast_training(model, pixels, fp8=True)
        flops = family_of(model).training_flops(model, self.setting.channels)
        self.measure("train", "train_fp8", jobs.Job(ours, setup=setup), self.setting.train_batch, flops,
                     "maefast_fp8", measured_before=self.baselines("train"), case=self.setting.train_model,
                     precision="fp8")

    def embed_fp8(self) -> None:
        encoder = self.encoder()
        pixels = self.crops(encoder, self.setting.embed_batch)
        ours, setup = jobs.maefast_embedding(encoder, pixels, fp8=True)
        flops = embedding_flops(encoder.config, self.setting.channels)
        self.measure("embed", "embed_fp8", jobs.Job({"maefast_fp8": ours["maefast_fp8"]}, setup=setup),
                     self.setting.embed_batch, flops, "maefast_fp8", measured_before=self.baselines("embed"),
                     case=self.setting.embed_model, precision="fp8")
        if self.reference_embeddings is not None:
            fp8 = ours["maefast_fp8"]().float()
            cosine = torch.nn.functional.cosine_similarity(fp8, self.reference_embeddings, dim=1)
            self.recorder("embed").emit(
                kind="quality", part="embed_fp8", case=self.setting.embed_model, backend="maefast_fp8",
                value=round(cosine.min().item(), 6), unit="min cosine per tile to the run without FP8",
                gate=COSINE_GATE, passed=bool(cosine.min().item() >= COSINE_GATE),
                cosine_mean=round(cosine.mean().item(), 6), tiles=len(cosine),
                note="random weights, LayerScale 1; trained-model gates: benchmarks.fp8_quality")

    def baselines(self, part: str) -> dict[str, float]:
        """The earlier part's figures as baselines of its FP8 variant, named by variant (maefast's bf16 one
        as "maefast_bf16")."""
        return {("maefast_bf16" if name == "maefast" else name): value
                for name, value in self.figures.get(part, {}).items()}


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plan(parts: list[str]) -> list[str]:
    lines, total = [], 0
    for part in parts:
        total += EXPECTED_S[part]
        lines.append(f"  {part:10s} expected {EXPECTED_S[part]:4d} s  (by {total:4d} s)")
    return lines


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    args = args_parser.parse_args(argv)
    parts = [p for p in PARTS if p in args.parts.split(",")]
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        args_parser.error(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    setting = QUICK if args.quick else GPU
    if args.quick:
        os.environ.setdefault("MAEFAST_FP8_MIN_FEATURES", QUICK_FP8_MIN_FEATURES)
    if args.reps:
        setting = Setting(**{**setting.__dict__, "reps": args.reps})
    common.stop_on_sigterm()
    print("headline plan (expected seconds on a fresh GPU, cold caches):", *plan(parts), sep="\n", flush=True)
    headline = Headline(setting, device, args.json_out)
    parts_recorder = headline.recorder("headline")
    for part in parts:
        start = time.perf_counter()
        status = "ok"
        try:
            getattr(headline, part)()
        except common.TimeLimit:
            status = "stopped at the time limit"
        except Exception as error:  # noqa: BLE001 - a failing part is reported; the next parts still run
            status = f"failed: {common.describe_error(error)}"
        parts_recorder.emit(kind="part", case=part, value=round(time.perf_counter() - start, 1), unit="s",
                            expected_s=EXPECTED_S[part], status=status)
        release(device)
        if common.stopped():
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
