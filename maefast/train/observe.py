"""Observability: throughput and MFU, scalars to CSV and TensorBoard, reconstruction grids as PNG."""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from maefast.io import atomic_path
from maefast.models.registry import input_config
from maefast.ops.patches import self_standardize, unpatchify


class Throughput:
    """Crops/s, tokens/s, TFLOP/s, MFU and the share of the time spent waiting for data, over the interval since
    the last report; no MFU without a matmul rate (on a CPU: maefast.train.loop).

    data_wait: the time the loop was blocked in the loader's next() (`batches`) over the interval's wall time,
    on this rank. A loader that keeps up has its batch ready (0); on a GPU the step queues its kernels and waits
    for the loader's batch on the device (an event), so the host blocks in next() only when the loader's host
    stages (reading, decoding on the CPU) fall behind the GPU, and then this share is the step time it costs.
    """

    def __init__(self, flops_per_crop: int, tokens_per_crop: int, matmul_rate: float | None, world_size: int,
                 clock=time.perf_counter):
        self.flops_per_crop, self.tokens_per_crop = flops_per_crop, tokens_per_crop
        self.matmul_rate, self.world_size, self.clock = matmul_rate, world_size, clock
        self.crops, self.waited, self.start = 0, 0.0, clock()

    def add(self, crops: int) -> None:
        self.crops += crops

    def batches(self, iterable):
        """The items of `iterable`, the time spent waiting for each one counted as data_wait."""
        iterator = iter(iterable)
        while True:
            began = self.clock()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.waited += self.clock() - began
            yield item

    def report(self) -> dict:
        now = self.clock()
        elapsed = max(now - self.start, 1e-9)
        crops_per_s = self.crops * self.world_size / elapsed
        flops_per_s = crops_per_s * self.flops_per_crop
        data_wait = min(self.waited / elapsed, 1.0)
        self.crops, self.waited, self.start = 0, 0.0, now
        rates = {"crops_per_s": crops_per_s, "tokens_per_s": crops_per_s * self.tokens_per_crop,
                 "tflops_per_s": flops_per_s / 1e12, "data_wait": data_wait}
        if self.matmul_rate is not None:
            rates["mfu"] = flops_per_s / (self.matmul_rate * self.world_size)
        return rates


@dataclass
class Interval:
    """What StepMetrics read back for the steps since the last read."""
    losses: dict[str, float] | None  # the loss and its named parts: means over the finite steps (None: none was)
    steps: list[tuple[int, bool]]  # (step, whether its loss was finite), in order
    nonfinite_ids: dict[int, list]  # step -> image ids of its batch, for the steps whose loss was not finite
    grad_norm: float             # the last step's gradient norm before clipping (nan when not clipped)


class StepMetrics:
    """A step's scalars kept on the device and read every few steps: one host synchronization per read instead
    of several per step (the loss, its finiteness, the gradient norm).

    add(step, ids, losses, finite, grad_norm) per step, with device tensors: the loss and its named parts
    ({"loss": ..., **TrainingOutput.parts}, 0-d each, the same names every step), whether the loss is finite
    (0-d bool), the gradient norm (0-d, or None); read() -> Interval, one transfer."""

    def __init__(self):
        self.steps: list[tuple[int, list]] = []
        self.names: list[str] = []
        self.sums = self.count = self.grad_norm = None
        self.finite: list[torch.Tensor] = []

    def add(self, step: int, ids: list, losses: dict[str, torch.Tensor], finite: torch.Tensor,
            grad_norm: torch.Tensor | None) -> None:
        self.names = list(losses)
        values = torch.stack([value.float() for value in losses.values()])
        kept = torch.where(finite, values, torch.zeros_like(values))
        self.sums = kept if self.sums is None else self.sums + kept
        self.count = finite.float() if self.count is None else self.count + finite.float()
        self.finite.append(finite)
        self.steps.append((step, ids))
        self.grad_norm = grad_norm

    def __len__(self) -> int:
        return len(self.steps)

    def read(self) -> Interval:
        norm = self.grad_norm if self.grad_norm is not None else torch.tensor(float("nan"))
        values = torch.cat([self.sums, self.count[None], torch.stack(self.finite).float(),
                            norm.detach().float().reshape(1).to(self.sums.device)]).tolist()
        parts = len(self.sums)
        sums, count = values[:parts], values[parts]
        finite = [bool(v) for v in values[parts + 1:-1]]
        interval = Interval({name: v / count for name, v in zip(self.names, sums)} if count else None,
                            [(step, ok) for (step, _), ok in zip(self.steps, finite)],
                            {step: ids for (step, ids), ok in zip(self.steps, finite) if not ok}, values[-1])
        self.__init__()
        return interval


