"""Every failure a probe of the command line found gives one line and an exit code other than 0 (issue 22, point
9): nonsense settings, YAML that would build Python objects, recipes that are not mappings, metadata without
rows or with sites that are not whole numbers, packed manifests without their channels, a full disk while a
checkpoint is written, SIGINT; and settings that would need more memory than the machine has (point 7) are
refused before anything is allocated."""
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import maefast
from maefast.cli import main
from maefast.data import make_tile_loader, open_dataset
from maefast.data.packed import pack_dataset
from maefast.embedding.outputs import read_embeddings
from maefast.errors import UserInputError
from tests.data.crafted import jump_screen, tifffile_bytes
from tests.train.test_training import FAST

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--recipe", "debug", "--no-progress", "--max-steps", "2", "--set", "data.batch_size=4",
         "--set", "model.overrides.decoder_depth=1"]


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"maefast {command}: error: ") and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("setting, message", [
    ("run.seed=-1", "run.seed=-1 must be an integer from 0 to 4294967295"),
    ("run.seed=4294967296", "run.seed=4294967296 must be an integer from 0 to 4294967295"),
    ("data.num_workers=-1", "data.num_workers=-1 must be >= 0 (0: read in the training process)"),
    ("model.name.size=3", "model.name holds a value, not keys: cannot set model.name.size"),
])
def test_settings(tmp_path, capsys, setting, message):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", setting]) == 2
    assert error_line(capsys, "train") == f"maefast train: error: {message}"


def test_yaml_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", f"model.name={tag}"]) == 2
    line = error_line(capsys, "train")
    assert "--set value" in line and "not plain YAML (could not determine a constructor for the tag" in line
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model:\n  name: {tag}\n")
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--recipe", str(recipe)]) == 2
    assert f"recipe {recipe}: not plain YAML" in error_line(capsys, "train")
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("- model\n- data\n", "expected a mapping of sections (model, data, optim, run), got a list"),
    ("model: mae\n", "section 'model' must be a mapping of keys to values, got a str"),
    ("model: [\n", "not plain YAML"),
])
def test_recipes_that_are_not_mappings(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--recipe", str(recipe)]) == 2
    assert message in error_line(capsys, "train")


def test_negative_loader_workers_for_embed(screen, screen_encoder, tmp_path, capsys):
    assert main(["embed", "--checkpoint", str(screen_encoder), "--data", str(screen), "--out", str(tmp_path / "emb"),
                 "--workers", "-1", "--no-progress"]) == 2
    assert "workers=-1 must be >= 0 (0: read in this process)" in error_line(capsys, "embed")
    with pytest.raises(UserInputError, match=r"num_workers must be an integer >= 0 \(0: read in this "
                                             r"process\), got -1"):  # the loader of a library caller
        make_tile_loader(open_dataset(screen), batch_size=2, crop_size=64, num_workers=-1)


def copy_metadata(screen, tmp_path, edit) -> Path:
    """A copy of the screen's folder whose metadata.csv `edit(table)` changed in place or returned changed (the
    images are links)."""
    root = tmp_path / "copy"
    root.mkdir(parents=True)
    for entry in screen.iterdir():
        if entry.name != "metadata.csv":
            (root / entry.name).symlink_to(entry)
    table = pd.read_csv(screen / "metadata.csv")
    changed = edit(table)
    (table if changed is None else changed).to_csv(root / "metadata.csv", index=False)
    return root


def set_value(column, row, value):
    def edit(table):
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda table: table.iloc[:0], "the metadata lists no images (a header without rows)"),
    (set_value("site", 3, float("nan")), "column site must hold whole numbers; row 3 has nan"),
    (set_value("site", 5, "two"), "column site must hold whole numbers; row 5 has 'two'"),
    (set_value("site", 2, 1.7), "column site must hold whole numbers; row 2 has 1.7"),
    (set_value("plate", 4, float("nan")), "column plate has no value in row 4"),
])
def test_rxrx_metadata(screen, tmp_path, capsys, edit, message):
    root = copy_metadata(screen, tmp_path, edit)
    assert main(["data", "info", str(root)]) == 2
    assert message in error_line(capsys, "data")
    assert main(["data", "check", str(root)]) == 1
    assert message in capsys.readouterr().out
    assert main([*TRAIN, "--data", str(root), "--out", str(tmp_path / "run")]) == 2
    assert message in error_line(capsys, "train")


def test_jump_metadata_and_site_ids(screen, tmp_path, capsys):

    root = jump_screen(tmp_path / "jump", [tifffile_bytes(np.full((32, 32), 7, np.uint16))] * 4)
    table = pd.read_csv(root / "load_data.csv")
    table["Metadata_Site"] = table["Metadata_Site"].astype(object)
    table.loc[2, "Metadata_Site"] = "s2"
    table.to_csv(root / "load_data.csv", index=False)
    assert main(["data", "info", str(root)]) == 2
    assert "column Metadata_Site must hold whole numbers; row 2 has 's2'" in error_line(capsys, "data")
    with_ids = copy_metadata(screen, tmp_path / "ids", lambda table: table.insert(0, "site_id", ["x"] * len(table)))
    table = pd.read_csv(with_ids / "metadata.csv")
    table.loc[1, "site_id"] = None
    table.to_csv(with_ids / "metadata.csv", index=False)
    assert main(["data", "info", str(with_ids)]) == 2
    assert "column site_id has no value in row 1" in error_line(capsys, "data")


