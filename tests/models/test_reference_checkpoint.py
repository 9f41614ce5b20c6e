"""The public reference's checkpoints (MAEModel of recursionpharma/maes_microscopy, the OpenPhenom release):
a folder with config.json and a torch.save pickle named model.safetensors, in maefast's modules."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import maefast
from maefast.embedding.encoder import load_encoder
from maefast.models import CheckpointMismatch
from maefast.models.families import CA_MAE, MAE
from maefast.models.reference import OPENPHENOM_RELEASE, ReferenceConfigError, model_spec
from maefast.ops.patches import random_pixels
from tests.helpers import FIXTURES
from tests.models.reference_layout import random_reference_state, reference_positions, reference_state_shapes

OPENPHENOM_DIR = os.path.join(FIXTURES, "openphenom")
# a small CA-MAE in the reference's terms: 32 x 32 crops of 8 x 8 patches, encoder up to 5 channels,
# per-channel decoders for 3
TINY = dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0, patch_size=8, img_size=32, in_chans=3,
            channel_agnostic=True, max_in_chans=5, global_pool="avg", decoder_embed_dim=32, decoder_depth=2,
            decoder_mlp_ratio=4.0, num_modalities=3)


def tiny_config(layout: dict) -> dict:
    backbone = {"_target_": "vit.vit_small_patch16_256", "global_pool": layout["global_pool"],
                "img_size": layout["img_size"], "patch_size": layout["patch_size"], "in_chans": layout["in_chans"],
                "embed_dim": layout["embed_dim"], "depth": layout["depth"], "num_heads": layout["num_heads"]}
    agnostic = layout["channel_agnostic"]
    decoder = {"_target_": "mae_modules.CAMAEDecoder" if agnostic else "mae_modules.MAEDecoder",
               "embed_dim": layout["decoder_embed_dim"], "depth": layout["decoder_depth"], "num_heads": 16,
               "mlp_ratio": 4, "qkv_bias": True}
    if agnostic:
        decoder.update(num_modalities=layout["num_modalities"],
                       tokens_per_modality=(layout["img_size"] // layout["patch_size"]) ** 2)
    return {"model_type": "MAE", "architectures": ["MAEModel"], "mask_ratio": 0.75, "fourier_loss_weight": 0.01,
            "encoder": {"_target_": "mae_modules.MAEEncoder", "channel_agnostic": agnostic,
                        "max_in_chans": layout["max_in_chans"],
                        "vit_backbone": {"_target_": "vit.sincos_positional_encoding_vit", "vit_backbone": backbone}},
            "decoder": decoder}


def reference_state(layout: dict, seed: int = 0) -> dict:
    grid_side = layout["img_size"] // layout["patch_size"]
    repeats = (layout["max_in_chans"], layout["num_modalities"]) if layout["channel_agnostic"] else (1, 1)
    return random_reference_state(reference_state_shapes(**layout), seed, grid_side, repeats)


def write_reference_folder(folder, config: dict, state: dict):
    """What MAEModel.save_pretrained writes: config.json and torch.save({"state_dict": ...}) as model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"state_dict": state}, folder / "model.safetensors")
    return folder


def test_every_openphenom_key_maps_onto_a_maefast_parameter_of_its_shape():
    """The release's 765 keys and shapes (fixture) against the CA-MAE built from its config.json, on the meta device."""
    with open(os.path.join(OPENPHENOM_DIR, "state_shapes.json")) as handle:
        shapes = {key: tuple(shape) for key, shape in json.load(handle).items()}
    with open(os.path.join(OPENPHENOM_DIR, "config.json")) as handle:
        name, overrides = model_spec(json.load(handle))
    assert name == "camae_vit_small_patch16_256"
    assert overrides["max_in_chans"] == 11 and overrides["decoder_channels"] == 6 and overrides["decoder_depth"] == 8
    with torch.device("meta"):
        model = maefast.create_model(name, **overrides)
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    state["decoder.pos_embeddings"] = reference_positions(512, 16, 6)  # checked by value
    maefast.load_pretrained(model, state)  # strict: every key used, every parameter given, every shape equal
    assert len(shapes) == len(model.state_dict()) + 2  # decoder.pos_embeddings and decoder.placeholder are fixed


