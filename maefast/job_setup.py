"""How a job is set up before its first step: one module for `maefast train`, `maefast embed` and the benchmarks.

  RunSetup.resolve(device, precision, compile)  the precision ("auto": bf16 on CUDA, fp32 elsewhere; "fp8": bf16
                                                with the GEMMs that pay in FP8) and whether to torch.compile
                                                ("auto": on CUDA, where the models trace as one graph; not on the
                                                CPU, where compiling costs more than short jobs gain). One
                                                vocabulary: compile is "auto", true or false.
  setup.prepare(model)                          what the precision changes in a model itself, once, before it is
                                                compiled (fp8: models.fp8.convert_to_fp8), for every job alike
  choose_attention(...)                         the attention backend of every site of a model: the user's, the
                                                one a resumed job recorded, or (CUDA, "auto") the fastest per
                                                role, timed once at the job's own shapes (a sub-batch of at most
                                                TUNING_CROPS crops: training_step, embedding_step)
  choose_tile_batch(...)                        an embedding job's tiles per forward: the user's number, the one
                                                a resumed job recorded, or (CUDA, "auto") the largest batch that
                                                fits and still gets faster, timed once
  matmul_rate(device, precision)                the dense matmul rate behind every MFU figure, measured one way

The choices are made once, outside any traced region, and the same way on every rank (`broadcast(obj)` gives
rank 0's obj). Each returns a record, a JSON-able dict, and writes nothing: the job writes it (ATTENTION_FILE,
TILE_BATCH_FILE, the checkpoints) and hands it back as `recorded` when it resumes, so that a resumed job runs
the same kernels at the same batch. Compute objects (the model, the embedding job's TileEmbedder) never see
an output folder.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from maefast.choices import PRECISIONS
from maefast.errors import UserInputError
from maefast.models.attention_setup import configure_attention, tune_attention, tuning_batch
from maefast.models.families import family_of
from maefast.models.fp8 import convert_to_fp8
from maefast.ops.patches import random_pixels

# what a job writes into its folder: its effective config, and the records of its setup
JOB_CONFIG_FILE, ATTENTION_FILE, TILE_BATCH_FILE = "config.yaml", "attention.json", "tile_batch.json"
TILE_BATCH_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# A tuned batch may peak at this share of the GPU's memory: the rest is for the CUDA graphs' memory pool,
# compiled kernels' workspaces and a GPU-resident loader.
MEMORY_SHARE = 0.7
SATURATION_GAIN = 1.05  # a batch twice as large must be this much faster to be worth its memory
# the matmul behind MFU: large enough to reach a GPU's sustained rate, small enough to take milliseconds
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}


def same_object(obj):
    """broadcast() of a single process."""
    return obj


@dataclass(frozen=True)
class RunSetup:
    """The device a job runs on, its precision ("bf16" | "fp32" | "fp8") and whether it compiles.

    fp8 is bf16 (autocast, and bf16 weights where a job casts them) with the GEMMs that pay in FP8: prepare()
    converts them, once per model, before the model is compiled."""
    device: torch.device
    precision: str
    compile: bool

    @classmethod
    def resolve(cls, device: torch.device, precision: str = "auto", compile: str | bool = "auto") -> RunSetup:
        """precision: one of maefast.choices.PRECISIONS; compile: one of maefast.choices.COMPILE_CHOICES."""
        if precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if compile != "auto" and not isinstance(compile, bool):
            raise UserInputError(f"compile must be auto, true or false, got {compile!r}")
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        return cls(device, precision, device.type == "cuda" if compile == "auto" else compile)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations (fp8 runs its activations, and FP8 GEMMs' outputs, in bf16)."""
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    def autocast(self):
        """The autocast context of a forward in this precision (none in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> dict | None:
        """What the precision changes in `model` itself, in place: once, after the model is on its device and
        before it is compiled or wrapped. fp8: the GEMMs that pay run in FP8 (models.fp8.convert_to_fp8;
        torchao's emulation off CUDA); returns that report, which the job records. Other precisions: None."""
        if self.precision != "fp8":
            return None
        return convert_to_fp8(model).to_dict()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, precision: str, repeats: int = 10) -> float:
    """Achieved FLOP/s of a square matmul on `device` in `precision` ("bf16" | "fp32" | "fp8"), measured now:
    the denominator of MFU. fp8 is measured as a bf16 matmul, so that an FP8 run's MFU is comparable with a
    bf16 run's (and can pass 100% of it). On a CPU a 1024 fp32 matmul, whatever the precision (a CPU figure is
    never a GPU's)."""
    size = MATMUL_SIZE.get(device.type, MATMUL_SIZE["cpu"])
    dtype = torch.bfloat16 if precision in ("bf16", "fp8") and device.type == "cuda" else torch.float32
    if device.type != "cuda":
        repeats = min(repeats, 4)
    generator = torch.Generator().manual_seed(0)  # its own generator: the job's RNG stream stays untouched
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


