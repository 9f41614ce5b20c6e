"""The embedding job's configuration: one table of defaults (EmbedConfig), the same config from the command line
and from Python, typed flags that never pass through text, `--set` overrides, the saved effective config, and a
checkpoint resolved once per job."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import maefast
import maefast.embedding.api
from maefast.cli import build_parser, main
from maefast.embedding.config import EmbedConfig, embed_config
from maefast.errors import UserInputError
from maefast.io import file_sha256
from maefast.models import checkpoint as checkpoints
from maefast.models import hub


@pytest.fixture
def captured(monkeypatch):
    """The EmbedConfig each `maefast embed` / maefast.embed(...) would run, instead of running it."""
    configs = []

    def run_embed(config, out, show_progress=True):
        configs.append(config)
        return {}
    monkeypatch.setattr(maefast.embedding.api, "run_embed", run_embed)
    return configs


def test_the_command_line_and_the_api_build_the_same_config(captured):
    assert main(["embed", "--checkpoint", "runs/x", "--data", "screen", "--out", "emb", "--batch-size", "3",
                 "--channels", "DNA, RNA", "--compile", "off", "--tile-batch", "96", "--per-channel",
                 "--set", "pool=cls", "--set", "workers=2"]) == 0
    maefast.embed("runs/x", "screen", "emb", batch_size=3, channels=["DNA", "RNA"], compile=False, tile_batch=96,
                  per_channel=True, overrides=["pool=cls", "workers=2"])
    command_line, api = captured
    assert command_line == api
    assert (api.batch_size, api.channels, api.compile, api.tile_batch, api.pool, api.workers) == (
        3, ["DNA", "RNA"], False, 96, "cls", 2)


def test_defaults_come_from_the_config_alone(captured):
    assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o"]) == 0
    maefast.embed("c", "d", "o", channels=None, workers=None)  # None leaves the default, as it always did
    expected = EmbedConfig(checkpoint="c", data="d")
    assert captured == [expected, expected] and expected.batch_size == 16
    flags = {action.dest: action for action in build_parser()._subparsers._group_actions[0].choices["embed"]._actions}
    for setting in dataclasses.fields(EmbedConfig):  # every key is a flag, and the help shows the config's default
        if not setting.metadata.get("flag", True):  # model_options: --set model.KEY=VALUE
            assert setting.name not in flags and "--set model.KEY=VALUE" in setting.metadata["help"]
            continue
        assert setting.name in flags, setting.name
        if setting.default not in (None, "", False, dataclasses.MISSING):
            assert f"(default: {str(setting.default).lower()})" in flags[setting.name].help.lower(), setting.name


@pytest.mark.parametrize("name", ["on", "2024", "null", "a: b"])
def test_flag_values_stay_what_they_were_typed(captured, monkeypatch, tmp_path, name):
    """A path is a path: the embed flags and train's --data / --max-steps reach the config as typed values, never
    as key=value text read back as YAML (a folder named "on" was read as true, "2024" as a number)."""
    assert main(["embed", "--checkpoint", name, "--data", name, "--out", "o"]) == 0
    assert (captured[0].checkpoint, captured[0].data) == (name, name)
    trained = []
    monkeypatch.setattr("maefast.train.loop.train", lambda config, *args, **kwargs: trained.append(config) or {})
    assert main(["train", "--recipe", "debug", "--out", str(tmp_path), "--data", name, "--max-steps", "7"]) == 0
    assert (trained[0].data.path, trained[0].run.max_steps) == (str(Path.cwd() / name), 7)  # stored absolute


def test_flags_win_over_set_and_bad_values_are_named(captured, capsys):
    assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--set", "batch_size=4",
                 "--batch-size", "8", "--set", "compile=true"]) == 0
    assert (captured[0].batch_size, captured[0].compile) == (8, True)
    for setting, message in [("speed=9", r"unknown key(s) ['speed']"), ("batch_size=0", "batch_size=0 must be a "
                             "positive integer"), ("compile=sometimes", "compile='sometimes' is not allowed"),
                             ("pool=max", "pool='max' is not allowed"), ("batch_size=2.5", "must be an integer"),
                             ("workers=-1", "workers=-1 must be >= 0 (0: read in this process)")]:
        assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--set", setting]) == 2
        assert message in capsys.readouterr().err, setting
    with pytest.raises(SystemExit):
        main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--compile", "sometimes"])
    assert "expected one of auto, true, false" in capsys.readouterr().err
    with pytest.raises(UserInputError, match=r"unknown key\(s\) \['batch'\]"):
        maefast.embed("c", "d", "o", batch=3)
    with pytest.raises(UserInputError, match="checkpoint is required"):
        embed_config({"data": "d"})
    assert embed_config({"checkpoint": "c", "data": "d", "workers": 0}).workers == 0  # 0: read in this process


def test_blocks_is_a_config_value_set_the_same_way_everywhere(captured, capsys):
    """--blocks, maefast.embed(blocks=...) and --set blocks=... give the same typed EmbedConfig.blocks."""
    for written, expected in [("all", "all"), ("last", "last"), ("8,12,-1", [8, 12, -1]), ("5", [5])]:
        captured.clear()
        assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--blocks", written]) == 0
        assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--set", f"blocks={written}"]) == 0
        maefast.embed("c", "d", "o", blocks=written)
        maefast.embed("c", "d", "o", blocks=expected)
        assert [config.blocks for config in captured] == [expected] * 4, written
    captured.clear()
    assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--set", "blocks=[2, 3]"]) == 0
    maefast.embed("c", "d", "o", blocks=None)
    assert [config.blocks for config in captured] == [[2, 3], None]
    for setting, message in [("blocks=first", "blocks must be all or last or block indices"),
                             ("blocks=[]", "blocks must be all or last or block indices"),
                             ("blocks=[1.5]", "blocks=[1.5] must be")]:
        assert main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--set", setting]) == 2
        assert message in capsys.readouterr().err, setting
    with pytest.raises(SystemExit):
        main(["embed", "--checkpoint", "c", "--data", "d", "--out", "o", "--blocks", "8,twelve"])
    assert "expected all or last or block indices such as 8,12,16, got '8,twelve'" in capsys.readouterr().err


def test_a_job_saves_its_config_and_resolves_its_checkpoint_once(screen, tmp_path, monkeypatch):
    torch.manual_seed(0)
    run = tmp_path / "run"  # a training run's folder: its encoder/ embeds
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=3), run / "encoder",
                            channel_names=["Mito", "DNA", "RNA"])
    calls = {"resolve": 0, "read_config": 0, "sha256": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call
    monkeypatch.setattr(hub, "resolve", counted("resolve", hub.resolve))
    monkeypatch.setattr(checkpoints, "read_config", counted("read_config", checkpoints.read_config))
    monkeypatch.setattr(checkpoints, "file_sha256", counted("sha256", checkpoints.file_sha256))
    out = tmp_path / "emb"
    summary = maefast.embed(run, screen, out, shard_size=8, show_progress=False, overrides=["batch_size=4"])
    assert summary["complete"] and calls == {"resolve": 1, "read_config": 1, "sha256": 1}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == {**EmbedConfig(checkpoint=str(run), data=str(screen)).to_dict(), "shard_size": 8, "batch_size": 4}
    record = json.loads((out / "job.json").read_text())
    assert record["weights_sha256"] == file_sha256(run / "encoder" / "model.safetensors")
    assert record["checkpoint"] == str(run / "encoder") and record["channels"] == ["Mito", "DNA", "RNA"]
    # the job setup's records, written by the job: the CPU keeps "auto" and runs one loader batch per forward
    assert json.loads((out / "attention.json").read_text())["choice"] == {"encoder": "auto"}
    assert json.loads((out / "tile_batch.json").read_text()) == {"tiles": 4 * 4}


def test_a_job_folder_of_an_earlier_version_resumes(screen, tmp_path):
    """job.json from before compile took true / false ("on" / "off") continues, with the same settings."""
    torch.manual_seed(0)
    weights = tmp_path / "ckpt"
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=3), weights,
                            channel_names=["Mito", "DNA", "RNA"])
    out = tmp_path / "emb"
    options = dict(shard_size=8, compile=False, show_progress=False)
    first = maefast.embed(weights, screen, out, **options)
    record = json.loads((out / "job.json").read_text())
    assert record["compile"] is False and "blocks" not in record  # a job without blocks records as before
    (out / "job.json").write_text(json.dumps({**record, "compile": "off"}))  # as maefast wrote it before
    (out / "shards" / "shard-00001.parquet").unlink()
    (out / "manifest.json").unlink()
    resumed = maefast.embed(weights, screen, out, **options)
    assert resumed["complete"] and resumed["embedded_here"] == 1 and first["num_shards"] == resumed["num_shards"]
    with pytest.raises(UserInputError, match="compile: False -> True"):
        maefast.embed(weights, screen, out, **{**options, "compile": True})