class ScalarLog:
    """metrics.csv and TensorBoard scalars of the same values.

    On start the CSV is rewritten once (atomically) with the rows up to the resumed step; after that each
    log call appends one line, so a long run does not rewrite its history at every step.
    """

    def __init__(self, out_dir: Path, resume_step: int):
        self.path = Path(out_dir) / "metrics.csv"
        self.rows = self.read_until(resume_step)
        self.fields = list(self.rows[0]) if self.rows else None
        if self.path.exists():
            self.rewrite()
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)

    def read_until(self, step: int) -> list[dict]:
        """Complete rows of an earlier run up to `step` (a resumed run rewrites what came after; a line cut
        off by a crash has missing fields and is dropped)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return [row for row in csv.DictReader(handle)
                    if None not in row.values() and int(row["step"]) <= step]

    def rewrite(self) -> None:
        with atomic_path(self.path) as temporary:
            with open(temporary, "w", newline="") as handle:
                if self.fields:  # an earlier run that logged nothing before the resumed step leaves no rows
                    writer = csv.DictWriter(handle, fieldnames=self.fields)
                    writer.writeheader()
                    writer.writerows(self.rows)

    def log(self, step: int, scalars: dict) -> None:
        row = {"step": step, **scalars}
        self.rows.append(row)
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        if self.fields is not None and not set(row) <= set(self.fields):  # resuming an older maefast's run
            self.fields += [key for key in row if key not in self.fields]
            self.rewrite()  # with the new columns, empty in the earlier rows
            return
        new_file = self.fields is None
        self.fields = self.fields or list(row)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        self.writer.close()


def reconstruction_images(model, pixels: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
    """(original, masked input, reconstruction) as standardized float images (B, C, H, W).

    The reconstruction shows the prediction on masked patches and the input elsewhere.
    """
    config = input_config(model)
    channels = pixels.shape[1]
    agnostic = getattr(config, "channel_agnostic", False)
    grid = (config.grid_side, config.grid_side)
    original = self_standardize(pixels).float()
    predicted = unpatchify(pred.detach().float(), config.patch_size, channels, grid, agnostic)
    patch_pixels = config.patch_size ** 2 * (1 if agnostic else channels)
    token_mask = mask.detach().float().unsqueeze(-1).expand(-1, -1, patch_pixels)
    masked_area = unpatchify(token_mask, config.patch_size, channels, grid, agnostic)
    return original, original * (1 - masked_area), original * (1 - masked_area) + predicted * masked_area


def save_reconstruction_grid(path: Path, model, pixels, pred, mask, channel_names=None, max_images: int = 3,
                             title: str = "") -> Path:
    """PNG grid: a column per channel; per image three rows: original, masked input, reconstruction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(max_images, pixels.shape[0])
    views = reconstruction_images(model, pixels[:count], pred[:count], mask[:count])
    channels = pixels.shape[1]
    names = list(channel_names or [f"ch{c}" for c in range(channels)])
    figure, axes = plt.subplots(3 * count, channels, figsize=(1.6 * channels, 1.6 * 3 * count), squeeze=False)
    for image in range(count):
        for channel in range(channels):
            reference = views[0][image, channel].flatten()
            low, high = torch.quantile(reference, torch.tensor([0.01, 0.99])).tolist()
            for kind, (label, images) in enumerate(zip(("original", "masked", "reconstruction"), views)):
                axis = axes[3 * image + kind, channel]
                axis.imshow(images[image, channel].cpu().numpy(), cmap="gray", vmin=low, vmax=high)
                axis.set_xticks([]), axis.set_yticks([])
                if image == 0 and kind == 0:
                    axis.set_title(names[channel], fontsize=8)
                if channel == 0:
                    axis.set_ylabel(f"{image}: {label}", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
    return path


def save_loss_curve(path: Path, rows: list[dict]) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in (None, "")]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot(*zip(*points))
    axis.set_xlabel("step"), axis.set_ylabel("loss"), axis.set_yscale("log")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    return path
