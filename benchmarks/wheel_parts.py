"""Wheels too large for one GPU call, carried in parts: DALI's 199 MB wheel and what it needs.

A call to the GPU machine carries at most 64 MiB of files, and the machine has no network. So the wheels are
packed into one tar archive, cut into parts of at most --part-mb MB in the GPU suite's wheels folder
(gpu_suite_wheels/, git-ignored; the suite's --wheels DIR, beside the small wheels it installs as they are), and
each call carries one part; the parts stay on the warm machine between calls, and the call that has them all
joins them (checking every part's and the archive's SHA-256), unpacks the wheels and installs them (the suite's
`dali` step). The steps: benchmarks/RESULTS.md, "Ready to measure".

    python -m benchmarks.wheel_parts split WHEEL [WHEEL ...] --out gpu_suite_wheels [--part-mb 48]
    python -m benchmarks.wheel_parts status gpu_suite_wheels          # which parts are here, which are missing
    python -m benchmarks.wheel_parts join gpu_suite_wheels --into DIR # the wheels, checked, into DIR
    python -m benchmarks.wheel_parts install gpu_suite_wheels         # join, then pip install (once: skipped when
                                                                      # nvidia.dali imports)
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"


class MissingParts(Exception):
    """Parts of the archive are not here (yet): carried by later calls."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(wheels: list[Path], out: Path, part_bytes: int) -> dict:
    """Packs `wheels` into one tar archive cut into parts of at most part_bytes in `out`, with a manifest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for wheel in wheels:
            archive.add(wheel, arcname=Path(wheel).name)
    data = buffer.getvalue()
    count = -(-len(data) // part_bytes)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for index in range(count):
        chunk = data[index * part_bytes:(index + 1) * part_bytes]
        name = f"wheels.tar.{index + 1:02d}-of-{count:02d}"
        (out / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": sha256(chunk)})
    manifest = {"wheels": [Path(w).name for w in wheels], "bytes": len(data), "sha256": sha256(data),
                "parts": parts}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def missing(folder: Path) -> list[str]:
    """The parts of the manifest in `folder` that are not there."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [part["name"] for part in manifest["parts"] if not (folder / part["name"]).is_file()]


def join(folder: Path, into: Path) -> list[Path]:
    """The wheels of the archive in `folder`, unpacked into `into` after every checksum matched."""
    manifest = json.loads((folder / MANIFEST).read_text())
    absent = missing(folder)
    if absent:
        raise MissingParts(f"{len(absent)} of {len(manifest['parts'])} parts are not in {folder}: "
                           f"{', '.join(absent)} (carry each to the GPU machine in a call of its own)")
    chunks = []
    for part in manifest["parts"]:
        chunk = (folder / part["name"]).read_bytes()
        if sha256(chunk) != part["sha256"]:
            raise ValueError(f"{folder / part['name']}: its SHA-256 differs from the manifest's (damaged in transfer; "
                             "carry it again)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if sha256(data) != manifest["sha256"]:
        raise ValueError(f"the joined archive's SHA-256 differs from the manifest's ({folder})")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        members = archive.getmembers()
        if sorted(m.name for m in members) != sorted(manifest["wheels"]) or not all(m.isfile() for m in members):
            raise ValueError(f"the archive holds {[m.name for m in members]}, the manifest names {manifest['wheels']}")
        archive.extractall(into, filter="data")
    return [into / name for name in manifest["wheels"]]


def install(folder: Path) -> int:
    """Joins the parts and installs the wheels with this interpreter's pip (no dependencies resolved, no index:
    the archive holds them all); 0 when DALI imports already, 1 when parts are missing."""
    import importlib.util
    import subprocess
    import tempfile
    if importlib.util.find_spec("nvidia.dali") is not None:
        print("nvidia.dali is installed already")
        return 0
    with tempfile.TemporaryDirectory(prefix="maefast_wheels_") as scratch:
        try:
            wheels = join(folder, Path(scratch))
        except MissingParts as error:
            print(error, file=sys.stderr)
            return 1
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", *map(str, wheels)]
        print(" ".join(command), flush=True)
        return subprocess.run(command).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("split", help="pack wheels into parts")
    cut.add_argument("wheels", nargs="+", type=Path)
    cut.add_argument("--out", type=Path, required=True)
    cut.add_argument("--part-mb", type=float, default=48.0, help="largest part, in MB (10^6 bytes)")
    status = commands.add_parser("status", help="the parts present and missing")
    status.add_argument("folder", type=Path)
    unpack = commands.add_parser("join", help="check the parts and unpack the wheels")
    unpack.add_argument("folder", type=Path)
    unpack.add_argument("--into", type=Path, required=True)
    setup = commands.add_parser("install", help="join the parts and pip install the wheels")
    setup.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "install":
        return install(args.folder)
    if args.command == "split":
        manifest = split(args.wheels, args.out, int(args.part_mb * 1e6))
        print(f"{len(manifest['parts'])} parts of at most {args.part_mb} MB in {args.out}: "
              f"{', '.join(p['name'] for p in manifest['parts'])}")
    elif args.command == "status":
        absent = missing(args.folder)
        print("all parts present" if not absent else f"missing: {', '.join(absent)}")
        return 0 if not absent else 1
    else:
        try:
            for wheel in join(args.folder, args.into):
                print(wheel)
        except MissingParts as error:
            print(error, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
