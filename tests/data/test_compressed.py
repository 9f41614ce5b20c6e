"""JPEG and JPEG 2000 channel images: maefast checks each file (header against the data set's spec and the table
of formats, whole to its end marker) before any decoder sees it, on every path (the PyTorch loader, the DALI
loader, `data check`), with crafted files. What one path accepts the others accept with the same pixels (those
of the host's decoders, the reference: Pillow for JPEG, imagecodecs for JPEG 2000); what one refuses the others
refuse with the same named reason, including
files that pass the checks and that the decoders still fail on (DALI's pipeline is rebuilt without them); and
a data set is of one family: a PNG among JPEG files is refused by name, as a JPEG among PNG files is."""
from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from maefast import _C
from maefast.data import ImageReadError, make_tile_loader, open_dataset
from maefast.data.decode import JPEG2000_SIGNATURES
from maefast.data.plan import TilePlan
from tests.data.crafted import jump_screen, pillow_bytes, rxrx_screen, textured_image
from tests.data.test_parity import SIZE, assert_cases, read_by_every_path, screen_of

pytest.importorskip("nvidia.dali")
from maefast.data.dali_backend import DaliBackend  # noqa: E402
from maefast.data.dali_graph import CPU_PIPELINE, GPU_GRAPH_ON_CPU  # noqa: E402


def reference(data: bytes) -> np.ndarray:
    if data.startswith(JPEG2000_SIGNATURES):
        return imagecodecs.jpeg2k_decode(data)
    return np.asarray(Image.open(io.BytesIO(data)))


def patched(data: bytes, marker: bytes, offset: int, values: bytes) -> bytes:
    """data with `values` written at `offset` bytes after the first `marker`."""
    out = bytearray(data)
    at = out.index(marker) + offset
    out[at:at + len(values)] = values
    return bytes(out)


def bad_huffman_table(data: bytes) -> bytes:
    """A JPEG whose first Huffman table counts more codes than there can be: the decoders stop on it."""
    return patched(data, b"\xff\xc4", 5, bytes([200] * 16))


def bad_coding_style(data: bytes) -> bytes:
    """A JPEG 2000 codestream with 40 wavelet decomposition levels (at most 32): the decoders stop on it."""
    return patched(data, b"\xff\x52", 9, bytes([40]))


def with_palette(jp2: bytes) -> bytes:
    """A JP2 file whose header box holds a palette (pclr) box."""
    header = jp2.index(b"jp2h") - 4
    length = int.from_bytes(jp2[header:header + 4], "big")
    box = (11).to_bytes(4, "big") + b"pclr" + bytes(3)
    return jp2[:header] + (length + len(box)).to_bytes(4, "big") + jp2[header + 4:header + length] + box + \
        jp2[header + length:]


def refusals_and_tiles(dataset, placement) -> dict:
    """{image id: its tiles, or (path, kind, reason) when refused} of a DALI pipeline with `placement`."""
    backend = DaliBackend(dataset, SIZE, 1, 5, False, on_error="skip", placement=placement)
    outcome = {}
    for batch, pixels, skipped in backend.run(list(TilePlan(len(dataset), dataset.image_shape, 5, SIZE).batches())):
        outcome.update({dataset.ids[row]: tile.numpy().copy() for row, tile in zip(batch.images, pixels)})
        outcome.update({failure["id"]: (failure["path"], failure["kind"], failure["reason"]) for failure in skipped})
    return outcome


def assert_the_gpu_graph_refuses_alike(root) -> None:
    """The GPU pipeline's graph (run on the host) reads and refuses each file as the CPU pipeline does: the
    checks run before its decoder ("mixed" on a GPU) sees the bytes, and a decoder's failure is named alike."""
    dataset = open_dataset(root)
    cpu, gpu_graph = (refusals_and_tiles(dataset, placement) for placement in (CPU_PIPELINE, GPU_GRAPH_ON_CPU))
    assert cpu.keys() == gpu_graph.keys() == set(dataset.ids)
    for image_id, expected in cpu.items():
        if isinstance(expected, tuple):
            assert gpu_graph[image_id] == expected
        else:
            np.testing.assert_array_equal(gpu_graph[image_id], expected, err_msg=image_id)


