"""maefast's DALI operators (csrc/dali) against the reference crop + augmentation, for all 8 symmetries,
uint8 and uint16, crop sizes that are and are not whole 16-byte blocks; errors name the file."""

import numpy as np
import pytest
from PIL import Image

from maefast.data.plan import apply_augment

pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from maefast.data import dali_plugin  # noqa: E402
from maefast.data.dali_backend import _encode  # noqa: E402

FLAGS = np.array([[t, v, h] for t in (0, 1) for v in (0, 1) for h in (0, 1)], np.uint8)
DALI_TYPES = {np.uint8: types.UINT8, np.uint16: types.UINT16}


def run_op(op, columns, **options):
    """Runs one batch of `columns` (lists of per-sample arrays) through fn.<op>; returns numpy outputs."""
    dali_plugin.load()

    @pipeline_def(batch_size=len(columns[0]), num_threads=2, device_id=None, exec_dynamic=True)
    def pipeline():
        inputs = fn.external_source(source=lambda: tuple(columns), num_outputs=len(columns), batch=True)
        return getattr(fn, op)(*inputs, **options)

    pipe = pipeline()
    pipe.build()
    (out,) = pipe.run()
    return [np.array(sample) for sample in out]


def expected_crops(image, anchors, flags, size):
    """(K, C, size, size) from the reference augmentation of a (C, H, W) image."""
    return np.stack([apply_augment(image[:, y:y + size, x:x + size], *map(bool, f))
                     for (y, x), f in zip(anchors, flags)])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("size", [16, 24, 32])
def test_packed_crops_all_symmetries(tmp_path, dtype, size):
    rng = np.random.default_rng(size)
    shard = rng.integers(0, np.iinfo(dtype).max, (3, 4, 70, 90), dtype=dtype)
    np.save(tmp_path / "shard.npy", shard)
    channels = [2, 0, 3]
    rows, anchors, flags = [], [], []
    for row in (0, 2, 1):
        rows.append(np.array([row], np.int32))
        ys, xs = rng.integers(0, 70 - size + 1, 8), rng.integers(0, 90 - size + 1, 8)
        anchors.append(np.stack([ys, xs], 1).astype(np.int32))
        flags.append(FLAGS.copy())
    paths = [_encode(str(tmp_path / "shard.npy"))] * 3
    out = run_op("maefast_packed_crops", [paths, rows, anchors, flags], crop_size=size, channels=channels,
                 dtype=DALI_TYPES[dtype], augment=True, image_shape=[4, 70, 90])
    for sample, row, anchor, flag in zip(out, rows, anchors, flags):
        assert sample.dtype == dtype and sample.shape == (8, 3, size, size)
        np.testing.assert_array_equal(sample, expected_crops(shard[row[0]][channels], anchor, flag, size))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_crops_all_symmetries(tmp_path, dtype):
    rng = np.random.default_rng(1)
    size, images = 32, []
    files = [[], []]  # two channels
    for i in range(3):
        image = rng.integers(0, np.iinfo(dtype).max, (2, 60, 75), dtype=dtype)
        images.append(image)
        for c in range(2):
            path = tmp_path / f"image{i}_w{c}.png"
            Image.fromarray(image[c]).save(path)
            files[c].append(_encode(str(path)))
    anchors = [np.stack([rng.integers(0, 60 - size + 1, 8), rng.integers(0, 75 - size + 1, 8)], 1).astype(np.int32)
               for _ in images]
    out = run_op("maefast_png_crops", [*files, anchors, [FLAGS] * 3], crop_size=size, channels=2,
                 dtype=DALI_TYPES[dtype], augment=True, height=60, width=75)
    for sample, image, anchor in zip(out, images, anchors):
        np.testing.assert_array_equal(sample, expected_crops(image, anchor, FLAGS, size))


def test_errors_name_the_file(tmp_path):
    image = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)
    Image.fromarray(image).save(tmp_path / "sixteen.png")
    anchors = [np.zeros((1, 2), np.int32)]
    declared = dict(crop_size=8, channels=1, height=40, width=40)
    with pytest.raises(RuntimeError, match="missing.png: missing"):
        run_op("maefast_png_crops", [[_encode(str(tmp_path / "missing.png"))], anchors], dtype=types.UINT16, **declared)
    with pytest.raises(RuntimeError, match="sixteen.png: expected 40x40 uint8, one page, found 40x40 uint16"):
        run_op("maefast_png_crops", [[_encode(str(tmp_path / "sixteen.png"))], anchors], dtype=types.UINT8, **declared)
    with pytest.raises(RuntimeError, match="sixteen.png: expected 30x40 uint16, one page, found 40x40 uint16"):
        run_op("maefast_png_crops", [[_encode(str(tmp_path / "sixteen.png"))], anchors], dtype=types.UINT16,
               **dict(declared, height=30))
    with pytest.raises(RuntimeError, match="lies outside the 40x40 image"):
        run_op("maefast_png_crops", [[_encode(str(tmp_path / "sixteen.png"))], [np.array([[35, 0]], np.int32)]],
               dtype=types.UINT16, **declared)


def test_read_image_checks_headers(tmp_path):
    import tifffile
    good = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20)
    files = {"good.tiff": good, "eight.tiff": good.astype(np.uint8), "rgb.tiff": np.stack([good] * 3, axis=-1),
             "wide.tiff": np.zeros((30, 21), np.uint16)}
    for name, array in files.items():
        tifffile.imwrite(tmp_path / name, array)
    tifffile.imwrite(tmp_path / "pages.tiff", np.stack([good] * 3), photometric="minisblack")
    tifffile.imwrite(tmp_path / "planar.tiff", np.stack([good] * 3), photometric="rgb", planarconfig="separate")
    Image.fromarray(good).save(tmp_path / "good.png")

    def read(name, **options):
        return run_op("maefast_read_image", [[_encode(str(tmp_path / name))]], dtype=types.UINT16, height=30,
                      width=20, **options)[0]

    assert read("good.tiff").tobytes() == (tmp_path / "good.tiff").read_bytes()
    assert read("good.png").tobytes() == (tmp_path / "good.png").read_bytes()
    found = {"eight.tiff": "30x20 uint8", "pages.tiff": "30x20 uint16, 3 pages", "rgb.tiff": "30x20x3 uint16",
             "planar.tiff": "30x20x3 uint16", "wide.tiff": "30x21 uint16"}
    for name, what in found.items():
        with pytest.raises(RuntimeError, match=f"{name}: expected 30x20 uint16, one page, found {what}"):
            read(name)


def test_packed_crops_refuse_another_image_shape(tmp_path):
    np.save(tmp_path / "shard.npy", np.zeros((2, 3, 50, 60), np.uint8))
    columns = [[_encode(str(tmp_path / "shard.npy"))], [np.array([0], np.int32)], [np.zeros((1, 2), np.int32)]]
    out = run_op("maefast_packed_crops", columns, crop_size=8, channels=[0], dtype=types.UINT8, image_shape=[3, 50, 60])
    assert out[0].shape == (1, 1, 8, 8)
    with pytest.raises(RuntimeError, match=r"shard.npy: expected a shard of \(n, 3, 40, 60\) uint8 images, "
                                           r"found \(2, 3, 50, 60\)"):
        run_op("maefast_packed_crops", columns, crop_size=8, channels=[0], dtype=types.UINT8, image_shape=[3, 40, 60])