@pytest.mark.parametrize("agnostic", [True, False])
def test_reference_folder_loads_every_value_into_its_parameter(tmp_path, agnostic):
    layout = TINY if agnostic else {**TINY, "channel_agnostic": False, "global_pool": "token", "max_in_chans": 3}
    state = reference_state(layout)
    folder = write_reference_folder(tmp_path / "ref", tiny_config(layout), state)
    with pytest.raises(ValueError, match="is a torch.save pickle, whatever its name says.*trust_pickle=True"):
        maefast.from_pretrained(folder)
    model = maefast.from_pretrained(folder, trust_pickle=True)
    assert model.model_name == (CA_MAE if agnostic else MAE).variant("vit_small_patch16_256")
    params = dict(model.named_parameters())
    expected = {"encoder.blocks.1.in_proj.weight": "encoder.vit_backbone.blocks.1.in_proj.weight",
                "encoder.blocks.0.ls.gamma": "encoder.vit_backbone.blocks.0.ls.gamma",
                "encoder.patch_embed.proj.weight": "encoder.vit_backbone.patch_embed.proj.weight",
                "encoder_decoder_proj.weight": "encoder_decoder_proj.weight", "decoder_pred.bias": "decoder_pred.bias",
                "decoder.mask_token": "decoder.mask_token"}
    if agnostic:
        expected.update({"encoder.fc_norm.weight": "encoder.vit_backbone.fc_norm.weight",
                         "decoder.decoders.2.1.attn.qkv.weight": "decoder.decoders.2.1.attn.qkv.weight",
                         "decoder.modality_tokens.1": "decoder.modality_tokens.1",
                         "decoder.cross_attention.kv.weight": "decoder.cross_attention.kv.weight",
                         "decoder.query_norm.bias": "decoder.query_norm.bias",
                         "decoder.mlp.fc2.weight": "decoder.mlp.fc2.weight"})
    else:
        expected.update({"encoder.norm.weight": "encoder.vit_backbone.norm.weight",
                         "decoder.blocks.1.mlp.fc1.weight": "decoder.blocks.1.mlp.fc1.weight",
                         "decoder.norm.bias": "decoder.norm.bias"})
    for ours, theirs in expected.items():
        assert torch.equal(params[ours], state[theirs]), ours
    # every value of the file is in exactly one parameter of the same name (less the backbone prefix); a block's
    # mlp_bias is the tail of its in_proj bias, whose first 3 * 32 entries (q, k, v's share in timm < 1.0.25) are 0
    ours = model.state_dict()
    for key, value in state.items():
        if key in ("decoder.pos_embeddings", "decoder.placeholder"):
            continue
        if key.endswith("mlp_bias"):
            bias = ours[key.replace("encoder.vit_backbone.", "encoder.").replace("mlp_bias", "in_proj.bias")]
            assert torch.equal(bias[96:], value) and not bias[:96].any(), key
            continue
        assert torch.equal(ours[key.replace("encoder.vit_backbone.", "encoder.")], value), key
    assert len(ours) == len(state) - (2 if agnostic else 1)
    loss, pred, mask = model(random_pixels(2, 3, 32))
    assert torch.isfinite(loss) and pred.shape == ((2, 3 * 16, 64) if agnostic else (2, 16, 3 * 64))


