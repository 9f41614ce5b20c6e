"""Every registered model belongs to exactly one family, and the family answers what the engine asks."""
import torch

from maefast import create_model, list_models
from maefast.models.families import FAMILIES, family_of
from maefast.models.flops import mae_training_flops


def test_every_registered_model_has_one_family():
    for name in list_models():
        matching = [f for f in FAMILIES if name.startswith(f.prefix) and
                    not any(name.startswith(g.prefix) and len(g.prefix) > len(f.prefix) for g in FAMILIES)]
        assert family_of(name) in matching, name


def test_families_give_blocks_embedder_and_flops():
    mae = create_model("mae_vit_debug_patch8_64", in_chans=3, decoder_depth=3)
    family = family_of(mae)
    assert family.trainable and not family.needs_labels
    assert len(family.blocks(mae)) == mae.config.encoder.depth + 3
    assert family.embedder(mae) is mae.encoder and family.embedder_name(mae.model_name) == "vit_debug_patch8_64"
    assert family.training_flops(mae, 3) == mae_training_flops(mae.config, 3)
    camae = create_model("camae_vit_debug_patch8_64", decoder_depth=2)
    assert len(family_of(camae).blocks(camae)) == camae.config.encoder.depth + 2 * camae.config.num_decoder_channels
    assert family_of(camae).embedder_name(camae.model_name) == "ca_vit_debug_patch8_64"
    with torch.device("meta"):
        classifier = create_model("wsl_vit_debug_patch8_64", **family_of("wsl_vit_debug_patch8_64").build_options)
    assert family_of(classifier).needs_labels and family_of(classifier).embedder(classifier) is classifier
    assert not family_of("vit_debug_patch8_64").trainable and not family_of("ca_vit_debug_patch8_64").trainable
    assert family_of("munet_debug_64").blocks(create_model("munet_debug_64")) == []
