"""Lion's multi-tensor (foreach) update against its one-tensor-at-a-time loop: the same bits; the fused (compiled)
Lion and AdamW updates against their loops."""
import pytest
import torch
import torch._dynamo

import maefast
from maefast.train.optim import Lion, build_optimizer


def parameters(seed: int, low_precision=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,), (64, 33)]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(9, 4, generator=generator).to(low_precision)))  # its own dtype group
    return params


def train(foreach: bool, weight_decay: float, other_dtype=torch.float64, steps: int = 300):
    params = parameters(0, other_dtype)
    groups = [dict(params=params[:3], weight_decay=weight_decay), dict(params=params[3:], weight_decay=0.0)]
    optimizer = Lion(groups, lr=3e-3, betas=(0.9, 0.95), foreach=foreach)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + 0.01 * step))
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for index, param in enumerate(params):
            grads = torch.randn(param.shape, generator=generator)
            # some parameters get no gradient on some steps (frozen branches, unused tokens)
            param.grad = None if (step + index) % 7 == 0 else grads.to(param.dtype)
        optimizer.step()
        scheduler.step()
    return [p.detach().clone() for p in params] + [optimizer.state[p]["exp_avg"].clone() for p in params]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_and_loop_give_identical_parameters_and_state_over_many_steps(weight_decay):
    """float32 (and float64) parameters, as maefast trains them: the same bits after 300 steps."""
    fast, loop = train(True, weight_decay), train(False, weight_decay)
    for a, b in zip(fast, loop):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert not torch.equal(fast[0], parameters(0)[0])  # the parameters did move


def test_foreach_in_bfloat16_stays_within_its_rounding():
    """torch's multi-tensor bf16 kernels may round intermediates differently by one unit in the last place."""
    for a, b in zip(train(True, 0.1, torch.bfloat16, 50), train(False, 0.1, torch.bfloat16, 50)):
        torch.testing.assert_close(a, b, rtol=2 ** -6, atol=2 ** -6)


def test_state_saved_without_the_foreach_option_loads():
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    optimizer = build_optimizer(model, "lion", 1e-4, 0.05, (0.9, 0.95))
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        del group["foreach"]
    restored = build_optimizer(model, "lion", 1e-4, 0.05, (0.9, 0.95))
    restored.load_state_dict(saved)
    restored.step()
    assert all(group["foreach"] is None for group in restored.param_groups)


def test_sparse_gradients_are_refused():
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Lion([param]).step()


def fused_against_loop(fused_kwargs: dict, loop_kwargs: dict, name: str, steps: int = 30):
    """Parameters and optimizer state after `steps` steps of the fused update and of the reference loop, from
    the same start, with the one-cycle-like decaying learning rate a schedule gives."""
    results = []
    for kwargs in (fused_kwargs, loop_kwargs):
        params = parameters(0, torch.float32)
        groups = [dict(params=params[:3], weight_decay=0.1), dict(params=params[3:], weight_decay=0.0)]
        if name == "lion":
            optimizer = Lion(groups, lr=3e-3, betas=(0.9, 0.95), **kwargs)
        else:
            optimizer = torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95), **kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + 0.1 * step))
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()
            scheduler.step()
        state = [value for p in params for value in optimizer.state[p].values() if value.ndim]
        results.append([p.detach().clone() for p in params] + state)
    return results


def test_fused_lion_matches_the_loop_and_compiles_once_for_every_learning_rate():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fused, loop = fused_against_loop({"fused": True}, {"fused": False, "foreach": False}, "lion")
    for a, b in zip(fused, loop):
        # the decayed parameter may round differently by one unit; the sign update itself is exact
        torch.testing.assert_close(a, b, rtol=2e-7, atol=1e-7)
    assert not torch.equal(fused[0], parameters(0, torch.float32)[0])
    # one graph per group (decay / no decay): 30 learning rates, no recompilation
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_fused_adamw_matches_the_loop():
    fused, loop = fused_against_loop({"fused": True}, {"foreach": False}, "adamw")
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_build_optimizer_fuses_adamw_and_lion_where_it_pays():
    model = maefast.create_model("vit_debug_patch8_64", in_chans=2)
    assert build_optimizer(model, "adamw", 1e-4, 0.05, (0.9, 0.95)).defaults["fused"] is True  # CPU and CUDA
    assert build_optimizer(model, "lion", 1e-4, 0.05, (0.9, 0.95)).defaults["fused"] is None  # CUDA only
    assert build_optimizer(model, "lion", 1e-4, 0.05, (0.9, 0.95), fused=True).defaults["fused"] is True


@pytest.mark.parametrize("name, fused", [("lion", True), ("lion", False), ("adamw", True)])
def test_a_step_flagged_found_inf_leaves_parameters_and_state_as_they_were(name, fused):
    """The trainer skips the update of a non-finite step on the device, through `found_inf`."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = build_optimizer(model, name, 1e-2, 0.1, (0.9, 0.95), fused=fused)
    for flag in (0.0, 1.0):  # a normal step (the state exists), then a flagged one with NaN gradients
        for param in model.parameters():
            param.grad = torch.randn_like(param) if not flag else torch.full_like(param, float("nan"))
        optimizer.found_inf = torch.tensor(flag)
        before = [t.clone() for t in (*model.parameters(),
                                      *(v for state in optimizer.state.values() for v in state.values()))]
        optimizer.step()
    after = [*model.parameters(), *(v for state in optimizer.state.values() for v in state.values())]
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()  # and it steps again once the flag is clear
    assert not torch.equal(next(model.parameters()), before[0])
