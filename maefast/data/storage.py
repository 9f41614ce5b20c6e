"""Data on object storage (s3://, gs://, any fsspec URL): whole objects through a bounded local cache.

A data set whose root is a URL (`s3://bucket/screen_packed`) is read through fsspec (s3fs, gcsfs, ...):
its metadata (manifest.json, index.parquet) straight from the store, its data objects (packed shards,
per-channel image files) as local copies in a cache folder, which every loader and decoder then reads like
any local file (a packed shard is memory-mapped, so a crop still reads only its bytes). The cache is
bounded: after a download, the least recently used objects are removed until it holds at most its budget.
The loader reads ahead: while a step's batch is decoded, the objects of the next steps are downloaded in
the background (maefast.data.loader). Objects are taken to be immutable (a cached copy is not compared
with the store again): write a changed data set under a new prefix.

A transient failure (a dropped connection, a timeout, a 5xx answer) is retried with exponential backoff
and jitter; a permanent one (the object does not exist, access is denied) or a transient one that outlasts
the retries raises StorageError naming the object. Where the store is and how to sign in is fsspec's
configuration (environment variables such as AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL and AWS_ACCESS_KEY_ID,
or fsspec's config files); the cache and the retries read the environment of every process, loader workers
included:
  MAEFAST_CACHE_DIR     the cache folder (default ~/.cache/maefast/objects)
  MAEFAST_CACHE_GB      its budget in GB (default 50)
  MAEFAST_RETRIES       attempts after the first on a transient failure (default 5)
  MAEFAST_BACKOFF_S     the first wait in seconds, doubled at each retry (default 0.5)
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from maefast.errors import MissingDependency, UserInputError, installed
from maefast.io import read_json, read_table


class StorageError(UserInputError, OSError):
    """An object that cannot be read: missing (kind "missing"), refused or failing past the retries
    ("unreadable"). Names the object."""

    def __init__(self, url: str, reason: str, kind: str = "unreadable"):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.kind = url, reason, kind


def is_remote(path) -> bool:
    """Whether `path` is a URL for fsspec (s3://, gs://, ...) rather than a local path (file:// is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *(str(part).strip("/") for part in parts)])


def located(folder, *parts) -> Path | str:
    """A path under `folder`: a Path under a local folder, a URL under a URL prefix."""
    return join(folder, *parts) if is_remote(folder) else Path(folder).joinpath(*parts)


def absolute(path) -> str:
    """A local path resolved (the form every path of a table takes), or a URL as it is."""
    return str(path) if is_remote(path) else Path(path).resolve().as_posix()


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0]


def parent_of(url: str) -> str:
    """The prefix a URL's object is under (its "folder")."""
    return url.rstrip("/").rpartition("/")[0]


def normalized(url: str) -> str:
    """`url` with "." and ".." segments of its key resolved, as a store would not (a key may hold them)."""
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    return f"{scheme}://{bucket}/{key}".rstrip("/")


@cache
def filesystem(protocol: str):
    """The fsspec file system of a URL scheme, configured from fsspec's environment and config files."""
    if not installed("fsspec"):
        raise MissingDependency("data on object storage needs fsspec and the store's driver: "
                                "python -m pip install \"maefast[storage]\" (s3fs), or gcsfs for gs://")
    import fsspec
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as error:
        raise MissingDependency(f"{protocol}:// needs its fsspec driver (s3fs for s3://, gcsfs for gs://): "
                                f"{error}") from None


def transient_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "try again": connection and timeout errors, and the stores' service errors."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    if installed("botocore"):
        from botocore.exceptions import BotoCoreError, ClientError
        errors += [BotoCoreError, ClientError]
    if installed("aiohttp"):
        from aiohttp import ClientError as HttpClientError
        errors.append(HttpClientError)
    return tuple(errors)


PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass
class RetryPolicy:
    retries: int = 5
    backoff_s: float = 0.5  # the first wait; then doubled each time, times a jitter in [0.5, 1.5)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        return cls(int(os.environ.get("MAEFAST_RETRIES", "5")), float(os.environ.get("MAEFAST_BACKOFF_S", "0.5")))

    def call(self, url: str, action):
        """action() with retries on transient failures; StorageError naming `url` when it cannot succeed."""
        transient = transient_errors()
        for attempt in range(self.retries + 1):
            try:
                return action()
            except PERMANENT as error:
                if isinstance(error, FileNotFoundError):
                    raise StorageError(url, "no such object", "missing") from None
                raise StorageError(url, f"refused ({type(error).__name__}: {error})") from None
            except transient as error:
                if attempt == self.retries:
                    raise StorageError(url, f"failed {attempt + 1} times, last with {type(error).__name__}: "
                                            f"{error}") from None
                self.sleep(self.backoff_s * 2 ** attempt * (0.5 + random.random()))


