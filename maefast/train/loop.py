"""The training loop: setup, steps, checkpoints, resume, SIGTERM, non-finite losses, logging.

A run stopped by SIGTERM or SIGINT (maefast.train.signals) writes its checkpoint and returns a summary whose
"interrupted" names the signal (`maefast train` then exits with 143 for SIGTERM, the preemption convention,
and 130 for SIGINT); resumed, it continues where it stopped."""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from maefast import distributed as dist_utils
from maefast.errors import UserInputError
from maefast.io import write_json_atomic, write_yaml_atomic
from maefast.job_setup import ATTENTION_FILE, JOB_CONFIG_FILE, RunSetup, choose_attention, matmul_rate, training_step
from maefast.lock import OutputLock
from maefast.models.checkpoint import ENCODER_DIR, pretrained_config
from maefast.models.families import family_of
from maefast.models.regions import compile_regions
from maefast.models.registry import create_model, input_config
from maefast.progress import Progress
from maefast.records import describe_changes
from maefast.train.config import TrainConfig
from maefast.train.data import build_train_loader
from maefast.train.export import save_embedder
from maefast.train.observe import (
    Interval,
    ScalarLog,
    StepMetrics,
    Throughput,
    save_loss_curve,
    save_reconstruction_grid,
)
from maefast.train.optim import Cycle, build_optimizer, build_scheduler, first_cycle, rescheduled
from maefast.train.resume import check_config, check_data, record_config
from maefast.train.sharded import ShardedWriter
from maefast.train.signals import StopRequests
from maefast.train.state import (
    FULL,
    Checkpoint,
    checkpoint_dirs,
    checkpoint_root,
    newest_intact_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)


class NonFiniteLoss(UserInputError, RuntimeError):
    """Too many consecutive non-finite losses: the run stops, naming the step and the images."""