def test_jpeg_files(tmp_path):
    rng = np.random.default_rng(0)
    image = textured_image(rng, (SIZE, SIZE), np.uint8)
    clean = [pillow_bytes(textured_image(rng, (SIZE, SIZE), np.uint8), "JPEG", quality=90) for _ in range(4)]
    baseline = pillow_bytes(image, "JPEG", quality=90)
    progressive = pillow_bytes(image, "JPEG", quality=90, progressive=True)
    cut = len(baseline) // 2 + 100
    cases = {
        "baseline": (baseline, reference(baseline)),
        "progressive": (progressive, reference(progressive)),
        "zero padding after the end marker": (baseline + bytes(7), reference(baseline)),
        "JPEG 2000 among JPEG": (pillow_bytes(image, "JPEG2000", irreversible=False), image),
        "RGB": (pillow_bytes(np.stack([image] * 3, -1), "JPEG"),
                ("format", r"expected 32x32 uint8, one page, found 32x32x3 uint8")),
        "another size": (pillow_bytes(image[:, :24], "JPEG"),
                         ("format", r"expected 32x32 uint8, one page, found 32x24 uint8")),
        "12-bit": (patched(baseline, b"\xff\xc0", 4, bytes([12])),
                   ("format", r"expected 32x32 uint8, one page, found 32x32 uint12")),
        "lossless": (patched(baseline, b"\xff\xc0", 1, b"\xc3"),
                     ("format", r"JPEG process 3 \(lossless\) \(SOF3\) is not supported; maefast reads 0 \(baseline\), "
                                r"1 \(extended sequential\), 2 \(progressive\)")),
        "arithmetic-coded": (patched(baseline, b"\xff\xc0", 1, b"\xc9"),
                             ("format", r"JPEG process 9 \(arithmetic-coded sequential\) \(SOF9\) is not supported.*")),
        "height from a DNL marker": (patched(baseline, b"\xff\xc0", 5, bytes(2)),
                                     ("format", r"JPEG whose height a DNL marker gives is not supported")),
        "no end marker": (baseline[:-2], ("unreadable", r"truncated JPEG \(no end-of-image marker\)")),
        "cut in its image data": (baseline[:cut], ("unreadable", r"truncated JPEG \(no end-of-image marker\)")),
        "cut in its headers": (baseline[:300], ("unreadable", r"truncated JPEG \(.*\)")),
        "bad Huffman table": (bad_huffman_table(baseline),
                              ("unreadable", r"corrupt image data: the decoder failed \(.+\)")),
        "PNG among JPEG": (pillow_bytes(image), ("format", r"expected a JPEG or JPEG 2000 file, found a PNG file "
                                                           r"\(the data set's images are JPEG or JPEG 2000\)")),
        "text": (b"not an image at all", ("format", r"expected a JPEG or JPEG 2000 file")),
    }
    files, positions = screen_of(cases, clean)
    root = jump_screen(tmp_path / "jpeg", files)
    assert open_dataset(root).compressed
    outcome, _ = read_by_every_path(root)
    assert_cases(outcome, open_dataset(root), cases, positions)
    assert_the_gpu_graph_refuses_alike(root)


