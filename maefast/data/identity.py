"""Which data a job read, from the content: a fingerprint of the files' bytes, compared when a job resumes.

The metadata table alone does not identify a screen: another screen with an identical table (the same plate
layout, re-imaged) would pass for it. So the fingerprint also covers every file a job reads (the selected
channels' files and illumination functions, or the packed shards): each file's size and bytes sampled at
evenly spaced places (all of a small file; of a large one its first and last 4 KiB and a block per MiB
between, at most 64 blocks), hashed in table order. The tail of a PNG or a Deflate TIFF holds the checksum of
all its image data, so a re-imaged channel changes the fingerprint wherever its pixels changed. Reading a
few blocks per file costs little next to decoding them all; the reads run in parallel.

A record written before the fingerprint had a content part (an older maefast) still resumes: the part it
lacks is not compared, and the caller says so.
"""
from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from maefast.records import changes

BLOCK = 4096
MAX_BLOCKS = 64
READERS = 16  # parallel reads: network file systems answer many requests at once


def sampled_bytes(path: str) -> tuple[int, bytes]:
    """(size, the sampled bytes) of one file; (-1, b"") when it cannot be opened as a regular file (the
    loaders refuse or skip it; the fingerprint records that it was not there)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1, b""
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return -1, b""
        size = info.st_size
        if size <= 2 * BLOCK:
            return size, os.pread(descriptor, size, 0)
        blocks = min(MAX_BLOCKS, 2 + size // (1 << 20))
        offsets = sorted({round(k * (size - BLOCK) / (blocks - 1)) for k in range(blocks)})
        return size, b"".join(os.pread(descriptor, BLOCK, offset) for offset in offsets)
    except OSError:
        return -1, b""
    finally:
        os.close(descriptor)


def content_fingerprint(paths: list[str]) -> dict:
    """{"files", "bytes", "sha256"} of the files at `paths` (in this order, each once)."""
    unique = list(dict.fromkeys(paths))
    digest, total = hashlib.sha256(), 0
    with ThreadPoolExecutor(READERS) as pool:
        for size, sample in pool.map(sampled_bytes, unique):
            digest.update(size.to_bytes(8, "little", signed=True))
            digest.update(sample)
            total += max(size, 0)
    return {"files": len(unique), "bytes": total, "sha256": digest.hexdigest()}


def compare_fingerprints(recorded: dict, current: dict) -> tuple[dict, str | None]:
    """(the differences between a recorded data fingerprint and the current one, as maefast.records.changes
    gives them, and a note when the record predates a part of the fingerprint: that part is not compared)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    missing = sorted(key for key in current if key not in recorded)
    differences = changes(recorded, {k: v for k, v in current.items() if k in recorded})
    note = None
    if missing:
        note = (f"the data's fingerprint was recorded without {', '.join(missing)} (by an older maefast): that "
                f"part is not compared this time, and is recorded from now on")
    return differences, note
