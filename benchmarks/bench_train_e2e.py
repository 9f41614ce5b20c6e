"""End-to-end training throughput: `maefast train` as a user runs it, on packed shards and on PNG sites, beside
the random-tensor figure of the same model measured in the same suite run.

    python -m benchmarks.bench_train_e2e --compare records.jsonl            # GPU: MAE ViT-L/8, 64 crops per step
    python -m benchmarks.bench_train_e2e --quick --compare records.jsonl    # CPU smoke run: the debug recipe

Runs the command line, as a user would: `maefast data synth` (a 16-bit RxRx-layout screen) -> `maefast data pack`
-> `maefast train` twice with the same model and crops per step: on the packed shards (one crop per image) and on
the PNG sites (two crops per site, half the images: the read of a site serves two crops). Both train with AdamW
and no gradient clipping (the step bench_train times on random tensors) and the loader's defaults otherwise: DALI
where it is installed (on CUDA the GPU pipeline), the PyTorch loader elsewhere, data.num_workers threads.
From each run's metrics.csv, leaving out the first logged interval (start-up, attention tuning, compile):
crops/s, and data_wait, the share of the interval the loop was blocked on the loader. The summaries' `baseline`
is the bench_train record of the same model and variant (compiled on CUDA, eager on a CPU, as run.compile=auto
does) read from --compare, or, when --compare has none (the GPU suite's loader call starts on an empty OUT),
measured here first as bench_train measures it (record `"kind": "baseline"`); so `ratio` is the share of the
random-tensor throughput that survives the loader and the trainer. Targets (issue 25): packed >= 0.97, PNG
sites >= 0.90.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from maefast.errors import installed

# 76 genes x 2 wells + 2 plates x 4 controls = 160 wells of 2 sites: 320 sites, 5 steps per packed epoch
GPU = dict(recipe="mae_vit_large_patch8", model="mae_vit_large_patch8_256", crops=64, steps=150, log_every=10,
           workers=os.cpu_count() or 1, screen=["--genes", "76", "--plates", "2", "--controls", "4", "--size", "512"])
QUICK = dict(recipe="debug", model="mae_vit_debug_patch8_64", crops=16, steps=30, log_every=5, workers=1,
             screen=["--genes", "4", "--plates", "2", "--controls", "2", "--size", "128"])
CASES = {"packed": dict(data="packed", crops_per_image=1, target=0.97),
         "png": dict(data="screen", crops_per_image=2, target=0.90)}


def cli(*arguments: str, log: Path) -> float:
    """Runs `python -m maefast.cli ARGUMENTS` (output appended to `log`); returns its seconds."""
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ maefast {' '.join(arguments)}\n")
        handle.flush()
        subprocess.run([sys.executable, "-m", "maefast.cli", *arguments], stdout=handle, stderr=subprocess.STDOUT,
                       check=True)
    return round(time.perf_counter() - start, 1)


def logged(metrics: Path) -> list[dict]:
    """The complete rows of a run's metrics.csv (a row cut off by a stop is left out)."""
    if not metrics.exists():
        return []
    with open(metrics, newline="") as handle:
        return [row for row in csv.DictReader(handle) if None not in row.values() and row.get("crops_per_s")]


def random_tensor_figure(records: Path | None, model: str, variant: str) -> float | None:
    """The latest bench_train record of `model` and `variant` in a JSON-lines file, in crops/s."""
    if records is None or not records.exists():
        return None
    value = None
    for line in records.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if (record.get("bench") == "train" and record.get("case") == model and record.get("backend") == variant
                and record.get("value")):
            value = record["value"]
    return value


def measure_random_tensor_figure(rec: common.Recorder, model_name: str, variant: str, crops: int, device: torch.device,
                                 reps: int) -> float | None:
    """bench_train's figure for `model_name` and `variant`, measured in this process: the same step on random
    6-channel crops (jobs.maefast_training: attention chosen, blocks compiled as `maefast train` does), crops/s;
    None when it failed (the record says why). Its memory is freed before `maefast train` runs."""
    import maefast
    from benchmarks import jobs
    torch.manual_seed(0)
    model = maefast.create_model(model_name, in_chans=6).to(device)
    pixels = jobs.random_crops(crops, 6, model.config.encoder.img_size, device)
    steps, _ = jobs.maefast_training(model, pixels)
    timing = common.time_variants({variant: steps[variant]}, device, reps).get(variant)
    del model, pixels, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    value = crops / (timing.ms * 1e-3) if timing and timing.ms else None
    rec.emit(kind="baseline", case=model_name, backend=variant, unit="crops/s", value=value and round(value, 2),
             warmup_s=timing and timing.warmup_s and round(timing.warmup_s, 1),
             **({"skipped": timing.error if timing else "time limit"} if value is None else {}))
    return value