def test_jpeg2000_files(tmp_path):
    rng = np.random.default_rng(1)
    image = textured_image(rng, (SIZE, SIZE), np.uint16)
    clean = [pillow_bytes(textured_image(rng, (SIZE, SIZE), np.uint16), "JPEG2000", irreversible=False)
             for _ in range(4)]
    jp2 = pillow_bytes(image, "JPEG2000", irreversible=False)
    codestream = pillow_bytes(image, "JPEG2000", irreversible=False, no_jp2=True)
    lossy = pillow_bytes(image, "JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[6])
    # tiles one above the other: Pillow 13 writes 16-bit images split into tile columns wrongly (its own decoder
    # and DALI's read the same wrong pixels back)
    tiled = pillow_bytes(image, "JPEG2000", irreversible=False, tile_size=(SIZE, 16))
    siz = b"\xff\x51"  # SIZ: Lsiz, Rsiz, 8 sizes and offsets, Csiz, then the first component's Ssiz, XRsiz, YRsiz
    cases = {
        "JP2, lossless": (jp2, image),
        "raw codestream": (codestream, image),
        "lossy": (lossy, reference(lossy)),
        "tiled": (tiled, image),
        "zero padding after the end marker": (codestream + bytes(3), image),
        "8-bit": (pillow_bytes((image >> 8).astype(np.uint8), "JPEG2000"),
                  ("format", r"expected 32x32 uint16, one page, found 32x32 uint8")),
        # 12-bit samples decode to uint16 values below 4096 on every path (Pillow would scale them to 16 bits)
        "12-bit": (imagecodecs.jpeg2k_encode(image >> 4, level=0, codecformat="j2k", bitspersample=12), image >> 4),
        "7-bit": (patched(codestream, siz, 40, bytes([6])),
                  ("format", r"expected 32x32 uint16, one page, found 32x32 uint7")),
        "signed": (patched(codestream, siz, 40, bytes([0x80 | 15])),
                   ("format", r"expected 32x32 uint16, one page, found 32x32 int16")),
        "RGB": (pillow_bytes(np.stack([(image >> 8).astype(np.uint8)] * 3, -1), "JPEG2000"),
                ("format", r"expected 32x32 uint16, one page, found 32x32x3 uint8")),
        "subsampled": (patched(codestream, siz, 41, bytes([2])),
                       ("format", r"JPEG 2000 component subsampled 2x1; maefast reads images that are not "
                                  r"subsampled")),
        "palette": (with_palette(jp2), ("format", r"expected 32x32 uint16, one page, found 32x32 palette")),
        "JP2 cut short": (jp2[:-10], ("unreadable", r"truncated JP2 \(box 'jp2c' of \d+ bytes runs past the end of "
                                                    r"the file\)")),
        "codestream without its end marker": (codestream[:-2], ("unreadable", r"truncated JPEG 2000 codestream "
                                                                              r"\(no end-of-codestream marker\)")),
        "bad coding style": (bad_coding_style(codestream),
                             ("unreadable", r"corrupt JPEG 2000 image \(OpenJPEG: .+\)")),
        "TIFF among JPEG 2000": (pillow_bytes(image, "TIFF"),
                                 ("format", r"expected a JPEG or JPEG 2000 file, found a TIFF file.*")),
    }
    files, positions = screen_of(cases, clean)
    root = jump_screen(tmp_path / "jpeg2000", files)
    outcome, _ = read_by_every_path(root)
    assert_cases(outcome, open_dataset(root), cases, positions)
    assert_the_gpu_graph_refuses_alike(root)


def test_a_jpeg_among_png_files_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(2)
    images = [textured_image(rng, (SIZE, SIZE), np.uint8) for _ in range(6)]
    files = [pillow_bytes(image) for image in images]
    files[2] = pillow_bytes(images[2], "JPEG")
    root = rxrx_screen(tmp_path / "png", files)
    outcome, _ = read_by_every_path(root)
    refused = outcome[open_dataset(root).ids[2]]
    assert refused[2:] == ("format", "expected a PNG or TIFF file, found a JPEG file (the data set's images are PNG "
                                     "or TIFF)")


@pytest.mark.parametrize("height, width, itemsize", [(37, 53, 1), (20, 40000, 2)])  # 1 and 25 stored blocks
def test_the_stand_in_for_a_refused_file_is_a_png_of_zeros(height, width, itemsize):
    """What DALI's decoder is handed in place of a refused compressed file (its batch decodes on, its error is
    reported): a valid PNG of the data set's size and dtype, all zeros, as maefast and Pillow read it."""
    png = _C.blank_png(height, width, itemsize)
    for decoded in (_C.decode_png(png), reference(png)):
        assert decoded.shape == (height, width) and decoded.dtype == (np.uint8 if itemsize == 1 else np.uint16)
        assert not decoded.any()


@pytest.mark.parametrize("damage", [bad_huffman_table, lambda data: data[:-2]], ids=["decoder fails", "cut short"])
def test_raise_names_the_first_bad_compressed_image_on_both_loaders(tmp_path, damage):
    rng = np.random.default_rng(3)
    files = [pillow_bytes(textured_image(rng, (SIZE, SIZE), np.uint8), "JPEG") for _ in range(7)]
    files[3] = damage(files[3])
    dataset = open_dataset(jump_screen(tmp_path / "jpeg", files))
    for backend in ("torch", "dali"):
        loader = make_tile_loader(dataset, batch_size=2, crop_size=SIZE, backend=backend, num_workers=0)
        with pytest.raises(ImageReadError) as caught:
            list(loader)
        assert (caught.value.image_id, caught.value.kind) == (dataset.ids[3], "unreadable"), backend
