"""Checkpoints by Hugging Face Hub id: through huggingface_hub's cache (offline, no network in CI)."""
import sys

import pytest
import torch

import maefast
from maefast.models import hub
from maefast.ops.patches import random_pixels

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache, repo: str, model) -> None:
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/files}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    maefast.save_pretrained(model, root / "snapshots" / COMMIT)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_loads_from_the_cache_offline(offline_cache, tmp_path, monkeypatch):
    model = maefast.create_model("mae_vit_debug_patch8_64", in_chans=2).eval()
    cached_repo(offline_cache, "someone/tiny-mae", model)
    restored = maefast.from_pretrained("someone/tiny-mae").eval()
    pixels = random_pixels(1, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored.embed(pixels), model.embed(pixels))
    encoder = maefast.load_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=2), "someone/tiny-mae@main")
    torch.testing.assert_close(encoder.blocks[0].in_proj.weight, model.encoder.blocks[0].in_proj.weight)
    monkeypatch.chdir(tmp_path)  # a local folder of the same name wins over the Hub
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=3), tmp_path / "someone" / "tiny-mae")
    assert maefast.from_pretrained("someone/tiny-mae").config.in_chans == 3


def test_offline_without_a_cached_copy_says_what_to_do(offline_cache):
    with pytest.raises(OSError, match=r"could not get 'someone/absent' from the Hugging Face Hub "
                                      r"\(LocalEntryNotFoundError.*huggingface-cli download someone/absent"):
        maefast.from_pretrained("someone/absent")


def test_without_huggingface_hub_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"'someone/model' is not a local path.*pip install \"maefast\[hub\]\""):
        maefast.from_pretrained("someone/model")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        maefast.load_pretrained(maefast.create_model("vit_debug_patch8_64"), "no/such/file.safetensors")
    assert hub.is_hub_id("owner/name@v1.0") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("./x")


@pytest.mark.parametrize("source", ["a/b@../../../x", "a/b@main/../../x", "a/..", "a/.", "a/b@x//y", "a/b@/abs"])
def test_a_revision_or_name_that_leaves_the_cache_is_not_a_hub_id(source):
    """`a/b@../../../x` used to resolve to a folder outside huggingface_hub's cache."""
    assert not hub.is_hub_id(source)
    with pytest.raises(ValueError, match="is not a Hugging Face Hub id"):
        hub.download(source)
    with pytest.raises(FileNotFoundError):  # then it is a local path, which does not exist
        maefast.from_pretrained(source)
    assert hub.is_hub_id("owner/name@refs/pr/3") and hub.is_hub_id("owner/model.v2@v1.0")
