"""maefast's DALI operators (csrc/dali) against the reference crop + augmentation, for all 8 symmetries,
uint8 and uint16, PNG and TIFF, crop sizes that are and are not whole 16-byte blocks, with illumination
correction; an image that cannot be read gives its error (kind, file, reason) beside zeroed crops instead of
stopping the pipeline."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from maefast.data.decode import apply_illumination
from maefast.data.plan import apply_augment

pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from maefast.data import dali_plugin  # noqa: E402
from maefast.data.dali_backend import _encode, decode_error  # noqa: E402

FLAGS = np.array([[t, v, h] for t in (0, 1) for v in (0, 1) for h in (0, 1)], np.uint8)
DALI_TYPES = {np.uint8: types.UINT8, np.uint16: types.UINT16}


def run_op(op, columns, **options):
    """Runs one batch of `columns` (lists of per-sample arrays) through fn.<op>; returns (crops, errors):
    numpy crops per sample, and per sample None or the error dict."""
    dali_plugin.load()

    @pipeline_def(batch_size=len(columns[0]), num_threads=2, device_id=None, exec_dynamic=True)
    def pipeline():
        inputs = fn.external_source(source=lambda: tuple(columns), num_outputs=len(columns), batch=True)
        return tuple(getattr(fn, op)(*inputs, **options))

    pipe = pipeline()
    pipe.build()
    crops, errors = pipe.run()
    return [np.array(sample) for sample in crops], [decode_error(errors.at(i)) for i in range(len(columns[0]))]


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
        rows.append(np.array([row], np.int64))
        ys, xs = rng.integers(0, 70 - size + 1, 8), rng.integers(0, 90 - size + 1, 8)
        anchors.append(np.stack([ys, xs], 1).astype(np.int32))
        flags.append(FLAGS.copy())
    paths = [_encode(str(tmp_path / "shard.npy"))] * 3
    out, errors = run_op("maefast_packed_crops", [paths, rows, anchors, flags], crop_size=size, channels=channels,
                         dtype=DALI_TYPES[dtype], augment=True, image_shape=[4, 70, 90])
    assert errors == [None] * 3
    for sample, row, anchor, flag in zip(out, rows, anchors, flags):
        assert sample.dtype == dtype and sample.shape == (8, 3, size, size)
        np.testing.assert_array_equal(sample, expected_crops(shard[row[0]][channels], anchor, flag, size))


def write_channel(path, image, kind):
    if kind == "png":
        Image.fromarray(image).save(path)
    else:
        tifffile.imwrite(path, image, compression="zlib", predictor=True, rowsperstrip=7)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_image_crops_all_symmetries(tmp_path, dtype, kind):
    rng = np.random.default_rng(1)
    size, images = 32, []
    files = [[], []]  # two channels
    for i in range(3):
        image = rng.integers(0, np.iinfo(dtype).max, (2, 60, 75), dtype=dtype)
        images.append(image)
        for c in range(2):
            path = tmp_path / f"image{i}_w{c}.{kind}"
            write_channel(path, image[c], kind)
            files[c].append(_encode(str(path)))
    anchors = [np.stack([rng.integers(0, 60 - size + 1, 8), rng.integers(0, 75 - size + 1, 8)], 1).astype(np.int32)
               for _ in images]
    out, errors = run_op("maefast_image_crops", [*files, anchors, [FLAGS] * 3], crop_size=size, channels=2,
                         dtype=DALI_TYPES[dtype], augment=True, height=60, width=75, max_ratio=1100.0)
    assert errors == [None] * 3
    for sample, image, anchor in zip(out, images, anchors):
        np.testing.assert_array_equal(sample, expected_crops(image, anchor, FLAGS, size))


def test_image_crops_with_illumination(tmp_path):
    """The operator's correction is the reference's, pixel for pixel (float32, rounding, clipping)."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 65535, (40, 50), dtype=np.uint16)
    function = rng.uniform(0.2, 3.0, (40, 50))  # float64 on disk, float32 in the computation
    tifffile.imwrite(tmp_path / "image.tiff", image)
    np.save(tmp_path / "illum.npy", function)
    anchors = [np.array([[0, 0], [3, 9]], np.int32)]
    out, errors = run_op("maefast_image_crops", [[_encode(str(tmp_path / "image.tiff"))],
                                                 [_encode(str(tmp_path / "illum.npy"))], anchors],
                         crop_size=30, channels=1, dtype=types.UINT16, height=40, width=50, max_ratio=1100.0,
                         illumination=True)
    corrected = apply_illumination(image, function.astype(np.float32))[None]
    assert errors == [None] and (corrected != image).mean() > 0.9
    np.testing.assert_array_equal(out[0], expected_crops(corrected, anchors[0], np.zeros((2, 3), bool), 30))


