"""Data identity from content: another screen with an identical metadata table (the same plates re-imaged) is
told apart by the fingerprint of its files' bytes, recorded with every embedding output and training run and
compared when a job continues; a record of an older maefast, without that part, still continues, with a note."""
import json
import re
import shutil
import warnings

import numpy as np
from PIL import Image

from maefast.cli import main
from maefast.data import open_dataset
from maefast.data.identity import compare_fingerprints, content_fingerprint, sampled_bytes


def reimaged(screen, folder):
    """The same screen (metadata table, file names, sizes) with other pixels."""
    shutil.copytree(screen, folder)
    for path in sorted(folder.rglob("*.png"))[::3]:
        pixels = np.asarray(Image.open(path))
        Image.fromarray((255 - pixels).astype(pixels.dtype)).save(path)
    return folder


def test_the_fingerprint_sees_the_pixels(screen, tmp_path):
    other = reimaged(screen, tmp_path / "other")
    same, changed = open_dataset(screen).fingerprint(), open_dataset(other).fingerprint()
    assert same["table_sha256"] == changed["table_sha256"]
    assert same["content"]["sha256"] != changed["content"]["sha256"]
    assert same["content"]["files"] == changed["content"]["files"] == 16 * 6
    moved = shutil.copytree(screen, tmp_path / "moved")  # a moved data set keeps its fingerprint
    assert open_dataset(moved).fingerprint() == same


def test_sampled_bytes_cover_large_files(tmp_path):
    path = tmp_path / "big"
    data = np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    size, sample = sampled_bytes(str(path))
    assert size == 5 << 20 and len(sample) == 7 * 4096  # first, last and one block per MiB between
    data[(5 << 20) - 1] ^= 1  # the last byte
    path.write_bytes(data.tobytes())
    assert sampled_bytes(str(path))[1] != sample
    assert sampled_bytes(str(tmp_path / "missing")) == (-1, b"")
    assert content_fingerprint([str(path), str(path)])["files"] == 1


def test_an_older_record_is_compared_without_the_content(screen):
    current = open_dataset(screen).fingerprint()
    older = {k: v for k, v in current.items() if k != "content"}
    differences, note = compare_fingerprints(older, current)
    assert differences == {} and "recorded without content (by an older maefast)" in note
    differences, note = compare_fingerprints({**older, "images": 3}, current)
    assert differences == {"images": (3, 16)}


def test_an_embedding_rerun_on_a_reimaged_screen_is_refused(screen, screen_encoder, tmp_path, capsys):
    """It used to continue the job, mixing the two screens' rows (features off by 0.33)."""
    def embed(data):
        return main(["embed", "--checkpoint", str(screen_encoder), "--data", str(data), "--out", str(tmp_path / "emb"),
                     "--no-progress", "--shard-size", "8"])

    assert embed(screen) == 0
    capsys.readouterr()
    assert embed(reimaged(screen, tmp_path / "other")) == 2
    error = capsys.readouterr().err
    assert re.search(r"holds an embedding job with other settings, weights or data: (data.content.bytes: \d+ -> "
                     r"\d+; )?data.content.sha256: '\w+' -> '\w+'; use another --out", error)
    assert "table_sha256" not in error and error.count("\n") == 1
    job = json.loads((tmp_path / "emb" / "job.json").read_text())
    del job["data"]["content"]  # as an older maefast recorded it
    (tmp_path / "emb" / "job.json").write_text(json.dumps(job))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert embed(screen) == 0
    assert any("recorded without content (by an older maefast)" in str(w.message) for w in caught)
    assert "content" in json.loads((tmp_path / "emb" / "job.json").read_text())["data"]  # recorded from now on