# -- attention ----------------------------------------------------------------------------------------------

def choose_attention(model: torch.nn.Module, requested: str, setup: RunSetup, step: Callable[[], None], *,
                     needs_grad: bool, recorded: dict | None = None, broadcast=same_object) -> dict:
    """Sets the attention backend of every site of `model`; returns the record {"requested", "choice": backend
    per role, "timings": what each candidate measured (ms, or why it could not run)}, with "reused": true when
    it is `recorded` (the record of the job being resumed).

    requested: "auto" or a backend for every site. step(): one eager forward of `model` at the job's shapes
    with a sub-batch of tuning_batch(batch) crops (training_step, embedding_step), from which tune_attention
    records what each role receives; it then times every candidate there (CUDA only), forward and, when
    needs_grad, backward."""
    if requested != "auto":
        return {"requested": requested, "choice": configure_attention(model, requested), "timings": {}}
    if recorded is not None:
        return {"requested": requested, "choice": configure_attention(model, recorded["choice"]),
                "timings": recorded.get("timings", {}), "reused": True}
    if setup.device.type != "cuda":
        return {"requested": requested, "choice": configure_attention(model, "auto"), "timings": {}}
    tuning = tune_attention(model, step, needs_grad=needs_grad)
    choice, timings = broadcast((tuning.choice, tuning.timings))
    return {"requested": requested, "choice": configure_attention(model, choice), "timings": timings}


def random_batch(model, batch: int, channels: int, size: int, device: torch.device) -> tuple:
    """Inputs of one training step at a job's shapes: random uint16 pixels (and labels for a classifier)."""
    inputs = (random_pixels(batch, channels, size, torch.uint16, device),)
    if family_of(model).needs_labels:
        inputs += (torch.randint(0, model.config.num_classes, (batch,), device=device),)
    return inputs


def training_step(model, batch_shape: tuple[int, int, int], setup: RunSetup) -> Callable[[], None]:
    """step() for choose_attention in a training job: one forward of `model`, under the job's autocast and
    without gradients, on random inputs of batch_shape (batch, channels, crop size) at a sub-batch of
    tuning_batch(batch) crops. tune_attention restores the RNG afterwards: these inputs change nothing later."""
    batch, channels, size = batch_shape

    def step():
        with torch.no_grad(), setup.autocast():
            model(*random_batch(model, tuning_batch(batch), channels, size, setup.device))
    return step


def embedding_step(forward: Callable[[torch.Tensor], torch.Tensor], tiles: int, tile_shape: tuple[int, int, int],
                   setup: RunSetup) -> Callable[[], None]:
    """step() for choose_attention in an embedding job: `forward` (the eager pooled encoder) on random 16-bit
    tiles of tile_shape (channels, size, size), a sub-batch of tuning_batch(tiles) of the job's `tiles`."""
    channels, size = tile_shape[:2]
    return lambda: forward(random_pixels(tuning_batch(tiles), channels, size, torch.uint16, setup.device))