def test_errors_name_the_file(tmp_path):
    """Each image's error comes out beside the others' crops; its own crops are zeros."""
    image = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) + 1
    Image.fromarray(image).save(tmp_path / "sixteen.png")
    anchors = [np.zeros((1, 2), np.int32)] * 2
    declared = dict(crop_size=8, channels=1, height=40, width=40, max_ratio=1100.0)
    good = _encode(str(tmp_path / "sixteen.png"))

    def run(path, **options):
        return run_op("maefast_image_crops", [[_encode(str(path)), good], anchors], **{**declared, **options})

    crops, errors = run(tmp_path / "missing.png", dtype=types.UINT16)
    assert errors == [dict(id=None, path=str(tmp_path / "missing.png"), reason="missing file", kind="missing"), None]
    assert not crops[0].any() and np.array_equal(crops[1][0, 0], image[:8, :8])
    _, errors = run(tmp_path / "sixteen.png", dtype=types.UINT8)
    assert errors[0]["kind"] == "format" and errors[0]["reason"] == (
        "expected 40x40 uint8, one page, found 40x40 uint16")
    _, errors = run(tmp_path / "sixteen.png", dtype=types.UINT16, height=30)
    assert errors[0]["reason"] == "expected 30x40 uint16, one page, found 40x40 uint16"
    with pytest.raises(ValueError, match="lies outside the 40x40 image"):  # a plan's bug stops the pipeline
        run_op("maefast_image_crops", [[good], [np.array([[35, 0]], np.int32)]], dtype=types.UINT16, **declared)


def test_image_crops_check_headers(tmp_path):
    good = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20)
    files = {"eight.tiff": good.astype(np.uint8), "rgb.tiff": np.stack([good] * 3, axis=-1),
             "wide.tiff": np.zeros((30, 21), np.uint16)}
    for name, array in files.items():
        tifffile.imwrite(tmp_path / name, array)
    tifffile.imwrite(tmp_path / "pages.tiff", np.stack([good] * 3), photometric="minisblack")
    tifffile.imwrite(tmp_path / "planar.tiff", np.stack([good] * 3), photometric="rgb", planarconfig="separate")
    found = {"eight.tiff": "30x20 uint8", "pages.tiff": "30x20 uint16, 3 pages", "rgb.tiff": "30x20x3 uint16",
             "planar.tiff": "30x20x3 uint16", "wide.tiff": "30x21 uint16"}
    names = sorted(found)
    _, errors = run_op("maefast_image_crops", [[_encode(str(tmp_path / n)) for n in names],
                                               [np.zeros((1, 2), np.int32)] * len(names)],
                       crop_size=8, channels=1, dtype=types.UINT16, height=30, width=20, max_ratio=1100.0)
    assert [e["reason"] for e in errors] == [f"expected 30x20 uint16, one page, found {found[n]}" for n in names]
    assert {e["kind"] for e in errors} == {"format"}


def test_packed_crops_refuse_another_image_shape(tmp_path):
    np.save(tmp_path / "shard.npy", np.zeros((2, 3, 50, 60), np.uint8))
    columns = [[_encode(str(tmp_path / "shard.npy"))], [np.array([0], np.int64)], [np.zeros((1, 2), np.int32)]]
    out, errors = run_op("maefast_packed_crops", columns, crop_size=8, channels=[0], dtype=types.UINT8,
                         image_shape=[3, 50, 60])
    assert out[0].shape == (1, 1, 8, 8) and errors == [None]
    _, errors = run_op("maefast_packed_crops", columns, crop_size=8, channels=[0], dtype=types.UINT8,
                       image_shape=[3, 40, 60])
    assert errors[0]["reason"] == "expected a shard of (n, 3, 40, 60) uint8 images, found (2, 3, 50, 60) uint8"
    columns[1] = [np.array([2**32 + 1], np.int64)]  # a row beyond any shard, and beyond 32 bits
    _, errors = run_op("maefast_packed_crops", columns, crop_size=8, channels=[0], dtype=types.UINT8,
                       image_shape=[3, 50, 60])
    assert errors[0] == dict(id=None, path=str(tmp_path / "shard.npy"), kind="format",
                             reason="the index names row 4294967297, the shard holds 2 images")
