"""A training step without avoidable waste: every batch full (a compiled model never sees a smaller last batch),
no host synchronization inside a step (the loss, its finiteness and the gradient norm are read every
run.log_every steps from the device), and run.precision=fp8 (torchao's emulation on the CPU)."""
import json

import pytest
import torch

from maefast.errors import UserInputError
from maefast.train.config import load_config
from maefast.train.loop import Trainer
from maefast.train.observe import StepMetrics

FAST = ["model.overrides.decoder_depth=1", "data.num_workers=1", "data.crops_per_image=1"]


def config_for(screen, *extra):
    return load_config("debug", FAST + [f"data.path={screen}", *extra])


def test_every_training_batch_is_full_and_a_too_small_data_set_is_named(screen, tmp_path):
    trainer = Trainer(config_for(screen, "data.batch_size=5", "run.max_steps=1"), tmp_path / "a", show_progress=False)
    images = len(trainer.loader.dataset)
    assert images % 5  # the screen does not divide into batches of 5: the last one is dropped
    sizes = [batch["pixels"].shape[0] for batch in trainer.loader]
    assert sizes == [5] * (images // 5)
    trainer.close()
    with pytest.raises(UserInputError, match=f"data.batch_size=500 .* has {images}"):
        Trainer(config_for(screen, "data.batch_size=500"), tmp_path / "b", show_progress=False)


def test_step_metrics_read_back_means_of_finite_steps_and_the_non_finite_ones():
    def losses(loss: float, mse: float) -> dict:  # the loss and a named part, as TrainingOutput gives them
        return {"loss": torch.tensor(loss), "mse": torch.tensor(mse)}

    metrics = StepMetrics()
    metrics.add(1, ["a"], losses(2.0, 1.0), torch.tensor(True), torch.tensor(0.5))
    metrics.add(2, ["b", "c"], losses(float("nan"), 3.0), torch.tensor(False), torch.tensor(float("nan")))
    metrics.add(3, ["d"], losses(4.0, 5.0), torch.tensor(True), torch.tensor(0.25))
    interval = metrics.read()
    assert interval.losses == {"loss": 3.0, "mse": 3.0} and interval.grad_norm == 0.25
    assert interval.steps == [(1, True), (2, False), (3, True)] and interval.nonfinite_ids == {2: ["b", "c"]}
    assert len(metrics) == 0


def test_no_host_synchronization_inside_a_step(screen, tmp_path, monkeypatch):
    """Between two reads of the metrics, nothing in the loop turns a tensor into a Python value."""
    trainer = Trainer(config_for(screen, "data.batch_size=4", "run.max_steps=6", "run.log_every=3",
                                 "optim.name=adamw"), tmp_path, show_progress=False)
    syncs = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            syncs.append((_method, trainer.step))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, counting)
    reads = []
    original_read = StepMetrics.read
    monkeypatch.setattr(StepMetrics, "read", lambda self: reads.append(trainer.step) or original_read(self))
    trainer.train()
    trainer.close()
    assert reads == [3, 6]
    # the only conversions: the reads themselves, at steps 3 and 6 (and what the end of the run does after)
    assert ("tolist", 3) in syncs  # the counting works: the read at step 3 converts once
    assert {step for _, step in syncs if step < 6} <= {3}, syncs


def test_fp8_training_converts_the_gemms_and_records_them(screen, tmp_path, monkeypatch):
    # the debug model is 64 wide: convert its GEMMs from 64 (the default threshold is for ViT-L's 1024)
    monkeypatch.setenv("MAEFAST_FP8_MIN_FEATURES", "64")
    trainer = Trainer(config_for(screen, "data.batch_size=4", "run.max_steps=2", "run.precision=fp8"), tmp_path,
                      show_progress=False)
    assert trainer.fp8["emulated"] and "encoder.blocks.0.in_proj" in trainer.fp8["fp8"]
    assert "decoder_pred" in trainer.fp8["kept"]
    summary = trainer.train()
    trainer.close()
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))
    meta = json.loads((tmp_path / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["fp8"]["fp8"] == trainer.fp8["fp8"]
