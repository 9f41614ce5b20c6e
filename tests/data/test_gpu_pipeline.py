"""The GPU variant of the DALI loader (maefast.data.dali_graph), tested where it runs and where it cannot.

On any machine (DALI runs CPU pipelines without a GPU): the GPU pipeline's graph built with every operator on the
host (GPU_GRAPH_ON_CPU) gives the CPU pipeline's and the PyTorch loader's pixels, for every source (PNG, TIFF with
illumination functions, packed shards, JPEG, JPEG 2000 lossless with illumination functions and lossy, RxRx3-core's
parquet shards of JPEG 2000 and of PNG images), for training crops with all 8 flips / rotations and for embedding
tiles; and the GPU pipeline's graph, read without being built, runs each operator where it belongs: the readers and
checks on the host, the decoder "mixed", the crops, flips, stacking and the corrected integer cast on the GPU.

With CUDA (skipped here): the GPU pipeline gives the CPU pipeline's pixels (exactly on lossless sources), hands its
batches to torch without a copy, and they stay intact while the host runs ahead of the GPU.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from maefast.data import make_loader, make_tile_loader, open_dataset
from maefast.data.packed import pack_dataset
from maefast.data.plan import TilePlan, TrainPlan
from maefast.data.rxrx3_core_write import write_rxrx3_core
from maefast.data.torch_backend import ImageReader
from tests.data.crafted import jump_channels_screen

pytest.importorskip("nvidia.dali")
from maefast.data.dali_backend import DaliBackend  # noqa: E402
from maefast.data.dali_graph import CPU_PIPELINE, GPU_GRAPH_ON_CPU, GPU_PIPELINE  # noqa: E402

CROP, CROPS, BATCH = 32, 4, 5
SOURCES = ["png16", "tiff16 illumination", "packed8", "jpeg8", "jpeg2000 16 illumination", "jpeg2000 8 lossy",
           "rxrx3-core jpeg2000 16", "rxrx3-core png8"]
LOSSY = {"jpeg8", "jpeg2000 8 lossy"}


def encoder(format: str, **options):
    def encode(plane: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format=format, **options)
        return buffer.getvalue()
    return encode


@pytest.fixture(scope="module")
def screens(rxrx8, rxrx16, jump16, tmp_path_factory):
    """Each source's data set: name -> (root, open_dataset options)."""
    root = tmp_path_factory.mktemp("gpu_pipeline")
    eight, sixteen = open_dataset(rxrx8), open_dataset(rxrx16)
    planes8 = np.stack([ImageReader(eight).read_image(row)[:3] for row in range(8)])
    planes16 = np.stack([ImageReader(sixteen).read_image(row) for row in range(8)])
    illumination = np.random.default_rng(0).uniform(0.5, 2.0, planes16.shape[1:])
    return {
        "png16": (rxrx16, {}),
        "tiff16 illumination": (jump16, {"illumination": "illum"}),
        "packed8": (pack_dataset(eight, root / "packed", shard_images=5, progress=False), {}),
        "rxrx3-core jpeg2000 16": (write_rxrx3_core(sixteen, root / "rxrx3_j2k", "jpeg2000", images_per_shard=20), {}),
        "rxrx3-core png8": (write_rxrx3_core(eight, root / "rxrx3_png", "png", images_per_shard=20), {}),
        "jpeg8": (jump_channels_screen(root / "jpeg", planes8, encoder("JPEG", quality=85)), {}),
        "jpeg2000 16 illumination": (jump_channels_screen(root / "j2k", planes16, encoder("JPEG2000"), illumination),
                                     {"illumination": "illum"}),
        "jpeg2000 8 lossy": (jump_channels_screen(root / "j2k_lossy", planes8, encoder(
            "JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[8])), {}),
    }


def dataset_of(screens, name):
    root, options = screens[name]
    return open_dataset(root, **options)


def train_batches(dataset):
    batches = list(TrainPlan(len(dataset), dataset.image_shape, BATCH, CROP, CROPS, seed=3).batches(0))
    assert len({tuple(flags) for batch in batches for flags in batch.augment.reshape(-1, 3)}) == 8
    return batches


def read(dataset, batches, augment: bool, **options) -> list[np.ndarray]:
    backend = DaliBackend(dataset, CROP, batches[0].anchors.shape[1], BATCH, augment, **options)
    return [pixels.cpu().numpy().copy() for _, pixels, _ in backend.run(batches)]


@pytest.mark.parametrize("name", SOURCES)
def test_gpu_graph_on_the_host_gives_the_cpu_pipelines_pixels(screens, name):
    dataset = dataset_of(screens, name)
    batches = train_batches(dataset)
    expected = [batch["pixels"].numpy() for batch in make_loader(dataset, BATCH, CROP, CROPS, seed=3,
                                                                 backend="torch", num_workers=0)]
    for placement in (CPU_PIPELINE, GPU_GRAPH_ON_CPU):
        got = read(dataset, batches, True, placement=placement)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, {placement}")
    tiles = list(TilePlan(len(dataset), dataset.image_shape, BATCH, CROP).batches())
    expected = [batch["pixels"].numpy() for batch in make_tile_loader(dataset, BATCH, CROP, backend="torch",
                                                                      num_workers=0)]
    for placement in (CPU_PIPELINE, GPU_GRAPH_ON_CPU):
        for a, b in zip(read(dataset, tiles, False, placement=placement), expected, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} tiles, {placement}")


def test_a_pipeline_reads_ahead_into_the_next_epoch_and_goes_on(screens):
    """Three epochs through one pipeline (it reads ahead into the next epoch instead of ending and being built
    again), with the PyTorch loader's pixels; a loader moved to another position builds a new one there."""
    dataset = dataset_of(screens, "packed8")
    loaders = [make_loader(dataset, BATCH, CROP, CROPS, seed=3, backend=backend, num_workers=0)
               for backend in ("torch", "dali")]
    pipelines = []
    for _ in range(3):
        expected, got = ([batch["pixels"].numpy().copy() for batch in loader] for loader in loaders)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        pipelines.append(loaders[1].backend._pipe)
    assert pipelines[0] is pipelines[1] is pipelines[2] is not None
    for loader in loaders:
        loader.load_state_dict({**loader.state_dict(), "epoch": 1, "step": 2})
    expected, got = ([batch["pixels"].numpy().copy() for batch in loader] for loader in loaders)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaders[1].backend._pipe is not pipelines[0]


READERS = {"MaefastPackedCrops", "MaefastImageCrops", "MaefastDecodedCrops", "MaefastCompressedImage",
           "MaefastIllumination"}
# what may stay on the host in a GPU pipeline: the feed, maefast's readers and checks, and the per-sample arguments
# (each crop's flags, an illumination function's shape before it moves)
HOST = READERS | {"ExternalSource", "Cast", "_TensorSubscript", "ExpandDims"}


@pytest.mark.parametrize("name", SOURCES)
def test_the_gpu_pipeline_runs_each_operator_where_it_belongs(screens, name):
    dataset = dataset_of(screens, name)
    batches = train_batches(dataset)
    gpu_backend = DaliBackend(dataset, CROP, CROPS, BATCH, True, placement=GPU_PIPELINE)
    operators = set(gpu_backend.operators(batches))
    on = {device: {op for op, where in operators if where == device} for device in ("cpu", "gpu", "mixed")}
    assert on["cpu"] <= HOST, on["cpu"] - HOST
    assert {"Flip", "Transpose", "Stack", "_conditional__Split", "_conditional__Merge"} <= on["gpu"]
    # JPEG / JPEG 2000 files and RxRx3-core's JPEG 2000 bytes decoded on the GPU; RxRx3-core's PNG on the host
    assert (gpu_backend.source.kind == "compressed") == (dataset.compressed or name == "rxrx3-core jpeg2000 16")
    if gpu_backend.source.kind == "compressed":
        assert on["mixed"] == {"decoders__Image"} and {"Slice", "Cat"} <= on["gpu"]
        assert "MaefastCompressedImage" in on["cpu"]
        if dataset.illumination == "illum":  # divided, rounded, clipped and cast back to integers on the GPU
            assert {"_ArithmeticGenericOp", "Cast"} <= on["gpu"] and "MaefastIllumination" in on["cpu"]
    else:
        assert not on["mixed"] and on["cpu"] & READERS
    cpu_backend = DaliBackend(dataset, CROP, CROPS, BATCH, True)
    cpu = set(cpu_backend.operators(batches))
    assert {where for _, where in cpu} == {"cpu"}
    if cpu_backend.source.kind != "compressed":  # maefast's operators flip and rotate in their copy: no DALI one does
        assert not {"Flip", "Transpose"} & {op for op, _ in cpu}


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU pipeline runs only with CUDA")


@cuda
@pytest.mark.parametrize("name", SOURCES)
def test_gpu_pipeline_gives_the_cpu_pipelines_pixels_on_cuda(screens, name):
    dataset = dataset_of(screens, name)
    batches = train_batches(dataset)
    expected = read(dataset, batches, True)
    got = read(dataset, batches, True, device=torch.device("cuda"))
    for a, b in zip(got, expected, strict=True):
        if name in LOSSY:  # nvJPEG's / nvJPEG2000's inverse transforms round otherwise than libjpeg-turbo / OpenJPEG
            difference = np.abs(a.astype(np.int64) - b.astype(np.int64)).max()
            print(f"{name}: GPU against CPU decoding, largest difference {difference}")
            assert difference <= 2
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


@cuda
@pytest.mark.parametrize("name", ["png16", "packed8"])
def test_the_pytorch_loader_copies_on_its_own_stream_and_gives_the_same_pixels_on_cuda(screens, name):
    dataset = dataset_of(screens, name)
    loaders = [make_loader(dataset, BATCH, CROP, CROPS, seed=3, backend="torch", num_workers=1, device=device)
               for device in ("cpu", "cuda")]
    expected = [batch["pixels"].numpy() for batch in loaders[0]]
    sums = []
    for batch in loaders[1]:
        torch.cuda._sleep(20_000_000)  # the consumer's stream lags behind the copies
        sums.append(batch["pixels"].double().sum())
    torch.cuda.synchronize()
    assert [float(s) for s in sums] == [p.astype(np.float64).sum() for p in expected]


@cuda
def test_gpu_batches_are_handed_over_without_a_copy_and_survive_a_host_running_ahead_on_cuda(screens):
    dataset = dataset_of(screens, "png16")
    batches = train_batches(dataset) * 4
    expected = [p.astype(np.float64).sum() for p in read(dataset, batches, True)]
    backend = DaliBackend(dataset, CROP, CROPS, BATCH, True, device=torch.device("cuda"), prefetch=3)
    sums = []
    for _, pixels, _ in backend.run(batches):
        outputs = backend.handover.held[-1][0]
        assert pixels.is_cuda and pixels.data_ptr() == outputs.as_tensor().data_ptr()  # DALI's buffer itself
        torch.cuda._sleep(20_000_000)  # the GPU lags: what reads this batch runs long after the host moved on
        sums.append(pixels.double().sum())
        del pixels, outputs
    torch.cuda.synchronize()
    assert [float(s) for s in sums] == expected


def test_rxrx3_core_gpu_graph_checks_jpeg2000_bytes_before_its_decoder_and_names_them_alike(tmp_path):
    """RxRx3-core's JPEG 2000 bytes in the GPU pipeline's graph (run on the host): checked by maefast's operator
    (csrc/decode/jpeg2000.h, the parser of every path) before DALI's decoder sees them, refused or skipped with
    the PyTorch loader's reasons and paths (shard#row); one that passes the checks but that the decoder fails on
    is named with the host decoder's reason; the others give the PyTorch loader's pixels."""
    from tests.data.crafted import jpeg2000_bytes, jpeg2000_claiming, rxrx3_core_screen, textured_image
    rng = np.random.default_rng(7)
    image = textured_image(rng, (CROP, CROP), np.uint8)
    jp2, j2k = jpeg2000_bytes(image), jpeg2000_bytes(image, codecformat="j2k")
    cod = jp2.index(b"\xff\x52", jp2.index(b"\xff\x4f\xff\x51"))
    files = [jpeg2000_bytes(textured_image(rng, (CROP, CROP), np.uint8)) for _ in range(3)] + [
        j2k, jpeg2000_claiming(jp2, 20000, 20000), jp2[:len(jp2) // 2], j2k[:-2],
        jp2[:cod + 9] + bytes([40]) + jp2[cod + 10:],  # 40 decomposition levels: passes the checks, not OpenJPEG
        b"GIF89a" + bytes(100)]
    dataset = open_dataset(rxrx3_core_screen(tmp_path / "core", files))
    tiles = list(TilePlan(len(dataset), dataset.image_shape, BATCH, CROP).batches())
    outcomes = {}
    for name, run in (("torch", None), ("cpu", CPU_PIPELINE), ("gpu graph", GPU_GRAPH_ON_CPU)):
        if run is None:
            loader = make_tile_loader(dataset, BATCH, CROP, backend="torch", on_error="skip", num_workers=0)
            read_ = [(batch["ids"], batch["pixels"].numpy()) for batch in loader]
            skipped = loader.skipped
        else:
            backend = DaliBackend(dataset, CROP, 1, BATCH, False, on_error="skip", placement=run)
            assert backend.source.kind == ("compressed" if run is GPU_GRAPH_ON_CPU else "decoded")
            read_, skipped = [], []
            for batch, pixels, refused in backend.run(tiles):
                read_.append(([dataset.ids[row] for row in batch.images], pixels.numpy().copy()))
                skipped += refused
        outcomes[name] = ({i: p for ids, pixels in read_ for i, p in zip(ids, pixels)},
                          sorted((s["id"], s["path"], s["kind"], s["reason"]) for s in skipped))
    pixels, refusals = outcomes["torch"]
    assert len(pixels) == 4 and len(refusals) == 5
    assert any("truncated JPEG 2000 codestream (no end-of-codestream marker)" in r[3] for r in refusals)
    assert any(r[3].startswith("corrupt JPEG 2000 image (OpenJPEG") for r in refusals)
    for name in ("cpu", "gpu graph"):
        got_pixels, got_refusals = outcomes[name]
        assert got_refusals == refusals, name
        assert sorted(got_pixels) == sorted(pixels), name
        for image_id, expected in pixels.items():
            np.testing.assert_array_equal(got_pixels[image_id], expected, err_msg=f"{name} {image_id}")
