"""Every registered model belongs to exactly one family, which owns its name; the family answers what the engine
asks, and nothing reads a family from a name's letters."""
import re
from pathlib import Path

import pytest
import torch

from maefast import create_model, list_models
from maefast.errors import UserInputError
from maefast.models import families, registry
from maefast.models.families import CA_ENCODER, CA_MAE, ENCODER, FAMILIES, MAE, family_of
from maefast.models.flops import mae_training_flops
from maefast.models.vit import VIT_SIZES

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_model_is_the_variant_of_exactly_one_family():
    for name in list_models():
        owners = [family for family in FAMILIES if name in family.variants]
        assert owners == [family_of(name)], name
    assert sorted(name for family in FAMILIES for name in family.variants) == list_models()


def test_an_mae_embeds_with_the_encoder_of_its_size_whatever_the_names_look_like():
    for size in VIT_SIZES:
        assert MAE.embedder_name(MAE.variant(size)) == ENCODER.variant(size) == size
        assert CA_MAE.embedder_name(CA_MAE.variant(size)) == CA_ENCODER.variant(size)
    assert ENCODER.embedder_name("vit_debug_patch8_64") == "vit_debug_patch8_64"
    with pytest.raises(UserInputError, match="the MAE family has no variant of size 'vit_huge'"):
        MAE.variant("vit_huge")


def test_a_registered_model_has_the_family_it_was_registered_with(monkeypatch):
    """The family comes from the registration, not from the name: a name that looks like an MAE's is an
    encoder when registered as one, and a name registered without a family has none."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(families, "_FAMILY_OF", dict(families._FAMILY_OF))
    registry.register("mae_lookalike", ENCODER.factory("vit_debug_patch8_64"), family=ENCODER)
    model = create_model("mae_lookalike", in_chans=2)
    assert family_of(model) is ENCODER and family_of(model).embedder(model) is model
    registry.register("camae_without_family", ENCODER.factory("vit_debug_patch8_64"))
    with pytest.raises(UserInputError, match="'camae_without_family' belongs to no model family"):
        family_of("camae_without_family")
    with pytest.raises(UserInputError, match="'mae_lookalike' is not a variant of the MAE family"):
        MAE.embedder_name("mae_lookalike")


def test_no_code_outside_the_families_spells_a_family_prefix():
    """The variant names are assembled once (families.sized); a prefix literal elsewhere would be name reading."""
    prefixes = re.compile(r"""["'](mae|camae|ca|wsl|munet)_["']""")
    sources = [*ROOT.glob("maefast/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/**/*.py")]
    spelled = [str(path.relative_to(ROOT)) for path in sources
               if path != ROOT / "maefast/models/families.py" and prefixes.search(path.read_text())]
    assert spelled == [], f"family prefixes spelled outside maefast/models/families.py: {spelled}"


def test_families_give_blocks_embedder_and_flops():
    mae = create_model("mae_vit_debug_patch8_64", in_chans=3, decoder_depth=3)
    family = family_of(mae)
    assert family is MAE and family.trainable and not family.needs_labels
    assert len(family.blocks(mae)) == mae.config.encoder.depth + 3
    assert family.embedder(mae) is mae.encoder
    assert family.training_flops(mae, 3) == mae_training_flops(mae.config, 3)
    camae = create_model("camae_vit_debug_patch8_64", decoder_depth=2)
    assert len(family_of(camae).blocks(camae)) == camae.config.encoder.depth + 2 * camae.config.num_decoder_channels
    with torch.device("meta"):
        classifier = create_model("wsl_vit_debug_patch8_64", **family_of("wsl_vit_debug_patch8_64").build_options)
    assert family_of(classifier).needs_labels and family_of(classifier).embedder(classifier) is classifier
    assert not family_of("vit_debug_patch8_64").trainable and not family_of("ca_vit_debug_patch8_64").trainable
    assert family_of("munet_debug_64").blocks(create_model("munet_debug_64")) == []
