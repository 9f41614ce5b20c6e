"""End-to-end training throughput: `maefast train` as a user runs it, on packed synthetic shards, beside
bench_train's figure for the same model on random tensors already on the device.

    python -m benchmarks.bench_train_e2e --compare records.jsonl     # GPU: MAE ViT-L/8, batch 64, ~150 steps
    python -m benchmarks.bench_train_e2e --quick --compare records.jsonl   # CPU smoke run: the debug recipe

Runs the command line, as a user would: `maefast data synth` (16-bit RxRx-layout screen) -> `maefast data
pack` -> `maefast train` with its defaults (on CUDA: attention tuned at setup, torch.compile), the PyTorch
loader where DALI is not installed (`--set data.backend=torch`). crops/s is read from the run's metrics.csv,
leaving out the first logged interval (start-up, attention tuning and compile warm-up, reported apart). The
summary's `baseline` is the bench_train record of the same model and setting (compiled on CUDA, eager on a
CPU, as `run.compile=auto` does) read from --compare, so `ratio` is the share of the random-tensor throughput
that survives the loader and the trainer (the recipe's Lion and gradient clipping against bench_train's AdamW).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from maefast.errors import installed

GPU = dict(recipe="mae_vit_large_patch8", model="mae_vit_large_patch8_256", batch=64, steps=150, log_every=10,
           workers=8, screen=["--genes", "12", "--plates", "2", "--controls", "4", "--size", "512"])
QUICK = dict(recipe="debug", model="mae_vit_debug_patch8_64", batch=16, steps=30, log_every=5, workers=1,
             screen=["--genes", "4", "--plates", "2", "--controls", "2", "--size", "128"])


def cli(*arguments: str, log: Path) -> float:
    """Runs `python -m maefast.cli ARGUMENTS` (output appended to `log`); returns its seconds."""
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ maefast {' '.join(arguments)}\n")
        handle.flush()
        subprocess.run([sys.executable, "-m", "maefast.cli", *arguments], stdout=handle, stderr=subprocess.STDOUT,
                       check=True)
    return round(time.perf_counter() - start, 1)


def logged_rates(metrics: Path) -> list[float]:
    """crops/s of every complete row of a run's metrics.csv (a row cut off by a stop is left out)."""
    if not metrics.exists():
        return []
    with open(metrics, newline="") as handle:
        return [float(row["crops_per_s"]) for row in csv.DictReader(handle)
                if None not in row.values() and row.get("crops_per_s")]


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


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--compare", default=None, help="JSON-lines records holding bench_train's figures")
    args_parser.add_argument("--workdir", default=None, help="where the screen, shards and run go (default: a "
                             "temporary folder, removed afterwards)")
    args_parser.add_argument("--steps", type=int, default=None, help="training steps (default 150; --quick 30)")
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    settings = QUICK if args.quick else GPU
    steps = args.steps or settings["steps"]
    rec = common.Recorder("train_e2e", device, args.json_out)
    common.stop_on_sigterm()
    loader = "auto" if installed("nvidia.dali") else "torch"
    variant = "maefast" if device.type == "cuda" else "maefast_eager"  # what run.compile=auto does
    with tempfile.TemporaryDirectory(prefix="bench_train_e2e_") as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        log, run = work / "cli.log", work / "run"
        seconds, stop = {}, None
        try:
            seconds["synth_s"] = cli("data", "synth", "--out", str(work / "screen"), "--layout", "rxrx",
                                     "--bit-depth", "16", "--experiments", "1", "--workers", str(settings["workers"]),
                                     *settings["screen"], log=log)
            seconds["pack_s"] = cli("data", "pack", str(work / "screen"), "--out", str(work / "packed"),
                                    "--workers", str(settings["workers"]), log=log)
            seconds["train_s"] = cli(
                "train", "--recipe", settings["recipe"], "--data", str(work / "packed"), "--out", str(run),
                "--max-steps", str(steps), "--no-progress", "--set", f"run.device={device.type}",
                "--set", f"data.backend={loader}", "--set", f"data.batch_size={settings['batch']}",
                "--set", f"data.num_workers={settings['workers']}", "--set", f"run.log_every={settings['log_every']}",
                "--set", f"run.checkpoint_every={steps}", "--set", f"run.image_every={steps}", log=log)
        except subprocess.CalledProcessError as error:
            stop = f"`maefast {' '.join(error.cmd[3:5])}` exited with status {error.returncode}"
            print(log.read_text()[-3000:], file=sys.stderr)
        except common.TimeLimit as error:
            stop = str(error)
        rates = logged_rates(run / "metrics.csv")
        steady = rates[1:]
        ours = sum(steady) / len(steady) if steady else None
        baseline = random_tensor_figure(Path(args.compare) if args.compare else None, settings["model"], variant)
        rec.emit(kind="summary", case=settings["model"], backend=variant, unit="crops/s",
                 value=ours and round(ours, 2), baseline=baseline, vs=f"bench_train {variant} (random tensors)",
                 ratio=round(ours / baseline, 3) if ours and baseline else None, loader=loader,
                 batch=settings["batch"], logged_intervals=len(rates), steps_per_interval=settings["log_every"],
                 first_interval_crops_per_s=round(rates[0], 2) if rates else None, **seconds,
                 **({"skipped": stop} if stop else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
