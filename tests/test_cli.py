"""The `maefast` command's errors: one line and exit code 2 for what the user can fix, the traceback only
under --debug, and bugs never turned into one-line errors."""
import argparse
import re

import pytest

import maefast
import maefast.cli.models
from maefast.cli import DESCRIPTION, EPILOG, build_parser, main

TRAIN = ["train", "--recipe", "debug", "--no-progress", "--max-steps", "2", "--set", "data.batch_size=4",
         "--set", "model.overrides.decoder_depth=1"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("setting,message", [
    ("optim.lr=inf", "optim.lr=inf must be a finite number"),
    ("data.batch_size=true", "data.batch_size=True must be an integer"),
    ("run.seed=1.5", "run.seed=1.5 must be an integer"),
])
def test_values_that_are_not_numbers_are_one_line_errors(tmp_path, capsys, setting, message):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", setting]) == 2
    assert error_line(capsys) == f"maefast train: error: {message}\n"


def test_out_naming_a_file_and_resume_without_a_checkpoint(screen, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert main([*TRAIN, "--data", str(screen), "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file; maefast train writes a directory there" in error_line(capsys)
    assert main([*TRAIN, "--data", str(screen), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no checkpoint to resume from" in error_line(capsys)


def test_debug_prints_the_traceback_as_well(tmp_path, capsys):
    assert main(["--debug", *TRAIN, "--out", str(tmp_path / "run"), "--set", "optim.lr=inf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in check_field_types" in err
    assert err.endswith("maefast train: error: optim.lr=inf must be a finite number\n")


@pytest.mark.parametrize("bug", [AttributeError("'NoneType' object has no attribute 'shape'"), KeyError("step"),
                                 TypeError("unsupported operand"), ValueError("too many values to unpack")])
def test_bugs_keep_their_traceback(monkeypatch, bug):
    def broken(args):
        raise bug
    monkeypatch.setattr(maefast.cli.models, "list_models_command", broken)
    with pytest.raises(type(bug)):
        main(["models"])


def test_embed_names_a_missing_or_damaged_checkpoint(screen, screen_encoder, tmp_path, capsys):
    out = ["--data", str(screen), "--out", str(tmp_path / "emb"), "--no-progress"]
    assert main(["embed", "--checkpoint", str(tmp_path / "nonexistent"), *out]) == 2
    assert "checkpoint not found: " + str(tmp_path / "nonexistent") in error_line(capsys)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "model.safetensors"):
        (damaged / name).write_bytes((screen_encoder / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((screen_encoder / "model.safetensors").read_bytes()[:-64])
    assert main(["embed", "--checkpoint", str(damaged), *out]) == 2
    assert f"{damaged / 'model.safetensors'}: damaged or truncated safetensors file" in error_line(capsys)


def test_embed_without_a_progress_bar_still_measures_its_speed(screen, screen_encoder, tmp_path, capsys):
    assert main(["embed", "--checkpoint", str(screen_encoder), "--data", str(screen), "--out", str(tmp_path / "emb"),
                 "--no-progress", "--shard-size", "8"]) == 0
    rate = float(re.search(r"complete, ([0-9.]+) crops/s", capsys.readouterr().out).group(1))
    assert rate > 0


def test_help_describes_the_tool_and_version_prints(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"maefast {maefast.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert " ".join(DESCRIPTION.split()) in text and " ".join(EPILOG.split()) in text
    commands = {action.dest: action.help for parser_action in build_parser()._actions
                if isinstance(parser_action, argparse._SubParsersAction) for action in parser_action._choices_actions}
    assert set(commands) >= {"models", "data", "train", "embed", "export", "map", "benchmark", "demo"}
    for command, summary in commands.items():  # each command with its one-line summary
        assert f"{command} {' '.join(summary.split())}" in text, command
