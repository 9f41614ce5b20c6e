"""--resume: never unpickles, skips damaged checkpoints, refuses other configs and data unless allowed."""
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from maefast.data.synthetic import synth_screen
from maefast.errors import UserInputError
from maefast.train.config import load_config
from maefast.train.loop import Trainer, train
from maefast.train.optim import one_cycle_factor
from tests.train.test_training import FAST

RUN = ["run.max_steps=4", "run.checkpoint_every=2"]


def config(screen, *settings, recipe="debug"):
    return load_config(recipe, FAST + [f"data.path={screen}", *RUN, *settings])


def resume(run_dir, screen, *settings, recipe="debug", allow=False):
    return Trainer(config(screen, *settings, recipe=recipe), run_dir, resume=True, show_progress=False,
                   recipe=recipe, allow_config_change=allow)


@pytest.fixture(scope="module")
def finished_run(screen, tmp_path_factory):
    """A 4-step debug run with checkpoints at steps 2 and 4."""
    path = tmp_path_factory.mktemp("finished") / "run"
    train(config(screen), path, show_progress=False, recipe="debug")
    return path


@pytest.fixture
def run_dir(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def checkpoint(run_dir, step):
    return run_dir / "checkpoints" / f"step-{step:08d}"


def test_resume_needs_a_checkpoint(screen, tmp_path):
    with pytest.raises(UserInputError, match=r"--resume: .*empty holds no checkpoint to resume from"):
        resume(tmp_path / "empty", screen)


class RunsCode:
    """Unpickling this creates `marker`: what a crafted train_state.pt in a run directory could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickled_training_state_is_never_unpickled(run_dir, screen, tmp_path):
    marker = tmp_path / "code-ran"
    for step in (4, 2):
        for name in ("train_state.json", "train_state.safetensors"):
            (checkpoint(run_dir, step) / name).unlink()
        torch.save({"optimizer": RunsCode(marker), "step": step}, checkpoint(run_dir, step) / "train_state.pt")
        if step == 4:  # the older checkpoint is still intact
            with pytest.warns(UserWarning, match=r"skipped the damaged checkpoint step-00000004: .*train_state.pt: "
                                                 r"training state in the pickle format .* no longer opens"):
                assert resume(run_dir, screen).step == 2
    with pytest.raises(UserInputError, match=r"no intact checkpoint to resume from; step-00000004: .*pickle format"
                                             r".*; step-00000002: .*train_state.pt"):
        resume(run_dir, screen)
    assert not marker.exists()
    torch.load(checkpoint(run_dir, 2) / "train_state.pt", weights_only=False)  # what maefast used to do
    assert marker.exists()


@pytest.mark.parametrize("damaged", ["model.safetensors", "train_state.json", "train_state.safetensors", "meta.json"])
def test_a_damaged_checkpoint_is_named_and_skipped(run_dir, finished_run, screen, damaged, capsys):
    path = checkpoint(run_dir, 4) / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=rf"skipped the damaged checkpoint step-00000004: .*step-00000004/{damaged}: "
                                         rf"damaged or truncated"):
        trainer = resume(run_dir, screen)
    assert trainer.step == 2 and "resumed from" in capsys.readouterr().out
    trainer.train()
    trainer.close()
    expected = load_file(str(checkpoint(finished_run, 4) / "model.safetensors"))
    got = load_file(str(checkpoint(run_dir, 4) / "model.safetensors"))
    assert all(torch.equal(expected[key], got[key]) for key in expected)  # exact resume from the older one


def test_the_skipped_checkpoint_does_not_outlive_the_ones_written_after_it(run_dir, screen):
    (checkpoint(run_dir, 4) / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped the damaged checkpoint step-00000004"):
        trainer = resume(run_dir, screen, "run.max_steps=3", "run.keep_checkpoints=1", allow=True)
    trainer.train()
    trainer.close()
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == ["step-00000003"]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"] == "step-00000003"


def test_when_no_checkpoint_is_intact_each_is_named(run_dir, screen):
    for step in (2, 4):
        (checkpoint(run_dir, step) / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(UserInputError, match=r"no intact checkpoint to resume from; step-00000004: .*step-00000004/"
                                             r"model.safetensors: damaged .*; step-00000002: .*model.safetensors"):
        resume(run_dir, screen)


def history(run_dir):
    return json.loads((run_dir / "config_history.json").read_text())


def test_a_changed_config_is_refused_naming_each_key(run_dir, screen):
    with pytest.raises(UserInputError, match=r"the config differs from the one .*step-00000004 was trained with: "
                                             r"optim.lr: 0.001 -> 0.002; run.nonfinite_limit: 5 -> 7; resume with "
                                             r"the same settings, or pass --allow-config-change"):
        resume(run_dir, screen, "optim.lr=0.002", "run.nonfinite_limit=7")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.001
    assert len(history(run_dir)) == 1


def test_an_allowed_change_is_applied_and_recorded(run_dir, screen):
    trainer = resume(run_dir, screen, "optim.lr=0.002", "run.nonfinite_limit=7", allow=True)
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [0.002 * one_cycle_factor(4, 4, 0.1)] * 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.002
    assert history(run_dir)[-1]["step"] == 4
    assert history(run_dir)[-1]["changes"] == {"optim.lr": [0.001, 0.002], "run.nonfinite_limit": [5, 7]}
    trainer.close()


def learning_rates(trainer, steps: int) -> list[float]:
    """The learning rate of each of the trainer's next `steps` steps, as its scheduler computes it."""
    scheduler = trainer.scheduler
    first = scheduler.last_epoch
    assert scheduler.get_last_lr()[0] == scheduler.base_lrs[0] * scheduler.lr_lambdas[0](first)
    return [scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step) for step in range(first, first + steps)]