class ObjectCache:
    """Local copies of objects, at most `budget_bytes` of them (least recently used removed first).

    Several processes may share one folder (loader workers, ranks of a node): a download holds a lock on
    its object, so a second reader of the same object waits for it instead of downloading it again."""

    def __init__(self, folder, budget_bytes: int, policy: RetryPolicy):
        self.folder, self.budget_bytes, self.policy = Path(folder), budget_bytes, policy
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_environment(cls) -> ObjectCache:
        folder = os.environ.get("MAEFAST_CACHE_DIR") or Path.home() / ".cache" / "maefast" / "objects"
        budget = int(float(os.environ.get("MAEFAST_CACHE_GB", "50")) * 1e9)
        return cls(folder, budget, RetryPolicy.from_environment())

    def path_for(self, url: str) -> Path:
        """Where the copy of `url` lives: a hash of the URL, then its name (decoders go by the suffix)."""
        return self.folder / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}-{url.rsplit('/', 1)[-1]}"

    def local_path(self, url: str) -> Path:
        """A local copy of the object `url`, downloaded (with retries) unless the cache holds it."""
        target = self.path_for(url)
        if target.exists():
            os.utime(target)  # recently used
            return target
        with open(target.with_name(target.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():  # another process may have fetched it while this one waited
                self.download(url, target)
        self.evict(keep=target)
        return target

    def download(self, url: str, target: Path) -> None:
        protocol = protocol_of(url)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")

        def fetch():
            filesystem(protocol).get_file(url, str(temporary))

        try:
            self.policy.call(url, fetch)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def evict(self, keep: Path) -> None:
        """Removes the least recently used copies until the cache holds at most its budget (never `keep`)."""
        copies = []
        for path in self.folder.iterdir():
            if path.name.startswith(".") or path.name.endswith(".lock"):
                continue
            try:
                status = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            copies.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= self.budget_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)  # a reader holding it mapped keeps its pages until it lets go
            path.with_name(path.name + ".lock").unlink(missing_ok=True)
            total -= size

    def read_bytes(self, url: str) -> bytes:
        """The whole object, not cached (metadata, which may change between runs)."""
        return self.policy.call(url, lambda: filesystem(protocol_of(url)).cat_file(url))

    def exists(self, url: str) -> bool:
        return bool(self.policy.call(url, lambda: filesystem(protocol_of(url)).exists(url)))


@cache
def object_cache() -> ObjectCache:
    """This process's cache, set up from the environment (see the module docstring)."""
    return ObjectCache.from_environment()


def read_metadata_json(path):
    """A JSON file of a data set's metadata, local or on object storage (read whole, not cached: metadata may
    change between runs)."""
    return read_json(path, object_cache().read_bytes(str(path)) if is_remote(path) else None)


def read_metadata_table(path):
    """A table (.parquet, else CSV) of a data set's metadata, local or on object storage (not cached)."""
    return read_table(path, object_cache().read_bytes(str(path)) if is_remote(path) else None)


def is_file(path) -> bool:
    """Whether `path` (local, or a URL) is a file (an object)."""
    if not is_remote(path):
        return Path(path).is_file()
    url = str(path)
    return bool(object_cache().policy.call(url, lambda: filesystem(protocol_of(url)).isfile(url)))


def exists(path) -> bool:
    """Whether `path` is a file or folder (for a URL: an object, or a prefix that holds objects)."""
    return object_cache().exists(str(path)) if is_remote(path) else Path(path).exists()


def list_names(folder) -> list[str]:
    """The names of the entries of `folder` (local, or a URL prefix); none when it does not exist."""
    if not is_remote(folder):
        return os.listdir(folder) if os.path.isdir(folder) else []
    url = str(folder).rstrip("/")

    def listing():
        try:
            return filesystem(protocol_of(url)).ls(url, detail=False, refresh=True)
        except FileNotFoundError:
            return []

    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in object_cache().policy.call(url, listing)]


def object_size(url: str) -> int:
    """The size in bytes of the object `url` (StorageError naming it when it cannot be had)."""
    return int(object_cache().policy.call(url, lambda: filesystem(protocol_of(url)).size(url)))


def read_ranges(url: str, ranges: list[tuple[int, int]]) -> bytes:
    """The bytes of the object `url` at each (offset, length) of `ranges`, concatenated: ranged reads (one
    request per range, sent together), not a download of the object."""
    fs = filesystem(protocol_of(url))
    starts = [offset for offset, _ in ranges]
    ends = [offset + length for offset, length in ranges]

    def read():
        parts = fs.cat_ranges([url] * len(ranges), starts, ends, on_error="raise")
        return b"".join(parts)

    return object_cache().policy.call(url, read)


class ReadAhead:
    """Downloads objects into the cache in background threads, ahead of the loader that will read them."""

    def __init__(self, threads: int = 4):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="maefast-read-ahead")
        self.requested: set[str] = set()

    def fetch(self, urls) -> None:
        cache_ = object_cache()
        for url in urls:
            if url not in self.requested:
                self.requested.add(url)
                self.pool.submit(self._fetch_quietly, cache_, url)

    @staticmethod
    def _fetch_quietly(cache_: ObjectCache, url: str) -> None:
        try:
            cache_.local_path(url)
        except StorageError:
            pass  # the reader fetches it again and reports the error with the image it belongs to

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
