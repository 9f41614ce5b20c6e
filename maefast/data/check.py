"""`maefast data check`: validate a dataset before a long job.

Checks the metadata (required columns, duplicate ids, the perturbation column) and decodes every channel
file of every image and every illumination function (missing, unreadable or truncated files, wrong sizes or
dtypes, formats outside the table), for RxRx3-core every channel image in its parquet shards, or for a packed
dataset every shard's header against the manifest and every index row against its shard. It reads with the
loaders' own readers (maefast.data.decode, maefast.data.rxrx3_core), so it reports exactly what they would
refuse, for the same reasons. Returns a CheckReport; nothing is fixed.
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from maefast.data import rxrx3_core
from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError, check_shard_row, read_channel, read_illumination, read_shard
from maefast.data.layouts import detect_layout, read_layout
from maefast.progress import Progress

KINDS = ("metadata", "duplicate id", "missing", "unreadable", "format")
CHUNK = 2000  # images decoded per round of the thread pool


@dataclass
class CheckReport:
    path: str
    layout: str = ""
    images: int = 0
    files: int = 0
    problems: list[dict] = field(default_factory=list)  # {kind, id, path, reason}

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict:
        return dict(Counter(p["kind"] for p in self.problems))

    def add(self, kind: str, reason: str, image_id=None, path=None) -> None:
        self.problems.append(dict(kind=kind, id=image_id, path=path, reason=reason))

    def text(self, examples: int = 10) -> str:
        lines = [f"{self.path}: {self.layout} layout, {self.images} images, {self.files} files checked"]
        if self.ok:
            return "\n".join(lines + ["no problems found"])
        lines.append("problems: " + ", ".join(f"{n} {k}" for k, n in self.counts().items()))
        for kind in KINDS:
            found = [p for p in self.problems if p["kind"] == kind]
            for p in found[:examples]:
                where = " ".join(str(x) for x in (p["id"], p["path"]) if x)
                lines.append(f"  {kind}: {where}: {p['reason']}")
            if len(found) > examples:
                lines.append(f"  ... and {len(found) - examples} more {kind}")
        return "\n".join(lines)


def check_dataset(path, layout: str = "auto", channels=None, illumination: str = "raw", workers: int = 2,
                  progress: bool = True, allow_outside_root: bool = False) -> CheckReport:
    path = Path(path)
    report = CheckReport(str(path))
    try:
        layout = detect_layout(path) if layout == "auto" else layout
        report.layout = layout
        dataset = read_layout(path, layout, illumination, allow_outside_root)
        if channels is not None:
            dataset = dataset.select_channels(channels)
    except (ValueError, FileNotFoundError, KeyError, ImageReadError) as error:
        report.add("metadata", str(error))
        return report
    report.images = len(dataset)
    table = dataset.table
    for image_id in table["id"][table["id"].duplicated()].unique():
        report.add("duplicate id", f"{(table['id'] == image_id).sum()} rows share this id", image_id)
    if table["perturbation"].isna().all():
        report.add("metadata", "no perturbation column (expected one of perturbation, gene, sirna, treatment, "
                               "Metadata_Perturbation, Metadata_Symbol, Metadata_JCP2022)")
    if layout == "packed":
        _check_shards(dataset, report)
    elif layout == rxrx3_core.LAYOUT:
        _check_encoded(dataset, report, workers, progress)
    else:
        _check_files(dataset, report, workers, progress)
    return report


def _check_files(dataset: Dataset, report: CheckReport, workers: int, progress: bool) -> None:
    table = dataset.table
    if dataset.illumination == "illum":
        for path in sorted({p for c in dataset.channels for p in table[f"illum_{c}"]}):
            try:
                read_illumination(path, dataset.spec)
            except ImageReadError as error:
                report.add(error.kind, error.reason, path=error.path)
    jobs = [(str(table.at[r, "id"]), table.at[r, f"file_{c}"]) for r in range(len(table)) for c in dataset.channels]
    _decode_all(jobs, lambda image_id, file: read_channel(file, image_id, dataset.spec), report, workers, progress)


def _check_encoded(dataset: Dataset, report: CheckReport, workers: int, progress: bool) -> None:
    """rxrx3-core: every selected channel's encoded image, in the shards' order (each row group read once)."""
    table, images = dataset.table, rxrx3_core.EncodedImages()
    jobs = sorted(((table.at[r, f"shard_{c}"], int(table.at[r, f"row_{c}"])), str(table.at[r, "id"]))
                  for r in range(len(table)) for c in dataset.channels)
    _decode_all([(image_id, where) for where, image_id in jobs],
                lambda image_id, where: images.decode(*where, image_id, dataset.spec), report, workers, progress)


def _decode_all(jobs: list, decode, report: CheckReport, workers: int, progress: bool) -> None:
    """Runs decode(image id, what to read) for every job on `workers` threads, reporting every refusal."""
    def check(job):
        try:
            decode(*job)
        except ImageReadError as error:
            return error
        return None

    with Progress("check", len(jobs), "files", bar=progress, silent=not progress) as shown:
        with ThreadPoolExecutor(workers) as pool:
            for begin in range(0, len(jobs), CHUNK):  # a chunk at a time: a future per image of a screen is a lot
                for done, error in enumerate(pool.map(check, jobs[begin:begin + CHUNK]), begin + 1):
                    report.files = done
                    if error is not None:
                        report.add(error.kind, error.reason, error.image_id, error.path)
                    shown.update(1)


def _check_shards(dataset: Dataset, report: CheckReport) -> None:
    table = dataset.table
    for shard_path, rows in table.groupby("shard", sort=True):
        report.files += 1
        try:
            shard = read_shard(shard_path, len(dataset.stored_channels), dataset.spec)
        except ImageReadError as error:
            report.add(error.kind, error.reason, path=error.path)
            continue
        for image_id, row in zip(rows["id"], rows["row"]):
            try:
                check_shard_row(shard_path, row, shard, str(image_id))
            except ImageReadError as error:
                report.add(error.kind, error.reason, error.image_id, error.path)