# -- the tile batch of an embedding job ---------------------------------------------------------------------

@dataclass
class BatchTrial:
    tiles: int
    tiles_per_s: float | None = None
    peak_bytes: int | None = None
    outcome: str = "fits"  # fits | out of memory | over the memory share | no faster


def search_tile_batch(measure: Callable[[int], tuple[float, int]], memory_limit: int,
                      candidates=TILE_BATCH_CANDIDATES) -> tuple[int, list[BatchTrial]]:
    """The tiles per forward: grows the batch through `candidates` while it fits and gets faster.

    measure(tiles) -> (tiles per second, peak memory in bytes), raising torch.OutOfMemoryError when the
    batch does not fit. The search stops at the first batch that runs out of memory, peaks above
    `memory_limit`, or gains less than SATURATION_GAIN over the best so far; the answer is the largest batch
    that fit and was no slower than a smaller one. Returns it and every trial."""
    trials: list[BatchTrial] = []
    best_rate = 0.0
    for tiles in candidates:
        trial = BatchTrial(tiles)
        trials.append(trial)
        try:
            trial.tiles_per_s, trial.peak_bytes = measure(tiles)
        except torch.OutOfMemoryError:
            trial.outcome = "out of memory"
        else:
            if trial.peak_bytes > memory_limit:
                trial.outcome = "over the memory share"
            elif trial.tiles_per_s < best_rate * SATURATION_GAIN:
                trial.outcome = "no faster"
        if trial.outcome == "out of memory":
            gc.collect()  # the failed batch's tensors, held by the exception until now
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if trial.outcome != "fits":
            break
        best_rate = trial.tiles_per_s
    # the batch that stopped the growth still counts when it is no slower: the largest batch that fits
    fitting = [t.tiles for t in trials
               if t.outcome == "fits" or (t.outcome == "no faster" and t.tiles_per_s >= best_rate)]
    if not fitting:
        raise UserInputError(f"not even {candidates[0]} tiles per forward fit on the device "
                             f"({trials[0].outcome}); the encoder is too large for it")
    return max(fitting), trials


def measure_forward(forward: Callable[[torch.Tensor], torch.Tensor], tile_shape: tuple[int, int, int],
                    device: torch.device, repeats: int = 3) -> Callable[[int], tuple[float, int]]:
    """measure(tiles) for search_tile_batch: a CUDA forward's tiles per second and peak memory (random
    16-bit pixels; one warm-up call, then `repeats` timed ones)."""
    def measure(tiles: int) -> tuple[float, int]:
        pixels = random_pixels(tiles, tile_shape[0], tile_shape[1], torch.uint16, device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward(pixels)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            forward(pixels)
        torch.cuda.synchronize(device)
        return tiles * repeats / (time.perf_counter() - start), torch.cuda.max_memory_allocated(device)
    return measure


def choose_tile_batch(requested: int | str, loader_tiles: int, forward: Callable[[torch.Tensor], torch.Tensor],
                      tile_shape: tuple[int, int, int], setup: RunSetup, *, recorded: dict | None = None,
                      broadcast=same_object) -> dict:
    """The record {"tiles": tiles per forward, ...}: the user's number; else what a resumed job `recorded`
    ("reused": true); else on a CPU `loader_tiles` (one loader batch's tiles); else (CUDA) the batch
    search_tile_batch finds with the eager `forward` ("trials": each batch tried), rank 0's on every rank."""
    if requested != "auto":
        return {"tiles": int(requested)}
    if recorded is not None:
        return {**recorded, "reused": True}
    if setup.device.type != "cuda":
        return {"tiles": loader_tiles}
    total = torch.cuda.get_device_properties(setup.device).total_memory
    tiles, trials = search_tile_batch(measure_forward(forward, tile_shape, setup.device), int(total * MEMORY_SHARE))
    return broadcast({"tiles": tiles, "trials": [asdict(t) for t in trials]})