def test_extending_a_finished_run_starts_a_new_cycle_over_the_added_steps(run_dir, screen, capsys):
    """--max-steps on resume needs no --allow-config-change; a finished run (learning rate at its minimum) gets a new
    warm-up and cosine decay over the added steps, which the checkpoints record for the next resume."""
    trainer = resume(run_dir, screen, "run.max_steps=24")
    out = capsys.readouterr().out
    assert ("learning-rate schedule from step 4: the learning-rate cycle ended at step 4; a new one runs over the 20 "
            "steps added: warm-up over 2 steps to optim.lr, then cosine decay to 0 x optim.lr at step 24") in out
    rates = learning_rates(trainer, 20)
    cycle = [one_cycle_factor(step, 20, 0.1) * 0.001 for step in range(20)]
    assert rates == pytest.approx(cycle, abs=1e-12)
    assert history(run_dir)[-1]["changes"] == {"run.max_steps": [4, 24]}
    assert "a new one runs over the 20 steps added" in history(run_dir)[-1]["schedule_change"]
    trainer.save()  # the checkpoint of step 4 again, now with the run's cycles
    trainer.close()
    again = resume(run_dir, screen, "run.max_steps=24")
    assert "learning-rate schedule" not in capsys.readouterr().out  # nothing changes: the recorded cycles
    assert learning_rates(again, 20) == pytest.approx(cycle, abs=1e-12)
    again.close()


def test_shortening_a_run_during_its_decay_continues_the_decay_from_where_it_is(screen, tmp_path):
    settings = ["run.checkpoint_every=10", "run.log_every=10"]
    train(config(screen, "run.max_steps=20", *settings), tmp_path / "run", show_progress=False, recipe="debug")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000020")
    trainer = resume(tmp_path / "run", screen, "run.max_steps=15", *settings)
    rates = learning_rates(trainer, 5)
    assert rates[0] == pytest.approx(0.001 * one_cycle_factor(10, 20, 0.1))  # no jump at the resume
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0]
    assert learning_rates(trainer, 6)[-1] == pytest.approx(0.0, abs=1e-12)  # step 15: the end of the decay
    trainer.close()
    with pytest.raises(UserInputError, match=r"run.max_steps=5: the run is at step 10 already"):
        resume(tmp_path / "run", screen, "run.max_steps=5", *settings)


def test_another_model_optimizer_or_data_set_is_refused_even_when_changes_are_allowed(run_dir, screen, tmp_path):
    with pytest.raises(UserInputError, match=r"another model or optimizer, which a resumed run cannot change: "
                                             r"optim.name: 'adamw' -> 'lion'"):
        resume(run_dir, screen, "optim.name=lion", allow=True)
    with pytest.raises(UserInputError, match=r"another model or optimizer \(recipe 'debug' -> 'debug_camae'\), .*"
                                             r"model.name: 'mae_vit_debug_patch8_64' -> 'camae_vit_debug_patch8_64'"):
        resume(run_dir, screen, recipe="debug_camae", allow=True)
    other = synth_screen(tmp_path / "other", layout="rxrx", num_genes=4, replicates=1, num_plates=1, num_experiments=1,
                         controls_per_plate=2, sites_per_well=2, size=128, channels=6, seed=5, progress=False)
    with pytest.raises(UserInputError, match=r"the data differs from what .* was trained on: dataset.images: 16 -> 12; "
                                             r"dataset.table_sha256: '.*' -> '.*'; resume on the same data"):
        resume(run_dir, other, allow=True)