def test_ca_encoder_takes_more_channels_than_the_decoder_reconstructs(tmp_path):
    folder = write_reference_folder(tmp_path / "ref", tiny_config(TINY), reference_state(TINY))
    model = maefast.from_pretrained(folder, trust_pickle=True).eval()
    assert model.decoder.modality_tokens.__len__() == 3 and model.config.encoder.max_in_chans == 5
    with torch.no_grad():
        assert model.embed(random_pixels(2, 5, 32)).shape == (2, 32)
    with pytest.raises(ValueError, match="decoder reconstructs at most 3 channels, got 5"):
        model(random_pixels(2, 5, 32))
    encoder, channels = load_encoder(folder, trust_pickle=True)  # what `maefast embed --checkpoint DIR` uses
    assert channels == [] and encoder.config.max_in_chans == 5
    torch.testing.assert_close(encoder.blocks[0].in_proj.weight, model.encoder.blocks[0].in_proj.weight)
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, max_in_chans=5, global_pool="avg")
    bare = maefast.load_pretrained(maefast.create_model("ca_vit_small_patch16_256", qkv_bias=True, **options),
                                   folder, trust_pickle=True)
    torch.testing.assert_close(bare.fc_norm.weight, model.encoder.fc_norm.weight)
    with pytest.raises(ValueError, match="put their mlp_bias on q, k, v as well .* build the model with qkv_bias=True"):
        maefast.load_pretrained(maefast.create_model("ca_vit_small_patch16_256", **options), folder, trust_pickle=True)


def test_unknown_missing_and_unsupported_keys_are_named(tmp_path):
    state = reference_state(TINY)
    state.pop("decoder.decoders.1.0.norm1.weight")
    state["encoder.vit_backbone.head.weight"] = torch.zeros(10, 32)
    folder = write_reference_folder(tmp_path / "a", tiny_config(TINY), state)
    with pytest.raises(CheckpointMismatch, match=r"missing: \['decoder.decoders.1.0.norm1.weight'\]\n"
                                                 r"  unexpected: \['encoder.vit_backbone.head.weight'\]"):
        maefast.from_pretrained(folder, trust_pickle=True)
    state = reference_state(TINY)
    state["encoder.vit_backbone.blocks.0.attn_out_proj.weight"] = torch.zeros(7, 32)
    folder = write_reference_folder(tmp_path / "b", tiny_config(TINY), state)
    with pytest.raises(CheckpointMismatch, match=r"encoder.blocks.0.attn_out_proj.weight \(checkpoint encoder."
                                                 r"vit_backbone.blocks.0.attn_out_proj.weight\): checkpoint \(7, 32\)"):
        maefast.from_pretrained(folder, trust_pickle=True)
    state = {**reference_state(TINY), "input_norm.1.weight": torch.ones(3)}
    folder = write_reference_folder(tmp_path / "c", tiny_config(TINY), state)
    with pytest.raises(ValueError, match=r"input normalization state \['input_norm.1.weight'\]"):
        maefast.from_pretrained(folder, trust_pickle=True)
    state = reference_state(TINY)
    state["decoder.pos_embeddings"] = state["decoder.pos_embeddings"] + 0.5
    folder = write_reference_folder(tmp_path / "d", tiny_config(TINY), state)
    with pytest.raises(ValueError, match="decoder.pos_embeddings .* is not the fixed sin-cos position table"):
        maefast.from_pretrained(folder, trust_pickle=True)


def test_reference_configs_maefast_cannot_build_are_refused():
    config = tiny_config(TINY)
    config["encoder"]["vit_backbone"]["vit_backbone"]["_target_"] = "vit.vit_small_patch32_512"
    with pytest.raises(ReferenceConfigError, match="backbone 'vit.vit_small_patch32_512' has no maefast counterpart"):
        model_spec(config)
    config = tiny_config(TINY)
    config["encoder"]["vit_backbone"]["vit_backbone"]["class_token"] = False
    with pytest.raises(ReferenceConfigError, match="backbone options maefast cannot build: {'class_token': False}"):
        model_spec(config)
    config = tiny_config(TINY)
    config["decoder"]["qkv_bias"] = False
    with pytest.raises(ReferenceConfigError, match="qkv_bias=false"):
        model_spec(config)
    # a config.json without the architecture: the release's MAEModel builds a fixed one (LayerNorm eps 1e-5)
    name, overrides = model_spec({"model_type": "MAE", "mask_ratio": 0.75})
    assert name == OPENPHENOM_RELEASE["model"] and overrides["decoder_norm_eps"] == 1e-5


