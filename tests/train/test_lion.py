"""Lion's multi-tensor (foreach) update against its one-tensor-at-a-time loop: the same bits."""
import pytest
import torch

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
