"""The GPU suite's compile caches as at most two archives of at most 16 MB, so that a later run starts warm.

    python -m benchmarks.cache_archive save CACHE_DIR OUT_DIR      # OUT_DIR/compile_cache.tar.gz.0 (and .1)
    python -m benchmarks.cache_archive restore FROM_DIR CACHE_DIR  # unpacks the parts found in FROM_DIR

The suite keeps inductor's and Triton's caches in one folder (gpu_suite.sh sets TORCHINDUCTOR_CACHE_DIR and
TRITON_CACHE_DIR under it). `save` packs it into one gzip'd tar stream cut into parts of `--part-mb` MB, at
most `--parts` of them: newest files first, each file's compressed size estimated, and the oldest files left
out when the whole would not fit (what this run did not write again). `restore` concatenates the parts in
order and unpacks them into the cache folder, keeping what it already holds; members with absolute paths or
`..` are refused, so nothing lands outside it. Both print one JSON line saying what they did.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import zlib
from pathlib import Path

PREFIX = "compile_cache.tar.gz"
TAR_OVERHEAD = 1024  # a member's header and padding, before compression


def _estimated(path: Path) -> int:
    return len(zlib.compress(path.read_bytes(), 6)) + TAR_OVERHEAD // 4


def _pack(cache: Path, files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path in files:
            archive.add(path, arcname=path.relative_to(cache).as_posix(), recursive=False)
    return buffer.getvalue()


def save(cache: Path, out: Path, parts: int = 2, part_mb: float = 16) -> dict:
    """Packs `cache` into out/compile_cache.tar.gz.0, .1, ... (stale parts removed); returns what it did."""
    limit = int(parts * part_mb * 2**20)
    files = sorted((p for p in cache.rglob("*") if p.is_file() and not p.is_symlink()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    chosen, total = [], 0
    for path in files:
        size = _estimated(path)
        if total + size > limit:
            break
        chosen.append(path)
        total += size
    data = _pack(cache, chosen)
    while len(data) > limit and chosen:  # the estimate was short: give up the oldest chosen files
        chosen = chosen[:min(len(chosen) * 9 // 10, len(chosen) - 1)]
        data = _pack(cache, chosen)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{PREFIX}.*"):
        stale.unlink()
    size = int(part_mb * 2**20)
    names = []
    for index, start in enumerate(range(0, len(data), size)):
        path = out / f"{PREFIX}.{index}"
        path.write_bytes(data[start:start + size])
        names.append(path.name)
    return {"action": "save", "parts": names, "bytes": len(data), "files": len(chosen),
            "left_out": len(files) - len(chosen)}


def restore(source: Path, cache: Path) -> dict:
    """Unpacks the parts in `source` into `cache`, keeping files it already has; returns what it did."""
    parts = sorted(source.glob(f"{PREFIX}.*"), key=lambda p: int(p.suffix[1:]))
    if not parts:
        return {"action": "restore", "parts": [], "files": 0, "note": f"no {PREFIX}.* in {source}"}
    data = b"".join(p.read_bytes() for p in parts)
    cache.mkdir(parents=True, exist_ok=True)
    restored = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            target = (cache / member.name).resolve()
            if not member.isfile() or Path(member.name).is_absolute() or ".." in Path(member.name).parts \
                    or not target.is_relative_to(cache.resolve()):
                raise ValueError(f"{parts[0]}: member {member.name!r} is not a file inside the cache")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            restored += 1
    return {"action": "restore", "parts": [p.name for p in parts], "files": restored}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", type=Path, help="save: the cache folder; restore: the folder with the parts")
    parser.add_argument("target", type=Path, help="save: where the parts go; restore: the cache folder")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--part-mb", type=float, default=16)
    args = parser.parse_args(argv)
    if args.action == "save":
        if not args.source.is_dir():
            print(json.dumps({"action": "save", "note": f"no cache folder {args.source}"}))
            return 0
        result = save(args.source, args.target, args.parts, args.part_mb)
    else:
        result = restore(args.source, args.target)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