def train(case: str, settings: dict, steps: int, device: torch.device, work: Path, log: Path) -> float:
    """`maefast train` on one case's data; returns its seconds."""
    spec = CASES[case]
    return cli("train", "--recipe", settings["recipe"], "--data", str(work / spec["data"]), "--out",
               str(work / f"run_{case}"), "--max-steps", str(steps), "--no-progress",
               "--set", f"run.device={device.type}", "--set", f"data.crops_per_image={spec['crops_per_image']}",
               "--set", f"data.batch_size={settings['crops'] // spec['crops_per_image']}",
               "--set", f"data.num_workers={settings['workers']}", "--set", f"run.log_every={settings['log_every']}",
               "--set", "optim.name=adamw", "--set", "optim.grad_clip=0",
               "--set", f"run.checkpoint_every={steps}", "--set", f"run.image_every={steps}", log=log)


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--compare", default=None, help="JSON-lines records holding bench_train's figures")
    args_parser.add_argument("--workdir", default=None, help="where the screen, shards and runs go (default: a "
                             "temporary folder, removed afterwards)")
    args_parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 150; "
                                                                     "--quick 30)")
    args_parser.add_argument("--cases", default="packed,png", help="of packed, png")
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    settings = QUICK if args.quick else GPU
    steps = args.steps or settings["steps"]
    rec = common.Recorder("train_e2e", device, args.json_out)
    common.stop_on_sigterm()
    loader = "dali" if installed("nvidia.dali") else "torch"
    variant = "maefast" if device.type == "cuda" else "maefast_eager"  # what run.compile=auto does
    baseline = random_tensor_figure(Path(args.compare) if args.compare else None, settings["model"], variant)
    if baseline is None:
        try:
            baseline = measure_random_tensor_figure(rec, settings["model"], variant, settings["crops"], device,
                                                    args.reps or (3 if args.quick else 10))
        except common.TimeLimit as error:
            rec.emit(kind="baseline", case=settings["model"], backend=variant, value=None, skipped=str(error))
    with tempfile.TemporaryDirectory(prefix="bench_train_e2e_") as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        log, seconds, stop = work / "cli.log", {}, None
        try:
            seconds["synth_s"] = cli("data", "synth", "--out", str(work / "screen"), "--layout", "rxrx",
                                     "--bit-depth", "16", "--experiments", "1", "--workers", str(settings["workers"]),
                                     *settings["screen"], log=log)
            seconds["pack_s"] = cli("data", "pack", str(work / "screen"), "--out", str(work / "packed"),
                                    "--workers", str(settings["workers"]), log=log)
        except subprocess.CalledProcessError as error:
            stop = f"`maefast {' '.join(error.cmd[3:5])}` exited with status {error.returncode}"
        except common.TimeLimit as error:
            stop = str(error)
        for case in [c.strip() for c in args.cases.split(",")]:
            case_stop = stop
            if case_stop is None:
                try:
                    seconds[f"train_{case}_s"] = train(case, settings, steps, device, work, log)
                except subprocess.CalledProcessError as error:
                    case_stop = f"`maefast train` on {case} exited with status {error.returncode}"
                    print(log.read_text()[-3000:], file=sys.stderr)
                except common.TimeLimit as error:
                    case_stop = stop = str(error)
            rows = logged(work / f"run_{case}" / "metrics.csv")
            steady = rows[1:]
            rate = sum(float(r["crops_per_s"]) for r in steady) / len(steady) if steady else None
            waits = [float(r["data_wait"]) for r in steady if r.get("data_wait")]
            rec.emit(kind="summary", case=f"{settings['model']} {case}", backend=variant, unit="crops/s",
                     value=rate and round(rate, 2), baseline=baseline, vs=f"bench_train {variant} (random tensors)",
                     ratio=round(rate / baseline, 3) if rate and baseline else None, target=CASES[case]["target"],
                     data_wait=round(sum(waits) / len(waits), 4) if waits else None, loader=loader,
                     crops_per_step=settings["crops"], crops_per_image=CASES[case]["crops_per_image"],
                     logged_intervals=len(rows), steps_per_interval=settings["log_every"],
                     first_interval_crops_per_s=float(rows[0]["crops_per_s"]) if rows else None, **seconds,
                     **({"skipped": case_stop} if case_stop else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
