"""The training engine end to end on the debug recipe: outputs, exact resume after SIGKILL, SIGTERM,
non-finite losses, bad data."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from maefast.cli import main
from maefast.data.synthetic import synth_screen
from maefast.embedding.encoder import load_encoder
from maefast.ops.patches import random_pixels
from maefast.train.config import load_config
from maefast.train.loop import NonFiniteLoss, Trainer, train

ROOT = Path(__file__).resolve().parents[2]
FAST = ["model.overrides.decoder_depth=1", "data.batch_size=4", "data.crops_per_image=2", "data.num_workers=1"]


def config_for(screen, *extra):
    return load_config("debug", FAST + [f"data.path={screen}", *extra])


def test_debug_run_writes_checkpoints_metrics_images_and_encoder(screen, tmp_path):
    summary = train(config_for(screen, "run.max_steps=6", "run.checkpoint_every=3", "run.image_every=4",
                               "run.log_every=2"), tmp_path, show_progress=False)
    assert summary["step"] == 6 and summary["final_loss"] > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 6
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,mse,fourier,lr") and len(lines) == 4
    for row in lines[1:]:  # the logged parts make up the logged loss: (1 - w) * mse + w * fourier, w = 0.01
        loss, mse, fourier = map(float, row.split(",")[1:4])
        assert mse > 0 and fourier > 0 and loss == pytest.approx(0.99 * mse + 0.01 * fourier, rel=1e-5)
    header = lines[0].split(",")  # the share of each interval blocked on the loader
    assert "data_wait" in header and all(0 <= float(row.split(",")[header.index("data_wait")]) <= 1
                                         for row in lines[1:])
    images = sorted((tmp_path / "images").glob("*.png"))
    assert [p.name for p in images] == ["reconstruction-step00000004.png", "reconstruction-step00000006.png"]
    assert all(p.stat().st_size > 5000 for p in images) and (tmp_path / "loss.png").exists()
    encoder, channels = load_encoder(tmp_path)
    assert len(channels) == 6
    flops = (tmp_path / "checkpoints" / "flops.csv").read_text().splitlines()
    assert flops[0] == "checkpoint,flops" and flops[1].startswith("step-00000003,") and len(flops) == 3
    early, _ = load_encoder(tmp_path / "checkpoints" / "step-00000003")  # a checkpoint embeds directly
    assert not torch.equal(early.cls_token, encoder.cls_token)
    pixels = random_pixels(2, 6, 64)
    assert encoder.embed(pixels).shape == (2, 64)
    assert summary["total_flops"] == 6 * 8 * DEBUG_MAE_TRAINING_FLOPS  # 6 steps of 4 images x 2 crops


def test_data_wait_is_each_logged_intervals_time_blocked_on_a_slow_loader(screen, tmp_path, monkeypatch):
    """Steps read their metrics every run.log_every steps (StepMetrics); data_wait is still the share of each such
    interval spent in the loader's next(): a loader that sleeps 0.3 s per batch shows at least those seconds."""
    delay, log_every = 0.3, 2
    fast_batches = Trainer.batches

    def slow_batches(self):
        for batch in fast_batches(self):
            time.sleep(delay)
            yield batch
    monkeypatch.setattr(Trainer, "batches", slow_batches)
    train(config_for(screen, "run.max_steps=4", f"run.log_every={log_every}", "run.checkpoint_every=4",
                     "run.image_every=100"), tmp_path, show_progress=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [int(row["step"]) for row in rows] == [2, 4] and "data_wait" in header
    for row in rows:  # the interval's seconds: its 2 steps x 8 crops over its crops/s
        seconds = log_every * 8 / float(row["crops_per_s"])
        waited = float(row["data_wait"]) * seconds
        assert log_every * delay <= waited <= seconds


def debug_mae_training_flops() -> int:
    """The debug recipe's MAE (6 channels, 64 x 64, patch 8, width 64, 2 encoder blocks, 1 decoder block, mask
    ratio 0.75), counted by hand: 2 FLOPs per multiply-add of every linear layer and attention product, a
    training step 3 x the forward."""
    patches, visible, width, hidden, patch_values = 64, 16, 64, 256, 8 * 8 * 6
    encoder_tokens, decoder_tokens = visible + 1, patches + 1  # + CLS

    def attention(tokens):  # q k^T and the weighted sum
        return 2 * 2 * tokens * tokens * width

    patch_embedding = 2 * visible * patch_values * width
    encoder_block = (2 * encoder_tokens * width * (hidden + 3 * width) + attention(encoder_tokens)
                     + 2 * encoder_tokens * width * width + 2 * encoder_tokens * hidden * width)
    projection = 2 * encoder_tokens * width * width
    decoder_block = (2 * decoder_tokens * width * 3 * width + attention(decoder_tokens)
                     + 2 * decoder_tokens * width * width + 2 * 2 * decoder_tokens * width * hidden)
    prediction = 2 * decoder_tokens * width * patch_values
    return 3 * (patch_embedding + 2 * encoder_block + projection + decoder_block + prediction)


DEBUG_MAE_TRAINING_FLOPS = debug_mae_training_flops()


def test_refuses_to_overwrite_a_run_and_checks_channels(screen, tmp_path):
    train(config_for(screen, "run.max_steps=1"), tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints .* pass --resume"):
        Trainer(config_for(screen, "run.max_steps=2"), tmp_path)
    with pytest.raises(ValueError, match=r"the dataset \['DNA', .*\] has 6 channels; the model takes in_chans=5: "
                                         r"select channels with data.channels or set model.overrides.in_chans=6"):
        Trainer(config_for(screen, "model.overrides.in_chans=5"), tmp_path / "other")
    two = Trainer(config_for(screen, "model.overrides.in_chans=2", "data.channels=[Mito, DNA]"), tmp_path / "two")
    assert two.channel_names == ["Mito", "DNA"]


class Run:
    """`maefast train` in a subprocess, its output in a file (a pipe could fill up and block it)."""

    def __init__(self, out, screen, steps, *settings, flags=()):
        command = [sys.executable, "-m", "maefast.cli", "train", "--recipe", "debug", "--out", str(out),
                   "--no-progress", "--max-steps", str(steps), "--data", str(screen), *flags]
        command += [f"--set={a}" for a in FAST + list(settings)]
        self.log = Path(str(out) + f".{len(list(Path(out).parent.glob('*.log')))}.log")
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=handle,
                                            stderr=subprocess.STDOUT)

    def wait(self, timeout=300) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text()


def wait_for_checkpoint(out: Path, step: int, run: Run, timeout: float = 240.0) -> None:
    manifest = out / "checkpoints" / "latest.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["step"] >= step:
            return
        if run.process.poll() is not None:
            raise AssertionError(f"training ended early:\n{run.log.read_text()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def final_weights(out: Path) -> dict:
    return load_file(str(out / "checkpoints" / "step-00000012" / "model.safetensors"))


def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(screen, tmp_path):
    settings = ["run.checkpoint_every=4", "run.log_every=4"]
    code, output = Run(tmp_path / "straight", screen, 12, *settings).wait()
    assert code == 0, output
    interrupted = Run(tmp_path / "killed", screen, 12, *settings)
    wait_for_checkpoint(tmp_path / "killed", 4, interrupted)
    interrupted.process.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step-00000012").exists()
    code, output = Run(tmp_path / "killed", screen, 12, *settings, flags=["--resume"]).wait()
    assert code == 0 and "resumed from" in output, output
    expected, got = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_sigterm_writes_a_checkpoint_and_exits_as_preempted_then_the_run_resumes_shortened(screen, tmp_path):
    """SIGTERM: a checkpoint, then exit code 143 (a scheduler sees a preempted job, not a finished one). The resumed
    run with a smaller --max-steps needs no --allow-config-change and says how its learning rate goes on."""
    run = Run(tmp_path / "run", screen, 10_000, "run.checkpoint_every=5000", "run.log_every=2")
    deadline = time.time() + 240
    while not (tmp_path / "run" / "metrics.csv").exists() and time.time() < deadline and run.process.poll() is None:
        time.sleep(0.05)
    run.process.send_signal(signal.SIGTERM)
    code, output = run.wait()
    assert code == 143, output
    step = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"]
    assert 0 < step < 10_000 and f"SIGTERM: checkpoint at step {step}" in output
    assert not (tmp_path / "run" / "encoder").exists()  # unfinished: nothing exported
    code, output = Run(tmp_path / "run", screen, step + 2, "run.checkpoint_every=5000", "run.log_every=2",
                       flags=["--resume"]).wait()
    assert code == 0, output
    warmed = (step + 1) / 1000  # still in the warm-up of 10,000 steps (1,000 steps): the factor at the next step
    assert (f"learning-rate schedule from step {step}: the cosine decay continues from {warmed:.4g} x optim.lr at "
            f"step {step} to 0 x optim.lr at step {step + 2} instead of 10000") in output
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(rows[-1]["step"]) == step + 2 and float(rows[-1]["lr"]) == 0.0
    assert (tmp_path / "run" / "encoder" / "config.json").exists()


class PoisonedLoader:
    """Wraps the real loader; the batches at the given positions get NaN pixels."""

    def __init__(self, loader, poisoned):
        self.loader, self.poisoned, self.dataset = loader, set(poisoned), loader.dataset
        self.position = 0

    def __iter__(self):
        for batch in self.loader:
            self.position += 1
            if self.position in self.poisoned:
                batch = dict(batch, pixels=torch.full(batch["pixels"].shape, float("nan")))
            yield batch

    def state_dict(self):
        return self.loader.state_dict()


def test_nonfinite_losses_are_skipped_then_stop_the_run(screen, tmp_path):
    trainer = Trainer(config_for(screen, "run.max_steps=4", "run.nonfinite_limit=3"), tmp_path / "a",
                      show_progress=False)
    trainer.loader = PoisonedLoader(trainer.loader, {2})
    with pytest.warns(UserWarning, match=r"non-finite loss at step 2 \(batch images \["):
        assert trainer.train()["step"] == 4
    trainer = Trainer(config_for(screen, "run.max_steps=8", "run.nonfinite_limit=3"), tmp_path / "b",
                      show_progress=False)
    trainer.loader = PoisonedLoader(trainer.loader, {2, 3, 4})
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 2 .*3 in a row"):
        trainer.train()


@pytest.mark.parametrize("recipe", ["debug_munet", "debug_wsl", "debug_camae"])
def test_other_systems_train_and_export_an_embedder(screen, tmp_path, recipe):
    config = load_config(recipe, [f"data.path={screen}", "data.batch_size=4", "run.max_steps=3",
                                  "run.image_every=3", "data.num_workers=1"])
    summary = train(config, tmp_path, show_progress=False)
    assert summary["step"] == 3 and summary["final_loss"] > 0
    embedder, channels = load_encoder(tmp_path)
    assert len(channels) == 6
    with torch.no_grad():
        embedding = embedder.embed(random_pixels(2, 6, 64))
    assert embedding.ndim == 2 and embedding.shape[0] == 2 and torch.isfinite(embedding).all()
    images = list((tmp_path / "images").glob("*.png"))
    assert len(images) == (0 if recipe == "debug_wsl" else 1)
    if recipe == "debug_wsl":
        meta = json.loads((tmp_path / "encoder" / "config.json").read_text())
        assert meta["classes"] == sorted(set(open_dataset_perturbations(screen)))


def open_dataset_perturbations(screen):
    from maefast.data import open_dataset
    return open_dataset(screen).table["perturbation"].astype(str)


def test_activation_checkpointing_recomputes_blocks_and_trains_the_same(screen, tmp_path):
    weights, forward_calls = [], []
    for name, checkpointing in (("plain", "false"), ("checkpointed", "true")):
        trainer = Trainer(config_for(screen, "run.max_steps=2", f"run.activation_checkpointing={checkpointing}"),
                          tmp_path / name, show_progress=False)
        calls = []
        trainer.model.encoder.blocks[0].in_proj.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        trainer.train()
        forward_calls.append(len(calls))
        weights.append(load_file(str(tmp_path / name / "checkpoints" / "step-00000002" / "model.safetensors")))
    assert forward_calls == [2, 4]  # checkpointed blocks run their forward again in the backward
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_run_resumes_from_another_directory_and_a_moved_data_set(screen, tmp_path, monkeypatch, capsys):
    """The data path is stored absolute, so a resume from elsewhere finds the data; a moved copy of the data set (same
    fingerprint) resumes without --allow-config-change, another data set is refused naming the data. Without a
    terminal, progress is plain lines (no carriage returns)."""
    flags = ["--recipe", "debug", "--no-progress", *[f"--set={a}" for a in FAST], "--set", "run.log_every=1"]
    shutil.copytree(screen, tmp_path / "screen")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *flags, "--data", "screen", "--out", "run", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and "train: 1/2 steps (50%)" in out and "train: 2/2 steps (100%), loss " in out
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["path"] == str(tmp_path / "screen")
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "tflops_per_s" in header and "mfu" not in header  # MFU is a GPU figure: none on a CPU
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    shutil.move(tmp_path / "screen", tmp_path / "moved")
    assert main(["train", *flags, "--data", "../moved", "--out", "../run", "--max-steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming with a changed config: data.path: '{tmp_path / 'screen'}' -> '{tmp_path / 'moved'}'; " \
           "run.max_steps: 2 -> 3" in out
    other = synth_screen(tmp_path / "other", layout="rxrx", num_genes=4, replicates=1, num_plates=1,
                         num_experiments=1, controls_per_plate=2, sites_per_well=2, size=128, channels=6, seed=5,
                         progress=False)
    assert main(["train", *flags, "--data", str(other), "--out", "../run", "--max-steps", "4", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "the data differs from what" in error and "--allow-config-change" not in error