@pytest.mark.parametrize("edit, message", [
    (lambda manifest: manifest.pop("channels"), "\"channels\" must list the stored channels' names, each once; "
                                                "found None"),
    (lambda manifest: manifest.update(dtype="float64"), "\"dtype\" must be uint8 or uint16, found 'float64'"),
    (lambda manifest: manifest.update(image_shape=[96]), "\"image_shape\" must be [height, width], found [96]"),
])
def test_packed_manifests(screen, tmp_path, capsys, edit, message):
    out = pack_dataset(open_dataset(screen), tmp_path / "packed", shard_images=8, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "info", str(out)]) == 2
    assert message in error_line(capsys, "data")


def test_a_float_index_row(screen, tmp_path, capsys):
    out = pack_dataset(open_dataset(screen), tmp_path / "packed", shard_images=8, progress=False)
    index = pd.read_parquet(out / "index.parquet")
    index["row"] = index["row"].astype(float)
    index.to_parquet(out / "index.parquet")
    assert main(["data", "info", str(out)]) == 2
    assert "column row must hold integers (positions in the shards), found float64" in error_line(capsys, "data")


def run_cli(*arguments, preexec=None, timeout=300) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maefast.cli", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_full_disk_while_a_checkpoint_is_written(screen, tmp_path):
    """Writing the checkpoint's weights fails (here: a file size limit, EFBIG, as ENOSPC would): one line,
    exit code 2, and no checkpoint directory that looks complete."""
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    run = run_cli(*TRAIN, "--data", str(screen), "--out", str(tmp_path / "run"), preexec=small_files)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 2, out + err
    assert err.count("\n") == 1 and err.startswith("maefast train: error: [Errno 27] ") and "could not write" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_sigint_writes_a_checkpoint_and_exits_130_with_the_usual_file_modes(screen, tmp_path):
    """Ctrl-C used to end a run with a traceback and no checkpoint; every output was also mode 0600
    (safetensors) whatever the umask."""
    run = run_cli("train", "--recipe", "debug", "--no-progress", "--max-steps", "10000", "--data", str(screen),
                  "--out", str(tmp_path / "run"), *[f"--set={s}" for s in FAST],
                  "--set=run.checkpoint_every=5000", "--set=run.log_every=1", preexec=lambda: os.umask(0o027))
    deadline = time.time() + 240
    while not (tmp_path / "run" / "metrics.csv").exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, out + err
    step = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"]
    assert f"maefast train: SIGINT: checkpoint at step {step} written, stopping (continue with --resume)" in out
    assert "Traceback" not in err
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run").rglob("*")
             if p.is_file()}
    assert set(modes.values()) == {"0o640"}, modes
    assert any(name.endswith("model.safetensors") for name in modes)


# `python -m maefast.cli` with each embedding shard taking 0.3 s longer, so that a signal sent once the first shard
# is written finds shards still to do however fast the machine (an idle CI machine finished all 16 first)
SLOW_SHARDS_CLI = """
import sys, time
import maefast.embedding.job as job
from maefast.cli import main
embed_shard = job.embed_shard
def slow_embed_shard(*args, **kwargs):
    time.sleep(0.3)
    return embed_shard(*args, **kwargs)
job.embed_shard = slow_embed_shard
sys.exit(main())
"""


def test_sigint_during_an_embedding_is_one_line(screen, screen_encoder, tmp_path):
    run = subprocess.Popen([sys.executable, "-c", SLOW_SHARDS_CLI, "embed", "--checkpoint", str(screen_encoder),
                            "--data", str(screen), "--out", str(tmp_path / "emb"), "--shard-size", "1",
                            "--batch-size", "1", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 240
    while not list((tmp_path / "emb").glob("shards/shard-*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, out + err
    assert err.strip().splitlines()[-1] == ("maefast embed: interrupted (SIGINT); what was written completely is "
                                            "kept: run the same command again to continue")
    assert "Traceback" not in err


# -- sizes derived from the machine ------------------------------------------------------------------------------
def test_crops_per_image_beyond_the_memory(screen, tmp_path, capsys):
    """crops_per_image=100000 grew one process to 22 GB until the kernel killed it, printing nothing."""
    assert main([*TRAIN, "--data", str(screen), "--out", str(tmp_path / "run"), "--set",
                 "data.crops_per_image=100000"]) == 2
    line = error_line(capsys, "train")
    assert ("crops_per_image=100000, batch_size=4: 4 batches in flight of 4 images x 100000 crops of 6x64x64 uint8 "
            "and 192.0 KiB to decode 128x128 images needs 36.6 GiB, more than 80% of the ") in line
    assert "of memory available" in line


def test_a_checkpoint_config_too_deep_for_the_machine(screen, tmp_path, capsys):
    """A config.json with depth 100000 built blocks until memory ran out; it is refused after a few."""
    checkpoint = tmp_path / "ckpt"
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=6), checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["config"]["depth"], config["config"]["embed_dim"] = 100_000, 2048
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(screen), "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 2
    line = error_line(capsys, "embed")
    assert "model vit_debug_patch8_64 (" in line and "depth=100000" in line
    assert "its weights need more than" in line and "of memory available; choose a smaller model" in line


def test_a_huge_batch_size_reads_the_batches_there_are(screen, screen_encoder, tmp_path, capsys):
    """--batch-size 1e9 made the DALI path pad every batch to a billion samples (a 7.45 GiB allocation); the
    batches are the data set's, and the embedding is the same as with a small batch size."""
    for out, size in (("small", "4"), ("huge", "1000000000")):
        assert main(["embed", "--checkpoint", str(screen_encoder), "--data", str(screen), "--out", str(tmp_path / out),
                     "--batch-size", size, "--backend", "dali", "--no-progress"]) == 0
    pd.testing.assert_frame_equal(read_embeddings(tmp_path / "huge"), read_embeddings(tmp_path / "small"),
                                  check_exact=False, rtol=1e-5)