def test_weights_format_is_read_from_the_bytes_not_the_name(tmp_path):
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    save_file(model.state_dict(), str(tmp_path / "weights.pth"))  # safetensors under a pickle's name
    maefast.load_pretrained(model, tmp_path / "weights.pth")  # no trust needed
    padded = {**model.state_dict(), "x" * 200: torch.zeros(1)}  # a header length whose first byte is 0x80
    for extra in range(300):
        save_file(padded, str(tmp_path / "padded.safetensors"), metadata={"pad": "p" * extra})
        if (tmp_path / "padded.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "padded.safetensors").read_bytes()[0] == 0x80
    maefast.load_pretrained(model, tmp_path / "padded.safetensors", strict=False)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither safetensors .* nor a torch.save pickle"):
        maefast.load_pretrained(model, tmp_path / "garbage.safetensors")
    torch.save(model.state_dict(), tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="is a torch.save pickle"):
        maefast.load_pretrained(model, tmp_path / "legacy.safetensors")
    maefast.load_pretrained(model, tmp_path / "legacy.safetensors", trust_pickle=True)


def test_reference_modules_outputs_are_reproduced():
    """Golden outputs of the reference's own modules (tests/fixtures/make_reference_golden.py, run with timm and
    the reference's code): its masked reconstruction, mask and embedding from the same weights and noise."""
    tensors = load_file(os.path.join(FIXTURES, "reference_golden_camae.safetensors"))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    model = maefast.create_model("camae_vit_small_patch16_256", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                 num_heads=4, max_in_chans=5, global_pool="avg", qkv_bias=True, decoder_channels=3,
                                 decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=16).eval()
    maefast.load_pretrained(model, {"state_dict": state})
    with torch.no_grad():
        _, pred, mask = model(tensors["pixels"], noise=tensors["noise"])
        embedding = model.embed(tensors["pixels"])
    torch.testing.assert_close(mask, tensors["mask"])
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert relative(pred, tensors["reconstruction"]) < 1e-5
    assert relative(embedding, tensors["embedding"]) < 1e-5


def test_a_reference_checkpoint_into_a_model_built_otherwise_names_the_options(tmp_path):
    """What the README's load_pretrained(..., layout="reference") needs, said by the errors: the decoder's channel
    count (not "positions maefast cannot reproduce"), and the pooling and biases the weights imply."""
    folder = write_reference_folder(tmp_path / "ref", tiny_config(TINY), reference_state(TINY))
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, max_in_chans=5, qkv_bias=True,
                   decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=16, global_pool="avg")
    with pytest.raises(ValueError, match=r"decoder.pos_embeddings holds the decoder positions of 3 channels; the "
                                         r"model's decoder has 5: build it with decoder_channels=3"):
        maefast.load_pretrained(maefast.create_model("camae_vit_small_patch16_256", **options), folder,
                                layout="reference", trust_pickle=True)
    with pytest.raises(CheckpointMismatch, match=r"the checkpoint's ViT has global_pool='avg' \(the model: 'token'\)"):
        maefast.load_pretrained(maefast.create_model("camae_vit_small_patch16_256",
                                                     **{**options, "global_pool": "token"}, decoder_channels=3),
                                folder, layout="reference", trust_pickle=True)
    model = maefast.load_pretrained(maefast.create_model("camae_vit_small_patch16_256", **options, decoder_channels=3),
                                    folder, layout="reference", trust_pickle=True)
    torch.testing.assert_close(model.encoder.fc_norm.weight, maefast.from_pretrained(folder, trust_pickle=True)
                               .encoder.fc_norm.weight)
