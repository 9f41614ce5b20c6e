import math

import pytest
import torch

import maefast
from maefast.errors import UserInputError
from maefast.fields import field_types
from maefast.models.flops import embedding_flops, mae_training_flops
from maefast.models.mae import MAEConfig
from maefast.models.munet import MUNetConfig
from maefast.models.vit import ViTConfig
from maefast.train.config import SECTIONS, load_config, recipe_names
from maefast.train.optim import (
    Lion,
    build_optimizer,
    first_cycle,
    one_cycle_factor,
    rescheduled,
    schedule_factor,
)


def test_recipes_hold_the_papers_settings():
    assert {"debug", "mae_vit_small_patch16", "mae_vit_base_patch16", "mae_vit_base_patch8", "mae_vit_large_patch8",
            "camae_vit_small_patch16", "camae_vit_base_patch16"} <= set(recipe_names())
    large = load_config("mae_vit_large_patch8")
    optim = large.optim
    assert (optim.name, optim.lr, optim.weight_decay, optim.betas) == ("lion", 3e-5, 0.05, (0.9, 0.95))
    assert load_config("mae_vit_base_patch16").optim.lr == 1e-4
    assert large.optim.warmup_fraction == 0.1


def test_overrides_and_refusals_name_the_key():
    config = load_config("debug", ["optim.lr=3e-4", "run.max_steps=7", "model.overrides.decoder_depth=1"])
    assert config.optim.lr == 3e-4 and config.run.max_steps == 7 and config.model.overrides["decoder_depth"] == 1
    cases = {
        "optim.name=sgd": "optim.name='sgd' is not allowed; choose one of \\('lion', 'adamw'\\)",
        "run.max_steps=0": "run.max_steps=0 must be a positive integer",
        "data.backend=gpu": "data.backend='gpu' is not allowed",
        "run.precision=fp16": "run.precision='fp16' is not allowed",
        "optim.lr=-1": "optim.lr=-1 must be a positive number",
        "optim.betas=[0.9, 1.5]": r"optim.betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)",
        "optim.betas=[0.9]": r"optim.betas=\(0.9,\) must be a list of 2 items: a finite number, a finite number",
        "model.name=vit_small_patch16_256": (r"encoder family\) cannot be trained; the trainable families are "
                                             r"CA-MAE \(e.g. camae_vit_base_patch16_256\), MAE"),
        "model.overrides.mask_ratio=1.0": r"mask_ratio must be in \[0, 1\), got 1.0",
        "data.crop_size=32": "data.crop_size=32 must equal the model's img_size 64",
        "run.speed=9": r"unknown key\(s\) \['run.speed'\]",
        "lr=3": r"unknown key\(s\) \['lr'\]; keys are \['data', 'model', 'optim', 'run'\]",
        "run=3": "run must be a mapping of keys to values, got 3",
    }
    for assignment, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_config("debug", [assignment])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        load_config("nope")


# values that are numbers or flags only to a lax reader: bool is an int subclass, inf and nan are floats
NOT_OF_TYPE = {int: ["true", "1.5", "inf"], float: ["inf", "-inf", "nan", "true"], bool: ["1", "0.5", "auto"]}


def scalar_fields(sections: dict, prefix_of=lambda name: f"{name}."):
    return [(prefix_of(name) + key, expected) for name, cls in sections.items()
            for key, expected in field_types(cls).items() if expected in NOT_OF_TYPE]


TRAIN_FIELDS = scalar_fields(SECTIONS)
MODEL_FIELDS = scalar_fields({"mae": MAEConfig, "vit": ViTConfig}, lambda _: "model.overrides.")


@pytest.mark.parametrize("key,expected", TRAIN_FIELDS + MODEL_FIELDS, ids=[k for k, _ in TRAIN_FIELDS + MODEL_FIELDS])
def test_every_number_and_flag_refuses_values_of_another_type(key, expected):
    for text in NOT_OF_TYPE[expected]:
        with pytest.raises(UserInputError, match=f"{key.removeprefix('model.overrides.')}=.* must be "):
            load_config("debug", [f"{key}={text}"])


def test_the_munet_config_checks_its_field_types_too():
    numeric = {name for name, expected in field_types(MUNetConfig).items() if expected in (int, float)}
    assert numeric >= {"in_chans", "mask_ratio"}
    with pytest.raises(UserInputError, match=r"model.overrides: in_chans=True must be an integer"):
        load_config("debug_munet", ["model.overrides.in_chans=true"])
    with pytest.raises(UserInputError, match=r"widths=\[64, 1.5\] must be a list, each item an integer"):
        load_config("debug_munet", ["model.overrides.widths=[64, 1.5]"])

def test_lion_matches_its_update_rule():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = Lion([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    momentum = torch.zeros(5)
    expected = param.detach().clone()
    for _ in range(3):
        grad = torch.randn(5)
        param.grad = grad.clone()
        optimizer.step()
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * momentum + 0.1 * grad)
        momentum = 0.99 * momentum + 0.01 * grad
        torch.testing.assert_close(param.detach(), expected)


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = maefast.create_model("mae_vit_debug_patch8_64", in_chans=2)
    decay, no_decay = build_optimizer(model, "lion", 1e-4, 0.05, (0.9, 0.95)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert any(names[id(p)] == "encoder.cls_token" for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_one_cycle_schedule():
    factors = [one_cycle_factor(step, 100, 0.1) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


@pytest.mark.parametrize("step,total,kind", [(3, 200, "warm-up continues"), (3, 8, "decay"), (40, 60, "decay"),
                                             (40, 300, "decay"), (100, 150, "new cycle")])
def test_a_changed_run_length_never_makes_the_learning_rate_jump(step, total, kind):
    """rescheduled(): the factor at the resumed step is the one the run had there (a finished run: a new warm-up
    from the start), and it ends at min_ratio on the new last step."""
    cycles = [first_cycle(100, 0.1, 0.05)]
    new, description = rescheduled(cycles, step, total, 0.1, 0.05)
    assert [schedule_factor(new, s) for s in range(step)] == [schedule_factor(cycles, s) for s in range(step)]
    if kind == "new cycle":
        assert schedule_factor(new, step) == pytest.approx(1 / 5) and "a new one runs over the 50 steps" in description
        assert max(schedule_factor(new, s) for s in range(step, total)) == pytest.approx(1.0)
    else:
        assert schedule_factor(new, step) == pytest.approx(schedule_factor(cycles, step))
        assert kind in description
    assert schedule_factor(new, total) == pytest.approx(0.05)
    assert all(schedule_factor(new, s) >= 0.05 - 1e-12 for s in range(total + 1))


def test_flops_match_the_papers_accounting():
    with torch.device("meta"):
        large = maefast.create_model("mae_vit_large_patch8_256")
    assert mae_training_flops(large.config, 6) / 1e9 == pytest.approx(694, rel=0.01)
    assert embedding_flops(large.config.encoder, 6) / 1e9 == pytest.approx(722, rel=0.01)


def test_a_model_option_is_set_as_model_dot_key():
    """`--set model.global_pool=avg` is a create_model option (model.overrides), for train as for embed."""
    config = load_config("debug", ["model.global_pool=avg", "model.overrides.decoder_depth=1"])
    assert config.model.overrides["global_pool"] == "avg" and config.model.overrides["decoder_depth"] == 1
    assert config.model.name == "mae_vit_debug_patch8_64"
    with pytest.raises(ValueError, match=r"model.overrides: global_pool must be one of \('token', 'avg'\), got 'max'"):
        load_config("debug", ["model.global_pool=max"])
