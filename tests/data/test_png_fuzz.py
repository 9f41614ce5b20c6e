"""The PNG decoder's fuzz harness (csrc/fuzz/fuzz_png.cc) built with AddressSanitizer and UBSan: a short
deterministic run of mutated and truncated PNGs (8 and 16 bit, every row filter, stored / fixed / dynamic
deflate blocks, split image data). Every input must decode to what zlib decodes, or raise; no crash or
out-of-bounds access. The decodable mutants are then compared with Pillow, and the saved mutants (decoded
and refused) go through every loader path (PyTorch, DALI, data check), which must agree on each.

The long run: python -m tests.data.test_png_fuzz --iterations 5000000 [--seed 1]  (from the repository root)
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maefast import _C
from tests.data.test_png_decoder import encode_png, textured

ROOT = Path(__file__).resolve().parents[2]

HARNESS = ROOT / "csrc" / "fuzz" / "fuzz_png.cc"
CI_ITERATIONS = 40_000
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-D_GLIBCXX_SANITIZE_VECTOR"]


def compiler() -> str | None:
    name = os.environ.get("CXX", "c++")
    return name if shutil.which(name) else None


def build_harness(folder: Path) -> Path:
    binary = folder / "fuzz_png"
    command = [compiler(), "-std=c++17", "-O1", "-g", *SANITIZE, str(HARNESS), "-lz", "-o", str(binary)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"building the fuzz harness failed: {' '.join(command)}\n{result.stderr[-4000:]}"
    return binary


def write_seeds(folder: Path) -> Path:
    """Small PNGs of every kind the decoder takes: both depths, every filter (mixed and alone), every
    block kind (stored, fixed, dynamic, run-length), one to three IDAT chunks; plus Pillow's own files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = 0
    for dtype in (np.uint8, np.uint16):
        for level, strategy in [(0, 0), (1, 0), (6, 0), (9, 0), (6, zlib.Z_FIXED), (6, zlib.Z_RLE)]:
            for height, width in [(1, 1), (5, 7), (16, 23), (40, 33)]:
                image = textured(rng, height, width, dtype)
                data = encode_png(image, rng.integers(0, 5, height), level, int(rng.integers(1, 4)), strategy)
                (folder / f"seed-{count:03d}.png").write_bytes(data)
                count += 1
        for kind in range(5):
            image = textured(rng, 12, 17, dtype)
            (folder / f"seed-{count:03d}.png").write_bytes(encode_png(image, np.full(12, kind)))
            count += 1
        buffer = io.BytesIO()
        Image.fromarray(textured(rng, 30, 41, dtype)).save(buffer, format="PNG", optimize=True)
        (folder / f"seed-{count:03d}.png").write_bytes(buffer.getvalue())
        count += 1
    return folder


def run_harness(binary: Path, seeds: Path, iterations: int, seed: int, save: Path, timeout: float) -> dict:
    save.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1")
    result = subprocess.run([str(binary), str(seeds), str(iterations), str(seed), str(save)], capture_output=True,
                            text=True, timeout=timeout, env=environment)
    assert result.returncode == 0, f"the fuzz harness failed (exit {result.returncode}):\n{result.stderr[-6000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler (CXX or c++) to build the fuzz harness with")
def test_fuzz_png_decoder_briefly(tmp_path):
    binary = build_harness(tmp_path)
    counts = run_harness(binary, write_seeds(tmp_path / "seeds"), CI_ITERATIONS, seed=7, save=tmp_path / "decoded",
                         timeout=120)
    assert counts["inputs"] == CI_ITERATIONS and counts["failures"] == 0
    # the mutants must reach the pixel comparison, not only the error paths
    assert counts["decoded"] > CI_ITERATIONS // 20, counts
    assert counts["slowest_input_s"] < 5.0, counts  # a hang or a quadratic case, not a busy machine
    saved = sorted((tmp_path / "decoded").glob("decoded-*.png"))
    assert len(saved) >= 50
    for path in saved:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            np.testing.assert_array_equal(_C.decode_png(data), np.asarray(image), err_msg=str(path))
    refused = sorted((tmp_path / "decoded").glob("refused-*.png"))
    assert len(refused) >= 50
    read, refusals = parity_run(saved + refused, tmp_path / "parity")
    assert read >= 40 and refusals >= 50, (read, refusals)


def parity_run(files: list[Path], folder: Path) -> tuple[int, int]:
    """The files through every loader path (tests/data/test_parity.py): one screen per image kind (height,
    width, dtype) that at least 3 files share; the rest (mutated sizes, headers that do not parse) join the
    largest, where they are refused for not being its kind. Returns (images read, images refused)."""
    pytest.importorskip("nvidia.dali")
    from tests.data.crafted import rxrx_screen
    from tests.data.test_parity import read_by_every_path
    groups = {}
    for path in files:
        try:
            height, width, _, dtype, _, _ = _C.image_header(str(path))
            kind = (height, width, dtype) if dtype in ("uint8", "uint16") and height * width <= 1 << 16 else None
        except _C.DecodeError:
            kind = None
        groups.setdefault(kind, []).append(path.read_bytes())
    others = groups.pop(None, [])
    largest = max(groups, key=lambda kind: len(groups[kind]))
    for kind in [k for k in groups if len(groups[k]) < 3 and k != largest]:
        others += groups.pop(kind)
    groups[largest] += others
    read = refused = 0
    for number, (kind, contents) in enumerate(groups.items()):
        outcome, _ = read_by_every_path(rxrx_screen(folder / f"kind{number}", contents), crop=min(kind[:2]))
        read += sum(result[0] == "read" for result in outcome.values())
        refused += sum(result[0] == "refused" for result in outcome.values())
    return read, refused


def main() -> None:
    parser = argparse.ArgumentParser(description="The long run of the PNG decoder's fuzz harness")
    parser.add_argument("--iterations", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", default=None, help="folder for the harness, seeds and saved inputs")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="fuzz_png_"))
    folder.mkdir(parents=True, exist_ok=True)
    binary = build_harness(folder)
    print(json.dumps(run_harness(binary, write_seeds(folder / "seeds"), args.iterations, args.seed,
                                 folder / "saved", timeout=None)))


if __name__ == "__main__":
    main()
