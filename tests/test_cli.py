"""The `maefast` command's errors: one line and exit code 2 for what the user can fix, the traceback only
under --debug, and bugs never turned into one-line errors."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import maefast
import maefast.cli.models
from maefast.cli import DESCRIPTION, EPILOG, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
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


def command_lines() -> list[list[str]]:
    """Every command line that runs something: ["models"], ["data", "synth"], ..."""
    lines = []

    def walk(parser, prefix):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            lines.append(prefix)
        for action in subparsers:
            for name, child in action.choices.items():
                walk(child, [*prefix, name])
    walk(build_parser(), [])
    return lines


def test_help_of_every_command_answers_without_importing_torch():
    """`maefast --help` and `maefast <command> --help` import no torch (it costs seconds before any output)."""
    script = ("import sys\nfrom maefast.cli import main\nfor argv in {argvs!r}:\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
    argvs = [["--help"]] + [[*line, "--help"] for line in command_lines()]
    result = subprocess.run([sys.executable, "-c", script.format(argvs=argvs)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no torch"
    assert result.stdout.count("usage: maefast") == len(argvs)


def test_every_option_has_help_and_shows_its_default():
    """Walks every command's parser: each option says what it does, and an option with a default (other than
    off, none or empty) shows it in --help."""
    parsers = [build_parser()]
    for line in command_lines():
        parser = parsers[0]
        for name in line:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        parsers.append(parser)
    for parser in parsers:
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{parser.prog} {name}: no help text"
            if action.default in (None, False, [], "", argparse.SUPPRESS) or action.required:
                continue
            shown = str(action.default)
            assert f"default: {shown}" in text or f"default {shown}" in text, f"{parser.prog} {name}: default {shown}"
    embed = " ".join(parsers[[p.prog for p in parsers].index("maefast embed")].format_help().split())
    assert "--batch-size BATCH_SIZE images per loader batch (each gives several tiles) (default: 16)" in embed


def test_debug_works_after_the_command_too(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", "optim.lr=inf", "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)")
    assert err.endswith("maefast train: error: optim.lr=inf must be a finite number\n")
    assert main(["data", "info", str(tmp_path / "nowhere"), "--debug"]) == 2
    assert capsys.readouterr().err.startswith("Traceback (most recent call last)")


def test_training_needs_data_or_says_synthetic(screen, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    assert error_line(capsys) == ("maefast train: error: no training data: name the data set with --data PATH "
                                  "(--set data.path=PATH), or train on a synthetic screen rendered into the run "
                                  "directory with --synthetic-data (--set data.synthetic=true)\n")
    assert main([*TRAIN, "--out", str(tmp_path / "both"), "--data", str(screen), "--synthetic-data"]) == 2
    assert "data.synthetic=true renders a synthetic screen to train on, and data.path names a data set" in \
        error_line(capsys)
    assert not (tmp_path / "both" / "data").exists() and not (tmp_path / "run" / "data").exists()


def test_a_warning_is_one_line_naming_the_command(tmp_path):
    table = pd.DataFrame({"perturbation": ["EMPTY"] * 6 + ["A", "A", "B", "B"], "batch": ["e1", "e2"] * 5,
                          "plate": [1] * 10, **{f"feature_{i}": np.random.default_rng(i).normal(size=10)
                                                 for i in range(3)}})
    table.to_parquet(tmp_path / "emb.parquet")
    command = ["map", "--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "map.parquet"),
               "--perturbation-col", "perturbation", "--control", "EMPTY", "--batch-col", "plate", "--no-tvn"]
    result = subprocess.run([sys.executable, "-m", "maefast.cli", *command], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # pytest would record them
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "maefast map: warning: batch column 'plate': plate 1 occurs in 2 values of 'batch', and batches by 'plate' "
        "alone merge them; to make each (batch, plate) its own batch, pass both (maefast map --batch-col batch "
        "--batch-col plate; batch_col=['batch', 'plate'])",
        "maefast map: warning: pca_components=128 is more than this data allows (10 rows, 3 features); using 3"]
