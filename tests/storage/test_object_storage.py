"""Training and embedding from object storage: a real S3-compatible server (moto, server mode, 127.0.0.1) holding
a packed screen, read through fsspec / s3fs with maefast's bounded cache, read-ahead and retries."""
from __future__ import annotations

import os
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

import maefast
from maefast.data import make_loader, make_tile_loader, open_dataset
from maefast.data.decode import ImageReadError
from maefast.data.packed import pack_dataset
from maefast.data.rxrx3_core_write import write_rxrx3_core
from maefast.data.storage import ObjectCache, RetryPolicy, StorageError, filesystem, object_cache
from maefast.embedding.job import read_job
from maefast.train.config import load_config
from maefast.train.loop import Trainer
from tests.storage.s3_server import FaultyProxy, free_port

SHARD_IMAGES = 4
CORE_SHARD_IMAGES = 6  # sites per parquet shard of the RxRx3-core copy: several shards
PREFIX = "s3://screens/packed"


@pytest.fixture(scope="module")
def store(screen, tmp_path_factory):
    """moto on 127.0.0.1 behind the fault-injecting proxy, holding the packed `screen` under PREFIX."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = FaultyProxy(port)
    packed = pack_dataset(open_dataset(screen), tmp_path_factory.mktemp("packed") / "screen", SHARD_IMAGES,
                          progress=False)
    core = write_rxrx3_core(open_dataset(screen), tmp_path_factory.mktemp("core") / "screen", codec="png",
                            images_per_shard=CORE_SHARD_IMAGES)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="screens")
    # packed shards; a file per channel; RxRx3-core's parquet shards of encoded images
    for folder, prefix in ((packed, "packed"), (Path(screen), "rxrx"), (core, "rxrx3core")):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), "screens", f"{prefix}/{path.relative_to(folder).as_posix()}")
    yield {"proxy": proxy, "packed": packed, "client": client, "screen": Path(screen), "core": core}
    proxy.close()
    server.stop()


@pytest.fixture()
def s3_env(store, tmp_path, monkeypatch):
    """The environment a user sets (endpoint and keys for botocore; maefast's cache), a fresh cache per test.
    AWS_MAX_ATTEMPTS=1 and one attempt of s3fs's (its class attribute `retries`): neither botocore nor s3fs
    retries, so a transient failure reaches maefast's own retries."""
    import s3fs
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    cache = tmp_path / "cache"
    for key, value in dict(AWS_ENDPOINT_URL=f"http://127.0.0.1:{store['proxy'].port}", AWS_ACCESS_KEY_ID="testing",
                           AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1",
                           MAEFAST_CACHE_DIR=str(cache), MAEFAST_CACHE_GB=str(2.5 * shard_bytes(store) / 1e9),
                           MAEFAST_BACKOFF_S="0.02").items():
        monkeypatch.setenv(key, value)
    object_cache.cache_clear()
    filesystem.cache_clear()
    yield cache
    object_cache.cache_clear()


def shard_bytes(store) -> int:
    return max(p.stat().st_size for p in (store["packed"] / "shards").glob("*.npy"))


def test_training_reads_the_same_crops_from_s3_through_a_bounded_cache(store, s3_env, tmp_path):
    local, remote = open_dataset(store["packed"]), open_dataset(PREFIX)
    assert remote.root == PREFIX and remote.fingerprint() == local.fingerprint()
    store["proxy"].fail("/shard-00001.npy", 2)  # two transient failures, then the object
    served = store["proxy"].failures_served

    def crops(dataset):
        loader = make_loader(dataset, batch_size=3, crop_size=64, crops_per_image=2, seed=5, backend="torch",
                             num_workers=0)
        return [(batch["ids"], batch["pixels"]) for batch in loader]

    for (local_ids, local_pixels), (remote_ids, remote_pixels) in zip(crops(local), crops(remote), strict=True):
        assert local_ids == remote_ids and torch.equal(local_pixels, remote_pixels)
    assert store["proxy"].failures_served == served + 2
    held = sum(p.stat().st_size for p in s3_env.iterdir() if p.suffix == ".npy")
    assert 0 < held <= 2.5 * shard_bytes(store)  # every shard was read, at most two and a half kept

    config = load_config("debug", [f"data.path={PREFIX}", "data.batch_size=3", "data.num_workers=0",
                                   "data.backend=torch", "model.overrides.decoder_depth=1", "run.max_steps=3",
                                   "run.checkpoint_every=3"])
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    assert summary["step"] == 3 and np.isfinite(summary["final_loss"])


def test_loader_workers_read_a_file_per_channel_layout_from_s3(store, s3_env, monkeypatch):
    """The rxrx layout (a PNG per channel) under an s3:// prefix, read by two loader worker processes, each with
    its own connection and the shared cache: the crops of the local screen, with a transient failure retried.
    The workers' forkserver starts (if it is the session's first) before the store's settings are in the
    environment, as in a job that reads local data first: the workers still read with the job's environment."""
    store_settings = {key: os.environ[key]
                      for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for key in store_settings:
        monkeypatch.delenv(key)

    def crops(dataset):
        return [(batch["ids"], batch["pixels"]) for batch in make_loader(
            dataset, batch_size=3, crop_size=64, crops_per_image=1, seed=2, backend="torch", num_workers=2)]

    local = open_dataset(store["screen"])
    local_crops = crops(local)
    for key, value in store_settings.items():
        monkeypatch.setenv(key, value)
    remote = open_dataset("s3://screens/rxrx")
    assert remote.layout == local.layout == "rxrx" and list(remote.ids) == list(local.ids)
    image = sorted(store["screen"].rglob("*.png"))[0]
    store["proxy"].fail("/rxrx/" + image.relative_to(store["screen"]).as_posix(), 1)  # once, then the object
    served = store["proxy"].failures_served
    crops = [local_crops, crops(remote)]
    assert len(crops[0]) == len(crops[1]) > 0
    for (local_ids, local_pixels), (remote_ids, remote_pixels) in zip(*crops, strict=True):
        assert local_ids == remote_ids and torch.equal(local_pixels, remote_pixels)
    assert store["proxy"].failures_served == served + 1


def test_rxrx3_core_layout_opens_and_reads_from_s3(store, s3_env):
    """RxRx3-core under an s3:// prefix: detected, its metadata read from the store, its parquet shards through
    the bounded cache (a transient failure retried), the same table, fingerprint and crops as the local copy."""
    local, remote = open_dataset(store["core"]), open_dataset("s3://screens/rxrx3core")
    assert remote.layout == local.layout == "rxrx3-core"
    assert list(remote.ids) == list(local.ids) and remote.channels == local.channels
    shards = sorted((store["core"] / "data").glob("*.parquet"))
    assert len(shards) > 1 and remote.table["shard_" + remote.channels[0]].str.startswith("s3://screens/").all()
    assert remote.fingerprint() == local.fingerprint()
    object_cache.cache_clear()  # opening copied the shards into the cache: start the reads from an empty one
    for copy in s3_env.iterdir():
        copy.unlink()
    store["proxy"].fail(f"/rxrx3core/data/{shards[-1].name}", 1)  # once, then the object
    served = store["proxy"].failures_served

    def crops(dataset):
        return [(batch["ids"], batch["pixels"]) for batch in make_loader(
            dataset, batch_size=3, crop_size=64, crops_per_image=1, seed=4, backend="torch", num_workers=0)]

    pairs = list(zip(crops(local), crops(remote), strict=True))
    assert pairs and all(a_ids == b_ids and torch.equal(a, b) for (a_ids, a), (b_ids, b) in pairs)
    assert store["proxy"].failures_served == served + 1
    held = {p.name.split("-", 1)[1] for p in s3_env.iterdir() if p.suffix == ".parquet"}
    assert held and held <= {p.name for p in shards}  # read from the cache's copies


def test_embedding_from_s3_equals_embedding_the_local_copy(store, s3_env, tmp_path):
    torch.manual_seed(0)
    encoder = maefast.create_model("vit_debug_patch8_64", in_chans=6)
    maefast.save_pretrained(encoder, tmp_path / "encoder")
    options = dict(shard_size=5, batch_size=2, workers=0, backend="torch", show_progress=False)
    maefast.embed(tmp_path / "encoder", str(store["packed"]), tmp_path / "local", **options)
    maefast.embed(tmp_path / "encoder", PREFIX, tmp_path / "remote", **options)
    local, remote = read_job(tmp_path / "local"), read_job(tmp_path / "remote")
    assert list(local["id"]) == list(remote["id"])
    np.testing.assert_array_equal(local.filter(like="feature_").to_numpy(), remote.filter(like="feature_").to_numpy())


def test_a_missing_object_is_named(store, s3_env):
    dataset = open_dataset(PREFIX)
    store["client"].copy_object(Bucket="screens", CopySource="screens/packed/shards/shard-00000.npy",
                                Key="packed/shards/kept.npy")
    store["client"].delete_object(Bucket="screens", Key="packed/shards/shard-00000.npy")
    try:
        loader = make_tile_loader(dataset, batch_size=SHARD_IMAGES, crop_size=64, backend="torch", num_workers=0)
        with pytest.raises(ImageReadError, match=f"{PREFIX}/shards/shard-00000.npy.*no such object"):
            next(iter(loader))
    finally:
        store["client"].copy_object(Bucket="screens", CopySource="screens/packed/shards/kept.npy",
                                    Key="packed/shards/shard-00000.npy")


def test_retries_back_off_and_give_up_naming_the_object(store, s3_env, tmp_path):
    waits = []
    cache = ObjectCache(tmp_path / "own", 10**9, RetryPolicy(retries=3, backoff_s=1.0, sleep=waits.append))
    store["proxy"].fail("/manifest.json", 1000)  # more than s3fs's own retries take
    with pytest.raises(StorageError, match=f"{PREFIX}/manifest.json: failed 4 times") as caught:
        cache.local_path(f"{PREFIX}/manifest.json")
    store["proxy"].fail("/manifest.json", 0)
    assert caught.value.kind == "unreadable" and len(waits) == 3
    assert [round(w / 2 ** i, 3) for i, w in enumerate(waits)] == pytest.approx([1.0] * 3, abs=0.5)  # 1, 2, 4 s +-50%
    assert [p for p in os.listdir(tmp_path / "own") if not p.endswith(".lock")] == []  # no partial copy left
    assert Path(cache.local_path(f"{PREFIX}/manifest.json")).read_bytes() == \
        (store["packed"] / "manifest.json").read_bytes()
