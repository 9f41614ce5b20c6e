import json

import pytest
import torch

import maefast
from maefast.errors import UserInputError
from maefast.models import CheckpointMismatch
from maefast.ops.patches import random_pixels


def test_save_and_reload_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = maefast.create_model("camae_vit_debug_patch8_64", max_in_chans=5).eval()
    maefast.save_pretrained(model, tmp_path / "ckpt", channel_names=["DNA", "ER", "RNA", "AGP", "Mito"])
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model"] == "camae_vit_debug_patch8_64" and meta["channel_names"][-1] == "Mito"
    assert not list((tmp_path / "ckpt").glob("*.partial"))
    restored = maefast.from_pretrained(tmp_path / "ckpt").eval()
    pixels = random_pixels(2, 3, 64)
    noise = torch.rand(2, 3 * 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(pixels, noise=noise)[1], model(pixels, noise=noise)[1])


def test_encoder_loads_from_an_mae_checkpoint(tmp_path):
    mae = maefast.create_model("mae_vit_debug_patch8_64", in_chans=2).eval()
    maefast.save_pretrained(mae, tmp_path)
    encoder = maefast.load_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=2), tmp_path).eval()
    pixels = random_pixels(1, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed(pixels), mae.embed(pixels))


def test_missing_and_unexpected_keys_are_listed_unless_non_strict():
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    state = dict(model.state_dict())
    state.pop("norm.weight")
    state["extra.weight"] = torch.ones(3)
    with pytest.raises(CheckpointMismatch, match=r"missing: \['norm.weight'\]\n  unexpected: \['extra.weight'\]"):
        maefast.load_pretrained(model, state)
    maefast.load_pretrained(model, state, strict=False)
    torch.testing.assert_close(model.state_dict()["blocks.0.in_proj.weight"], state["blocks.0.in_proj.weight"])


def test_pickles_need_trust(tmp_path):
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="is a torch.save pickle.*maefast opens pickles only "
                                         "when told to trust them: pass trust_pickle=True"):
        maefast.load_pretrained(model, tmp_path / "weights.pth")
    maefast.load_pretrained(model, tmp_path / "weights.pth", trust_pickle=True)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        maefast.load_pretrained(model, tmp_path / "nothing.safetensors")


def test_damaged_checkpoint_files_are_named(tmp_path):
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    maefast.save_pretrained(model, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserInputError, match=r"model.safetensors: damaged or truncated safetensors"):
        maefast.load_pretrained(model, tmp_path)
    with pytest.raises(UserInputError, match=r"model.safetensors: damaged or truncated safetensors"):
        maefast.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "maefast", "mod')
    with pytest.raises(UserInputError, match=r"config.json: damaged or truncated JSON"):
        maefast.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('["a list"]')
    with pytest.raises(UserInputError, match=r"config.json: not a maefast model config"):
        maefast.from_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "weights.pt").write_bytes((tmp_path / "weights.pt").read_bytes()[:200])
    with pytest.raises(UserInputError, match=r"weights.pt: not a readable PyTorch weights file"):
        maefast.load_pretrained(model, tmp_path / "weights.pt", trust_pickle=True)
