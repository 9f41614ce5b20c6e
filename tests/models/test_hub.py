"""Checkpoints by Hugging Face Hub id: through huggingface_hub's cache (offline, no network in CI)."""
import sys
from pathlib import Path

import pytest
import torch

import maefast
from maefast.models import hub
from maefast.ops.patches import random_pixels

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache, repo: str, model, ref: str = "main", commit: str = COMMIT) -> None:
    """huggingface_hub's cache layout: models--owner--name/{refs/<ref>, snapshots/<commit>/files}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    maefast.save_pretrained(model, root / "snapshots" / commit)


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
                                      r"\(LocalEntryNotFoundError.*\(hf download someone/absent --local-dir DIR\)"):
        maefast.from_pretrained("someone/absent")


def test_without_huggingface_hub_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"'someone/model' is not a local path.*pip install \"maefast\[hub\]\""):
        maefast.from_pretrained("someone/model")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        maefast.load_pretrained(maefast.create_model("vit_debug_patch8_64"), "no/such/file.safetensors")
    assert hub.is_hub_id("owner/name@v1.0") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("./x")


def test_from_pretrained_follows_hugging_face(tmp_path):
    """Eval mode, no autograd on load, torch_dtype and device, and the Hub options revision, cache_dir and
    local_files_only (a cache of our own, no network)."""
    pytest.importorskip("huggingface_hub")
    model = maefast.create_model("mae_vit_debug_patch8_64", in_chans=2, drop_path_rate=0.2)
    cache = tmp_path / "cache"
    cached_repo(cache, "someone/tiny-mae", model)
    other = maefast.create_model("mae_vit_debug_patch8_64", in_chans=2)
    cached_repo(cache, "someone/tiny-mae", other, ref="v2", commit="f" * 40)
    loaded = maefast.from_pretrained("someone/tiny-mae", cache_dir=cache, local_files_only=True)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert all(p.grad_fn is None for p in loaded.parameters())
    assert torch.equal(loaded.encoder.cls_token, model.encoder.cls_token)
    tagged = maefast.from_pretrained("someone/tiny-mae", revision="v2", cache_dir=cache, local_files_only=True)
    assert torch.equal(tagged.encoder.cls_token, other.encoder.cls_token)
    assert torch.equal(maefast.from_pretrained("someone/tiny-mae@v2", cache_dir=cache,
                                               local_files_only=True).encoder.cls_token, other.encoder.cls_token)
    with pytest.raises(ValueError, match=r"names revision 'v2', and revision='main' another"):
        maefast.from_pretrained("someone/tiny-mae@v2", revision="main", cache_dir=cache, local_files_only=True)
    half = maefast.from_pretrained("someone/tiny-mae", cache_dir=cache, local_files_only=True, torch_dtype="bfloat16",
                                   device="meta")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and {p.device.type for p in half.parameters()} \
        == {"meta"}
    folder = maefast.save_pretrained(model.to(torch.float64), tmp_path / "float64")
    assert {p.dtype for p in maefast.from_pretrained(folder, torch_dtype="auto").parameters()} == {torch.float64}
    assert {p.dtype for p in maefast.from_pretrained(folder).parameters()} == {torch.float32}
    with pytest.raises(ValueError, match=r"torch_dtype must be a floating torch.dtype"):
        maefast.from_pretrained(folder, torch_dtype="int8")


def test_save_pretrained_writes_a_model_card(tmp_path):
    model = maefast.create_model("vit_debug_patch8_64", in_chans=3)
    folder = maefast.save_pretrained(model, tmp_path / "enc", channel_names=["DNA", "ER", "RNA"], extra={"step": 7})
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: maefast\n") and "pipeline_tag: image-feature-extraction" in card
    assert "# vit_debug_patch8_64" in card and "channels DNA, ER, RNA" in card and '"step": 7' in card
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters" in card
    assert 'maefast.from_pretrained("<this folder or Hub id>")' in card


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    """push_to_hub saves the model and hands the folder to huggingface_hub's HfApi (here intercepted: no network)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def upload_folder(self, *, repo_id, folder_path, commit_message, revision):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        restored = maefast.from_pretrained(folder_path)
        calls.append(("upload", repo_id, files, commit_message, revision, type(restored).__name__))
        return "https://huggingface.co/someone/tiny/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, private, exist_ok: calls.append(("create", repo_id, private, exist_ok)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = maefast.push_to_hub(maefast.create_model("vit_debug_patch8_64", in_chans=3), "someone/tiny", private=True)
    assert url == "https://huggingface.co/someone/tiny/commit/abc"
    assert calls == [("create", "someone/tiny", True, True),
                     ("upload", "someone/tiny", ["README.md", "config.json", "model.safetensors"], "maefast model",
                      None, "VisionTransformer")]


def test_an_unfinished_training_run_loads_from_its_newest_checkpoint(tmp_path):
    """A run folder loads like a checkpoint folder: its encoder once finished, before that its newest checkpoint."""
    run = tmp_path / "run"
    models = {step: maefast.create_model("mae_vit_debug_patch8_64", in_chans=2) for step in (2, 4)}
    for step, model in models.items():
        maefast.save_pretrained(model, run / "checkpoints" / f"step-{step:08d}")
    (run / "checkpoints" / "latest.json").write_text('{"step": 4, "path": "step-00000004"}')
    loaded = maefast.from_pretrained(run)
    assert type(loaded).__name__ == "MaskedAutoencoder" and not loaded.training
    assert torch.equal(loaded.encoder.cls_token, models[4].encoder.cls_token)
    models[2].encoder.model_name = "vit_debug_patch8_64"  # as the trainer exports an MAE's encoder
    maefast.save_pretrained(models[2].encoder, run / "encoder")
    finished = maefast.from_pretrained(run)
    assert type(finished).__name__ == "VisionTransformer"
    assert torch.equal(finished.cls_token, models[2].encoder.cls_token)


@pytest.mark.parametrize("source", ["a/b@../../../x", "a/b@main/../../x", "a/..", "a/.", "a/b@x//y", "a/b@/abs"])
def test_a_revision_or_name_that_leaves_the_cache_is_not_a_hub_id(source):
    """`a/b@../../../x` used to resolve to a folder outside huggingface_hub's cache."""
    assert not hub.is_hub_id(source)
    with pytest.raises(ValueError, match="is not a Hugging Face Hub id"):
        hub.download(source)
    with pytest.raises(FileNotFoundError):  # then it is a local path, which does not exist
        maefast.from_pretrained(source)
    assert hub.is_hub_id("owner/name@refs/pr/3") and hub.is_hub_id("owner/model.v2@v1.0")