class Trainer:
    """A run in `out_dir`, which it holds exclusively (rank 0 holds the lock) until close().

    recipe: the recipe's name or path, recorded with the run. resume: continue from the newest intact
    checkpoint, with the config and data it was trained with; allow_config_change lets the resume continue
    with other config values (not another model, optimizer or data set), recorded in config_history.json.
    """

    def __init__(self, config: TrainConfig, out_dir, resume: bool = False, show_progress: bool = True,
                 recipe: str | None = None, allow_config_change: bool = False):
        self.config, self.out = config, Path(out_dir)
        self.show_progress, self.recipe = show_progress, recipe
        self.context = dist_utils.init_distributed(config.run.device)
        self.lock = dist_utils.run_on_main(lambda: OutputLock(self.out, "maefast train"), self.context)
        try:
            self.setup(resume, allow_config_change)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the run directory for the next job."""
        if self.lock is not None:
            self.lock.release()

    def setup(self, resume: bool, allow_config_change: bool) -> None:
        config, run = self.config, self.config.run
        device = self.context.device
        checkpoint = self.checkpoint_to_resume(resume)
        changes = {} if checkpoint is None else check_config(checkpoint.meta, config, self.recipe,
                                                              allow_config_change, checkpoint.path)
        self.run_setup = RunSetup.resolve(device, run.precision, run.compile)
        self.loader = build_train_loader(config, self.out, self.context)
        self.data_fingerprint = dist_utils.broadcast_object(  # rank 0 reads the files' samples
            self.loader.dataset.fingerprint() if self.context.is_main else None, self.context)
        if checkpoint is not None:
            check_data(checkpoint.meta, self.data_fingerprint, checkpoint.path)
        self.channel_names = list(self.loader.dataset.channels)
        overrides = dict(config.model.overrides)
        self.classes = None
        self.family = family_of(config.model.name)
        if self.family.needs_labels:  # weakly supervised: the perturbation is the label
            perturbations = self.loader.dataset.table["perturbation"].astype(str).to_numpy()
            self.classes, class_of_row = np.unique(perturbations, return_inverse=True)
            self.classes = self.classes.tolist()
            self.class_of_row = torch.from_numpy(class_of_row.astype(np.int64))
            overrides.setdefault("num_classes", len(self.classes))
        torch.manual_seed(run.seed)  # identical initial weights on every rank
        self.model = create_model(config.model.name, **overrides).to(device)
        self.check_channels()
        # run.precision=fp8: the GEMMs that pay run in FP8 (recorded in the checkpoints)
        self.fp8 = self.run_setup.prepare(self.model)
        batch_shape = (config.data.batch_size, len(self.channel_names), config.data.crop_size)
        step = training_step(self.model, batch_shape, self.run_setup)
        recorded = checkpoint.meta.get("attention") if checkpoint is not None else None
        self.attention = choose_attention(self.model, config.model.attention, self.run_setup, step, needs_grad=True,
                                          recorded=recorded,
                                          broadcast=lambda obj: dist_utils.broadcast_object(obj, self.context))
        blocks = self.family.blocks(self.model)
        recompute = dist_utils.recompute_mode(run.activation_checkpointing)
        if recompute:
            if not blocks:
                raise UserInputError(f"run.activation_checkpointing recomputes transformer blocks; "
                                     f"a {self.family.name} has none")
        if self.run_setup.compile:
            # block by block (maefast.models.regions): identical blocks share one graph, so compile time does not
            # grow with depth; activation checkpointing and the DDP / FSDP2 hooks stay outside the graphs
            compile_regions(self.model)
        if recompute:
            blocks = dist_utils.checkpoint_blocks(blocks, recompute)
        self.wrapped = dist_utils.wrap_model(self.model, blocks, self.context, run.parallel, self.run_setup.precision)
        self.sharded_writer = None
        if run.checkpoint_format == "sharded" or (run.checkpoint_format == "auto" and
                                                  self.context.enabled and run.parallel == "fsdp"):
            self.sharded_writer = ShardedWriter(self.context)
        optim = config.optim
        self.optimizer = build_optimizer(self.wrapped, optim.name, optim.lr, optim.weight_decay, optim.betas)
        channels = len(self.channel_names)
        self.flops_per_crop = self.family.training_flops(self.model, channels)
        self.tokens_per_crop = self.model.num_tokens(channels)
        self.step, self.total_flops, self.crops_seen = 0, 0.0, 0
        self.last_batch = None  # (pixels, pred, mask) of the latest step, for reconstruction images
        if checkpoint is not None:
            self.restore(checkpoint)
        else:
            torch.manual_seed(run.seed * 1_000_003 + self.context.rank)  # masks differ across ranks
        self.cycles, schedule_change = self.schedule(checkpoint)
        self.scheduler = build_scheduler(self.optimizer, self.cycles, start_step=self.step)
        if self.context.is_main:
            if changes:
                print(f"maefast train: resuming with a changed config: {describe_changes(changes)}")
            if schedule_change:
                print(f"maefast train: learning-rate schedule from step {self.step}: {schedule_change}")
            write_yaml_atomic(self.out / JOB_CONFIG_FILE, config.to_dict())
            record_config(self.out, config, self.recipe, self.step, changes, schedule_change)
            write_json_atomic(self.out / ATTENTION_FILE, self.attention)

    def checkpoint_to_resume(self, resume: bool) -> Checkpoint | None:
        existing = checkpoint_dirs(self.out)
        if dist_utils.restarted_by_torchrun():  # the elastic agent restarted the group: continue where it was
            resume = bool(existing)
        if not resume:
            if existing:
                raise UserInputError(f"{self.out} already holds checkpoints (latest {existing[0].name}); pass "
                                     f"--resume to continue that run or choose another --out")
            return None
        checkpoint = newest_intact_checkpoint(self.out, self.context)
        if checkpoint is None:
            raise UserInputError(f"--resume: {self.out} holds no checkpoint to resume from (nothing in "
                                 f"{checkpoint_root(self.out)}); start the run without --resume")
        return checkpoint

    def schedule(self, checkpoint: Checkpoint | None) -> tuple[list[Cycle], str | None]:
        """The learning-rate cycles of the run (maefast.train.optim) and, when a resume changes them, what the
        change is, in words: the cycles the checkpoint recorded (a run from before they were recorded: the one
        cycle of its config), with an allowed change of optim.warmup_fraction or optim.min_lr_ratio applied to
        the current cycle, continued to run.max_steps (maefast.train.optim.rescheduled)."""
        optim, total = self.config.optim, self.config.run.max_steps
        if checkpoint is None:
            return [first_cycle(total, optim.warmup_fraction, optim.min_lr_ratio)], None
        recorded = checkpoint.meta.get("schedule")
        if recorded:
            cycles = [Cycle(**cycle) for cycle in recorded]
        else:
            old = checkpoint.meta["config"]
            cycles = [first_cycle(old["run"]["max_steps"], old["optim"]["warmup_fraction"],
                                  old["optim"].get("min_lr_ratio", 0.0))]
        notes, last = [], cycles[-1]
        warmup = max(1, int((last.end - last.start) * optim.warmup_fraction)) if last.warmup else 0
        if (warmup, optim.min_lr_ratio) != (last.warmup, last.min_ratio):
            cycles[-1] = dataclasses.replace(last, warmup=warmup, min_ratio=optim.min_lr_ratio)
            notes.append(f"the current cycle (steps {last.start} to {last.end}) now warms up over {warmup} steps "
                         f"and decays to {optim.min_lr_ratio:g} x the rate")
        if total < self.step:
            raise UserInputError(f"run.max_steps={total}: the run is at step {self.step} already; resume with "
                                 f"--max-steps {self.step} or more")
        if total not in (cycles[-1].end, self.step):
            cycles, note = rescheduled(cycles, self.step, total, optim.warmup_fraction, optim.min_lr_ratio)
            notes.append(note)
        return cycles, "; ".join(notes) or None

    def check_channels(self) -> None:
        inputs, count = input_config(self.model), len(self.channel_names)
        advice = "" if inputs.channel_agnostic else f" or set model.overrides.in_chans={count}"
        inputs.check_channels(count, f"the dataset {self.channel_names}",
                              f": select channels with data.channels{advice}")

    # -- checkpoints -------------------------------------------------------------------------------
    def restore(self, checkpoint: Checkpoint) -> None:
        restore_checkpoint(checkpoint, self.wrapped, self.optimizer)
        state = checkpoint.train_state
        self.step, self.total_flops, self.crops_seen = state["step"], state["total_flops"], state["crops_seen"]
        self.loader.load_state_dict(state["loader"])
        rng_states = state["rng"]
        if len(rng_states) == self.context.world_size:
            set_rng_state(rng_states[self.context.rank])
        else:
            warnings.warn(f"checkpoint has RNG states of {len(rng_states)} ranks, this run has "
                          f"{self.context.world_size}: masks are re-seeded, not replayed", stacklevel=2)
            torch.manual_seed(self.config.run.seed * 1_000_003 + self.context.rank + self.step)
        if self.context.is_main:
            print(f"maefast train: resumed from {checkpoint.path} at step {self.step}")

    def save(self) -> None:
        rng_states = dist_utils.gather_objects(rng_state(), self.context)
        meta = {"total_flops": self.total_flops, "crops_seen": self.crops_seen, "model": self.config.model.name,
                "config": self.config.to_dict(), "recipe": self.recipe, "data": self.data_fingerprint,
                "attention": self.attention, "schedule": [dataclasses.asdict(cycle) for cycle in self.cycles],
                **({"fp8": self.fp8} if self.fp8 else {})}
        train_state = {"step": self.step, "total_flops": self.total_flops, "crops_seen": self.crops_seen,
                       "loader": self.loader.state_dict()}
        model_config = pretrained_config(self.model, self.channel_names,
                                         {"classes": self.classes} if self.classes is not None else None)
        keep = self.config.run.keep_checkpoints
        if self.sharded_writer is not None:
            save_sharded_checkpoint(self.out, self.step, self.wrapped, self.optimizer, train_state, rng_states, meta,
                                    model_config, self.context, keep, self.sharded_writer)
            return
        save_checkpoint(self.out, self.step, self.wrapped, self.optimizer, train_state, rng_states, meta,
                        model_config, self.context.is_main, keep)
        dist_utils.barrier(self.context)

    def export_encoder(self) -> Path | None:
        """What embeds, as a maefast checkpoint (safetensors): an MAE's encoder, or the whole model
        (MU-Net, classifier), whose .embed gives the embedding. Collective under FSDP."""
        full = get_model_state_dict(self.wrapped, options=FULL)
        if not self.context.is_main:
            return None
        extra = {"step": self.step, "total_flops": self.total_flops}
        if self.classes is not None:
            extra["classes"] = self.classes
        return save_embedder(self.model, full, self.out / ENCODER_DIR, self.config.model.name, self.channel_names,
                             extra)

    # -- steps -------------------------------------------------------------------------------------
    def batches(self):
        while True:
            yield from self.loader

    def train_step(self, iterator):
        """One optimizer step's forward and backward over `accumulation` micro-batches.

        Returns (the loss and its named parts (TrainingOutput.parts), each a 0-d device tensor, the mean over the
        micro-batches; image ids; and the last micro-batch's pixels, pred and mask)."""
        accumulation = self.config.optim.accumulation
        totals, ids = {}, []
        for micro in range(accumulation):
            batch = next(iterator)
            pixels = batch["pixels"].to(self.context.device, non_blocking=True)
            inputs = (pixels,) if self.classes is None else (pixels, self.labels(batch["index"]))
            ids.extend(list(batch["ids"]))
            last_micro = micro == accumulation - 1
            defer_sync = not last_micro and hasattr(self.wrapped, "no_sync")
            sync = self.wrapped.no_sync() if defer_sync else contextlib.nullcontext()
            with sync:
                with self.run_setup.autocast():
                    output = self.wrapped(*inputs)
                (output.loss / accumulation).backward()
            for name, value in {"loss": output.loss, **output.parts}.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float() / accumulation
        return totals, ids, pixels, output.pred, output.mask

    def labels(self, rows) -> torch.Tensor:
        """Class index of each crop's perturbation (weakly supervised training)."""
        return self.class_of_row[rows].to(self.context.device)

    def train(self) -> dict:
        """Steps until run.max_steps. Nothing inside a step waits for the device: the loss, whether it is finite
        and the gradient norm stay on the device (StepMetrics) and are read every run.log_every steps, where the
        non-finite steps are reported (and, under torchrun, SIGTERM / SIGINT acted on; one process acts on them
        at the end of the step). A step whose loss is not
        finite (on any rank) still counts as a step, but the optimizer leaves the weights as they were, on the
        device (its `found_inf`); run.nonfinite_limit of them in a row stop the run."""
        run, context = self.config.run, self.context
        self.interrupted = None
        stops = StopRequests().install()  # SIGTERM / SIGINT: checkpoint at the end of the step, then stop
        # MFU is a GPU figure: on a CPU, shared with the loader's workers, a matmul timed at start-up is no peak
        # (it made a CPU run read 94%), so a CPU run reports crops/s, tokens/s and TFLOP/s only
        rate = matmul_rate(context.device, self.run_setup.precision) if context.device.type == "cuda" else None
        meter = Throughput(self.flops_per_crop, self.tokens_per_crop, rate, context.world_size)
        log = ScalarLog(self.out, self.step) if context.is_main else None
        progress = Progress("train", run.max_steps, "steps", initial=self.step, bar=self.show_progress,
                            silent=not context.is_main)
        # meter.batches counts the time blocked on the loader (data_wait); streak: non-finite steps in a row
        iterator, metrics, self.streak = meter.batches(self.batches()), StepMetrics(), 0
        try:
            while self.step < run.max_steps:
                self.optimizer.zero_grad(set_to_none=True)
                losses, ids, pixels, pred, mask = self.train_step(iterator)
                finite = dist_utils.all_true(torch.isfinite(torch.stack(list(losses.values()))).all(), context)
                grad_norm = self.clip_gradients()
                self.optimizer.found_inf = (~finite).float()  # a non-finite step leaves the weights unchanged
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                crops = pixels.shape[0] * self.config.optim.accumulation
                self.crops_seen += crops * context.world_size
                self.total_flops += crops * context.world_size * self.flops_per_crop
                meter.add(crops)
                metrics.add(self.step, ids, losses, finite, grad_norm)
                shown = {}
                if self.step % run.log_every == 0 or self.step == run.max_steps:
                    shown = self.log_scalars(log, self.check_finite(metrics.read()), meter)
                progress.update(1, **shown)
                self.last_batch = (pixels, pred, mask) if mask is not None else None
                if context.is_main and self.last_batch is not None and self.step % run.image_every == 0:
                    self.save_images(*self.last_batch)
                if context.enabled:  # ranks agree on a stop where they read their metrics (no extra sync)
                    stop = len(metrics) == 0 and dist_utils.any_rank(stops.requested, context)
                else:  # one process acts on a signal at once
                    stop = stops.requested
                if self.step % run.checkpoint_every == 0 or self.step == run.max_steps or stop:
                    self.save()
                if stop:
                    if self.sharded_writer is not None:
                        self.sharded_writer.wait()
                    if context.is_main:
                        print(f"maefast train: {stops.received or 'stop on another rank'}: checkpoint at step "
                              f"{self.step} written, stopping (continue with --resume)")
                    self.interrupted = stops.received or "another rank"
                    break
            if self.sharded_writer is not None:
                self.sharded_writer.wait()  # a checkpoint being written is complete before the run ends
        finally:
            progress.close()
            stops.restore()
            if log is not None:
                log.close()
        return self.finish(log)

    def check_finite(self, interval: Interval) -> Interval:
        """Warns about each step of `interval` whose loss was not finite (its update was skipped) and stops the
        run at run.nonfinite_limit such steps in a row (counted across intervals)."""
        limit = self.config.run.nonfinite_limit
        for step, finite in interval.steps:
            if finite:
                self.streak = 0
                continue
            ids = interval.nonfinite_ids[step]
            message = f"non-finite loss at step {step} (batch images {ids[:16]}{'...' if len(ids) > 16 else ''})"
            self.streak += 1
            if self.streak == 1:
                self.streak_start = message
            if self.streak >= limit:
                raise NonFiniteLoss(f"{self.streak_start}; {self.streak} in a row, the limit is "
                                    f"run.nonfinite_limit={limit}")
            warnings.warn(message + ": update skipped", stacklevel=3)
        return interval

    def clip_gradients(self) -> torch.Tensor | None:
        """Clips the gradients to optim.grad_clip; returns their norm before clipping (a device tensor), or None
        when clipping is off."""
        limit = self.config.optim.grad_clip
        if limit <= 0:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), limit)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 gives a DTensor

    def log_scalars(self, log, interval: Interval, meter) -> dict:
        """Logs the interval's mean losses and the rates; returns what the progress line shows."""
        # the loss and its named terms (masked models: mse, fourier); nan when no step of the interval was finite
        losses = interval.losses or {"loss": float("nan")}
        means = {name: dist_utils.mean_over_ranks(value, self.context) for name, value in losses.items()}
        loss = means["loss"]
        rates = meter.report()
        if log is None:
            return {}
        scalars = {**means, "lr": self.scheduler.get_last_lr()[0], "grad_norm": interval.grad_norm,
                   "total_flops": self.total_flops, **rates}
        log.log(self.step, scalars)
        shown = {"loss": loss, "crops_s": rates["crops_per_s"], "tokens_s": rates["tokens_per_s"],
                 "data_wait": f"{rates['data_wait']:.0%}"}
        return {**shown, "mfu": f"{rates['mfu']:.1%}"} if "mfu" in rates else shown

    def save_images(self, pixels, pred, mask) -> None:
        save_reconstruction_grid(self.out / "images" / f"reconstruction-step{self.step:08d}.png", self.model,
                                 pixels, pred, mask, self.channel_names, title=f"step {self.step}")

    def finish(self, log) -> dict:
        summary = {"step": self.step, "total_flops": self.total_flops, "crops_seen": self.crops_seen,
                   "out": str(self.out), "interrupted": self.interrupted,
                   "skipped": list(getattr(self.loader, "skipped", []))}
        if self.step >= self.config.run.max_steps:
            if self.context.is_main and self.last_batch is not None and self.step % self.config.run.image_every:
                self.save_images(*self.last_batch)
            encoder_dir = self.export_encoder()
            summary["encoder"] = str(encoder_dir) if encoder_dir else None
        if self.context.is_main:
            if log is not None:
                save_loss_curve(self.out / "loss.png", log.rows)
                summary["final_loss"] = float(log.rows[-1]["loss"]) if log.rows else None
            write_json_atomic(self.out / "summary.json", summary)
        return summary


def train(config: TrainConfig, out_dir, resume: bool = False, show_progress: bool = True, recipe: str | None = None,
          allow_config_change: bool = False) -> dict:
    trainer = Trainer(config, out_dir, resume=resume, show_progress=show_progress, recipe=recipe,
                      allow_config_change=allow_config_change)
    try:
        return trainer.train()
    finally:
        trainer.close()
        dist_utils.shutdown(trainer.context)
