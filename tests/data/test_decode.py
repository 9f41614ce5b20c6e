"""Decoded pixels equal Pillow / tifffile decodings; crops are where the plan says; backends agree."""
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from maefast.data import make_loader, make_tile_loader, open_dataset
from maefast.data.packed import pack_dataset
from maefast.data.plan import apply_augment

BACKENDS = ["dali", "torch"]


def pillow_image(dataset, row):
    planes = []
    for path in dataset.channel_files(row):
        planes.append(tifffile.imread(path) if path.endswith(".tiff") else np.asarray(Image.open(path)))
    return np.stack(planes)


def collect(loader):
    batches = list(loader)
    return torch.cat([b["pixels"] for b in batches]), [i for b in batches for i in b["ids"]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("screen", ["rxrx8", "rxrx16", "jump16"])
def test_full_image_equals_pillow_tifffile(screen, backend, request):
    dataset = open_dataset(request.getfixturevalue(screen))
    size = dataset.image_shape[0]
    loader = make_loader(dataset, batch_size=5, crop_size=size, augment=False, backend=backend, num_workers=1)
    pixels, ids = collect(loader)
    position = {image_id: row for row, image_id in enumerate(dataset.ids)}
    assert sorted(ids) == sorted(dataset.ids)
    expected_dtype = torch.uint8 if screen == "rxrx8" else torch.uint16
    assert pixels.dtype == expected_dtype
    for crop, image_id in zip(pixels, ids):
        reference = pillow_image(dataset, position[image_id])
        assert reference.std() > 0
        np.testing.assert_array_equal(crop.numpy(), reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crops_at_planned_positions(rxrx8, backend):
    dataset = open_dataset(rxrx8, channels=["Mito", "DNA"])
    loader = make_loader(dataset, batch_size=4, crop_size=40, crops_per_image=3, seed=11, backend=backend,
                         num_workers=1)
    for batch in loader:
        plan = loader.plan.batch(batch["epoch"], batch["step"], batch["index"].numpy()[::3])
        assert plan.augment.any() and (plan.anchors > 0).any()
        crops = batch["pixels"].numpy().reshape(len(plan.images), 3, 2, 40, 40)
        for i, row in enumerate(plan.images):
            image = pillow_image(dataset, row)
            for k in range(3):
                y, x = plan.anchors[i, k]
                expected = apply_augment(image[:, y:y + 40, x:x + 40], *plan.augment[i, k])
                np.testing.assert_array_equal(crops[i, k], expected)


def test_augmentation_is_the_eight_symmetries():
    crop = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    results = {apply_augment(crop, t, v, h).tobytes() for t in (0, 1) for v in (0, 1) for h in (0, 1)}
    rotations = {np.rot90(np.flip(crop, -1) if f else crop, k, axes=(-2, -1)).tobytes()
                 for k in range(4) for f in (0, 1)}
    assert results == rotations and len(results) == 8


def test_backends_agree_on_png_illumination_and_packed(jump16, tmp_path):
    dataset = open_dataset(jump16, illumination="illum", channels=["Mito", "DNA", "ER"])
    packed = open_dataset(pack_dataset(dataset, tmp_path / "packed", shard_images=5, progress=False))
    assert packed.channels == ("Mito", "DNA", "ER")
    reordered = open_dataset(pack_dataset(open_dataset(jump16, illumination="illum"), tmp_path / "all",
                                          shard_images=7, progress=False), channels=["Mito", "DNA", "ER"])
    outputs = []
    for data in (dataset, packed, reordered):
        for backend in BACKENDS:
            loader = make_loader(data, batch_size=3, crop_size=32, crops_per_image=2, seed=2, backend=backend,
                                 num_workers=1)
            outputs.append(collect(loader))
    reference_pixels, reference_ids = outputs[0]
    assert reference_pixels.float().std() > 0
    for pixels, ids in outputs[1:]:
        assert ids == reference_ids
        assert torch.equal(pixels, reference_pixels)


def test_illumination_correction_changes_pixels(jump16):
    raw, corrected = open_dataset(jump16), open_dataset(jump16, illumination="illum")
    a = collect(make_loader(raw, 4, 32, seed=1, backend="dali", num_workers=1))[0]
    b = collect(make_loader(corrected, 4, 32, seed=1, backend="dali", num_workers=1))[0]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiles_cover_each_image_in_order(rxrx8, backend):
    dataset = open_dataset(rxrx8)
    loader = make_tile_loader(dataset, batch_size=3, crop_size=40, rank=1, world_size=2, backend=backend,
                              num_workers=1)
    batches = list(loader)
    ids = [i for b in batches for i in b["ids"]]
    assert ids[::4] == list(dataset.ids[1::2]) and len(ids) == 4 * len(dataset.ids[1::2])  # 2x2 tiles of 96 px
    first = batches[0]
    image = pillow_image(dataset, 1)
    for t in range(4):
        y, x = divmod(t, 2)
        assert first["tile"][t] == t
        np.testing.assert_array_equal(first["pixels"][t].numpy(), image[:, 40 * y:40 * y + 40, 40 * x:40 * x + 40])
