"""--resume: never unpickles, skips damaged checkpoints, refuses other configs and data unless allowed."""
import json
import shutil
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file

from maefast.cli import main
from maefast.data.synthetic import synth_screen
from maefast.errors import UserInputError
from maefast.io import read_safetensors, write_safetensors
from maefast.models.registry import create_model
from maefast.train.config import load_config
from maefast.train.integrity import write_digests
from maefast.train.loop import Trainer, train
from maefast.train.optim import one_cycle_factor
from tests.data.test_identity import reimaged
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
    with pytest.raises(UserInputError, match=r"the data differs from what .* was trained on: dataset.content.bytes: "
                                             r"\d+ -> \d+; .*; dataset.images: 16 -> 12; "
                                             r"dataset.table_sha256: '.*' -> '.*'; resume on the same data"):
        resume(run_dir, other, allow=True)


# -- checkpoints checked whole: what used to resume silently, or fail with a raw TypeError, falls back -------------
def falls_back(run_dir, screen, reason: str) -> None:
    """The newest checkpoint (step 4) is skipped with a warning naming what was wrong; the run resumes at 2."""
    with pytest.warns(UserWarning, match=rf"skipped the damaged checkpoint step-00000004: .*{reason}"):
        trainer = resume(run_dir, screen)
    assert trainer.step == 2
    trainer.close()


def edit_weights(run_dir, change) -> None:
    """Rewrites step 4's weights with `change(tensors)` applied, then its digests (as a tool that keeps them
    consistent would), so that the check that follows the digests is what refuses it."""
    path = checkpoint(run_dir, 4) / "model.safetensors"
    tensors = read_safetensors(path)
    change(tensors)
    write_safetensors(tensors, path)
    write_digests(checkpoint(run_dir, 4))


def test_a_changed_file_fails_its_digest(run_dir, screen):
    path = checkpoint(run_dir, 4) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # one bit of the last weight: still a readable safetensors file
    path.write_bytes(bytes(data))
    falls_back(run_dir, screen, r"model.safetensors: its SHA-256 differs from the one written at save \(digests.json\)")


def test_a_missing_tensor(run_dir, screen):
    edit_weights(run_dir, lambda tensors: tensors.pop("encoder.cls_token"))
    falls_back(run_dir, screen, r"not the weights of mae_vit_debug_patch8_64 \(config.json\): missing "
                                r"\['encoder.cls_token'\]")


def test_nan_weights(run_dir, screen, tmp_path, capsys):
    def poison(tensors):
        tensors["encoder.blocks.0.in_proj.weight"][0, 0] = float("nan")
    edit_weights(run_dir, poison)
    falls_back(run_dir, screen, r"non-finite values \(NaN or infinity\) in 1 tensor\(s\): "
                                r"encoder.blocks.0.in_proj.weight")
    # embedding from it used to write NaN features, blaming nothing
    code = main(["embed", "--checkpoint", str(checkpoint(run_dir, 4)), "--data", str(screen), "--out",
                 str(tmp_path / "emb"), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "non-finite values (NaN or infinity) in 1 tensor(s)" in error


def test_another_architectures_weights(run_dir, screen):
    other = create_model("camae_vit_debug_patch8_64", max_in_chans=6, decoder_depth=1).state_dict()
    edit_weights(run_dir, lambda tensors: (tensors.clear(), tensors.update(other)))
    falls_back(run_dir, screen, r"not the weights of mae_vit_debug_patch8_64 \(config.json\): missing \['decoder.*; "
                                r"unexpected \['decoder.context_norm.bias'.*")


@pytest.mark.parametrize("edit, reason", [
    (lambda state: state.update(step="four"), r"step is 'four', expected a whole number >= 0"),
    (lambda state: state.update(step=3), r"step 3 differs from meta.json's step 4"),
    (lambda state: state["loader"].pop("epoch"), r"loader.epoch is None"),
    (lambda state: state.update(rng=[{"torch": {"__tensor__": "0"}}]), r"rng\[0\]: .*"),
    (lambda state: state.update(optimizer=[]), r"optimizer is not an optimizer state"),
    (lambda state: state.update(rng={"__tensor__": "999"}), r"names tensor 999, which .* lacks"),
])
def test_a_hand_edited_training_state(run_dir, screen, edit, reason):
    path = checkpoint(run_dir, 4) / "train_state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    write_digests(checkpoint(run_dir, 4))
    falls_back(run_dir, screen, reason)


def test_a_checkpoint_without_digests_resumes_with_a_note(run_dir, screen):
    (checkpoint(run_dir, 4) / "digests.json").unlink()  # as an older maefast wrote it
    with pytest.warns(UserWarning, match=r"step-00000004 has no digests.json \(written by an older maefast\)"):
        trainer = resume(run_dir, screen)
    assert trainer.step == 4
    trainer.close()


class StopAfter:
    """The run's loader, sending this process SIGTERM as it hands over batch `count`: a preemption at a step."""

    def __init__(self, loader, count):
        self.loader, self.count, self.dataset, self.handed = loader, count, loader.dataset, 0

    def __iter__(self):
        for batch in self.loader:
            self.handed += 1
            if self.handed == self.count:
                signal.raise_signal(signal.SIGTERM)
            yield batch

    def state_dict(self):
        return self.loader.state_dict()


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_resume_is_bitwise_identical_with_either_loader(screen, tmp_path, backend):
    """With the PyTorch loader a resumed run used to differ (1.3e-3 after 12 steps): creating its DataLoader
    drew from the global RNG, the masks' stream, at another point than in an uninterrupted run."""
    settings = [f"data.backend={backend}", "data.num_workers=1", "run.checkpoint_every=100"]
    train(config(screen, *settings), tmp_path / "straight", show_progress=False, recipe="debug")
    trainer = Trainer(config(screen, *settings), tmp_path / "stopped", show_progress=False, recipe="debug")
    trainer.loader = StopAfter(trainer.loader, 2)
    assert trainer.train()["interrupted"] == "SIGTERM" and trainer.step == 2
    trainer.close()
    trainer = resume(tmp_path / "stopped", screen, *settings)
    assert trainer.step == 2
    trainer.train()
    trainer.close()
    expected = load_file(str(checkpoint(tmp_path / "straight", 4) / "model.safetensors"))
    got = load_file(str(checkpoint(tmp_path / "stopped", 4) / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_reimaged_screen_with_the_same_table_is_refused_even_when_changes_are_allowed(run_dir, screen, tmp_path):
    with pytest.raises(UserInputError, match=r"the data differs from what .* was trained on: (dataset.content.bytes: "
                                             r"\d+ -> \d+; )?dataset.content.sha256: '\w+' -> '\w+'; resume on the "
                                             r"same data"):
        resume(run_dir, reimaged(screen, tmp_path / "other"), allow=True)


def test_a_checkpoint_whose_fingerprint_lacks_the_content_resumes_with_a_note(run_dir, screen):
    for step in (2, 4):  # as an older maefast recorded them
        path = checkpoint(run_dir, step) / "meta.json"
        meta = json.loads(path.read_text())
        del meta["data"]["content"]
        path.write_text(json.dumps(meta))
        write_digests(checkpoint(run_dir, step))
    with pytest.warns(UserWarning, match=r"--resume: the data's fingerprint was recorded without content \(by an "
                                         r"older maefast\)"):
        trainer = resume(run_dir, screen, "run.max_steps=6", allow=True)
    trainer.train()
    trainer.close()
    assert "content" in json.loads((checkpoint(run_dir, 6) / "meta.json").read_text())["data"]
