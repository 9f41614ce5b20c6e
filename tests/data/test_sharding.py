"""Each image exactly once per epoch over all ranks; determinism; resume mid-epoch."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from maefast.data import make_loader, open_dataset
from maefast.data.plan import TrainPlan


@pytest.mark.parametrize("num_images,batch_size,world_size", [(10, 3, 1), (17, 2, 3), (64, 8, 4), (7, 4, 2)])
def test_plan_covers_each_image_once_per_epoch(num_images, batch_size, world_size):
    for epoch in (0, 1):
        seen, steps = [], set()
        for rank in range(world_size):
            plan = TrainPlan(num_images, (64, 64), batch_size, 32, 2, seed=4, rank=rank, world_size=world_size)
            batches = list(plan.batches(epoch))
            steps.add(len(batches))
            assert all(len(b.images) <= batch_size for b in batches)
            seen += [int(i) for b in batches for i in b.images]
        assert sorted(seen) == list(range(num_images))
        assert len(steps) == 1  # every rank runs the same number of steps


def test_epochs_reshuffle_and_crops_do_not_depend_on_world_size():
    one = TrainPlan(20, (64, 64), 4, 32, 3, seed=1)
    assert not np.array_equal(one.order(0), one.order(1))
    two = TrainPlan(20, (64, 64), 4, 32, 3, seed=1, rank=1, world_size=2)
    b = next(two.batches(0))
    a = one.batch(0, 5, b.images)
    np.testing.assert_array_equal(a.anchors, b.anchors)
    np.testing.assert_array_equal(a.augment, b.augment)
    assert b.anchors.max() <= 64 - 32 and b.anchors.min() >= 0


def test_drop_last_and_bad_arguments():
    plan = TrainPlan(10, (64, 64), 4, 32, drop_last=True)
    assert [len(b.images) for b in plan.batches(0)] == [4, 4]
    with pytest.raises(ValueError, match="crop_size 100"):
        TrainPlan(10, (64, 64), 4, 100)
    with pytest.raises(ValueError, match="rank"):
        TrainPlan(10, (64, 64), 4, 32, rank=2, world_size=2)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_loader_ranks_cover_dataset(rxrx8, backend):
    dataset = open_dataset(rxrx8)
    ids = []
    for rank in range(3):
        loader = make_loader(dataset, batch_size=2, crop_size=32, crops_per_image=2, rank=rank, world_size=3,
                             backend=backend, num_workers=1)
        ids += [i for b in loader for i in b["ids"][::2]]
    assert sorted(ids) == sorted(dataset.ids)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_resume_mid_epoch_gives_the_same_batches(rxrx8, backend):
    dataset = open_dataset(rxrx8)

    def loader():
        return make_loader(dataset, batch_size=3, crop_size=48, crops_per_image=2, seed=9, backend=backend,
                           num_workers=1)

    full = loader()
    epoch0 = list(full)
    epoch1 = list(full)
    assert not torch.equal(epoch0[0]["pixels"], epoch1[0]["pixels"])
    interrupted = loader()
    iterator = iter(interrupted)
    for _ in range(2):
        next(iterator)
    state = interrupted.state_dict()
    assert (state["epoch"], state["position"]) == (0, 6)  # two steps of three images
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(rest) == len(epoch0) - 2 + len(epoch1)
    for a, b in zip(epoch0[2:] + epoch1, rest):
        assert a["ids"] == b["ids"] and torch.equal(a["pixels"], b["pixels"])
    other_seed = make_loader(dataset, batch_size=3, crop_size=48, seed=10, backend=backend)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_resume_on_another_world_size_continues_from_the_same_image(rxrx8):
    """Three steps of 2 ranks x 1 image, then 3 ranks x 2 images: every image exactly once in the epoch, in
    the epoch's order, whatever the world size before and after."""
    dataset = open_dataset(rxrx8)

    def loaders(world_size, batch_size):
        return [make_loader(dataset, batch_size=batch_size, crop_size=48, seed=4, rank=rank, world_size=world_size,
                            backend="torch", num_workers=0) for rank in range(world_size)]

    before = loaders(2, 1)
    iterators = [iter(loader) for loader in before]
    taken = [[next(iterator)["ids"] for iterator in iterators] for _ in range(3)]
    states = [loader.state_dict() for loader in before]
    assert {state["position"] for state in states} == {6}
    after = loaders(3, 2)
    for loader in after:
        loader.load_state_dict(states[0])
    rest = [[batch["ids"] for batch in loader] for loader in after]
    seen = [i for step in taken for ids in step for i in ids] + [i for ids in zip(*rest) for part in ids for i in part]
    order = list(dataset.ids[before[0].plan.order(0)])
    assert seen == order


WITHOUT_NVIDIA = """
import sys
class NoNvidia:  # as on a CPU machine without DALI or CUDA wheels: no `nvidia` namespace package at all
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia" or name.startswith("nvidia."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoNvidia())
from maefast.data import make_loader, open_dataset
loader = make_loader(open_dataset(sys.argv[1]), batch_size=2, crop_size=32, backend="auto")
print(type(loader.backend).__name__, next(iter(loader))["pixels"].shape[0])
"""


def test_auto_backend_falls_back_to_torch_without_the_nvidia_package(rxrx8):
    """The README's first command installs no DALI: `auto` must pick the PyTorch reader, not crash."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_NVIDIA, str(rxrx8)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "2"
