"""What every loader reads, decided in one place: batches of images and where each crop lies.

A plan is the specification both backends (DALI and the PyTorch fallback) execute, so they produce the
same crops for the same seed and position.

Training (`TrainPlan`): epoch e shuffles all images with seed (seed, e). Each global step takes the next
batch_size * world_size images of that order and splits them evenly over the ranks (rank r takes the
r-th part), so over all ranks each image appears exactly once per epoch and every rank runs the same
number of steps; only the last step of an epoch may be smaller (drop_last=True drops it). A position in
the epoch is the number of images of its order the steps so far took (over all ranks): the order does not
depend on the world size, so a run resumed on another number of ranks continues from the same image.
Each image gets crops_per_image crops; crop k of image i in epoch e has its top-left corner (y, x) and
its augmentation drawn from a counter-based hash of (seed, e, i, k): independent of batch size, world
size and of images skipped around it. The augmentation is one of the 8 flips / 90-degree rotations of
the square: transpose, then flip rows (vertical), then flip columns (horizontal), each with probability 1/2.

Tiling (`TilePlan`): no shuffle, no augmentation; images r, r + W, r + 2W, ... for rank r; each image
is cut into the (H // s) * (W // s) non-overlapping s x s tiles, row-major, the border remainder
(H % s, W % s) is dropped.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from maefast.errors import UserInputError

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
MAX_SEED = 2**32 - 1  # the shuffle's numpy seed sequence takes non-negative seeds; 32 bits, as torch's derive


@dataclass(frozen=True)
class Batch:
    step: int                 # the step in the epoch (from the position it started at)
    images: np.ndarray        # (n,) int64 row positions in the dataset table
    anchors: np.ndarray       # (n, K, 2) int64 top-left (y, x) of each crop
    augment: np.ndarray       # (n, K, 3) bool: transpose, flip vertical, flip horizontal
    end: int = 0              # the position in the epoch after this step (see the module docstring)

    def without(self, keep: np.ndarray) -> Batch:
        return Batch(self.step, self.images[keep], self.anchors[keep], self.augment[keep], self.end)

    def same(self, other: Batch) -> bool:
        """Whether `other` reads the same crops (the same images, corners and flips at the same step)."""
        return (self.step == other.step and np.array_equal(self.images, other.images)
                and np.array_equal(self.anchors, other.anchors) and np.array_equal(self.augment, other.augment))


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def hash_draws(seed: int, epoch: int, images: np.ndarray, crops: int, fields: int) -> np.ndarray:
    """(n, crops, fields) uint64 pseudo-random draws, a pure function of (seed, epoch, image, crop, field)."""
    key = _splitmix(_splitmix(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    counters = (images.astype(np.uint64)[:, None, None] * np.uint64(1 << 20)
                + np.arange(crops, dtype=np.uint64)[None, :, None] * np.uint64(1 << 8)
                + np.arange(fields, dtype=np.uint64)[None, None, :])
    return _splitmix(counters ^ key)


class TrainPlan:
    def __init__(self, num_images: int, image_shape, batch_size: int, crop_size: int = 256,
                 crops_per_image: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1,
                 augment: bool = True, drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or crops_per_image < 1:
            raise UserInputError(f"batch_size and crops_per_image must be >= 1, got {batch_size}, {crops_per_image}")
        if not 0 <= seed <= MAX_SEED:
            raise UserInputError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
        height, width = image_shape
        if crop_size > min(height, width):
            raise UserInputError(f"crop_size {crop_size} is larger than the images ({height}x{width})")
        if num_images < world_size:
            raise UserInputError(f"{num_images} images cannot be sharded over world_size={world_size} ranks")
        self.num_images, self.image_shape, self.batch_size = num_images, (height, width), batch_size
        self.crop_size, self.crops_per_image, self.seed = crop_size, crops_per_image, seed
        self.rank, self.world_size, self.augment, self.drop_last = rank, world_size, augment, drop_last

    def steps(self, position: int = 0) -> int:
        """Steps of an epoch from `position` on (the same on every rank)."""
        per_step, left = self.batch_size * self.world_size, max(self.num_images - position, 0)
        return left // per_step if self.drop_last else -(-left // per_step)

    def largest_batch(self) -> int:
        """The most images any of this rank's batches holds (array_split gives the first ranks the larger parts)."""
        return -(-min(self.batch_size * self.world_size, self.num_images) // self.world_size)

    def batches_after(self, epoch: int):
        """The batches of every epoch after `epoch`, in order (without end): what a loader reads ahead into."""
        return itertools.chain.from_iterable(self.batches(later) for later in itertools.count(epoch + 1))

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)

    def batches(self, epoch: int, position: int = 0):
        """This rank's batches of the epoch from `position` (images of the epoch's order already taken) on."""
        order, per_step = self.order(epoch), self.batch_size * self.world_size
        for step in range(self.steps(position)):
            start = position + step * per_step
            chunk = order[start:start + per_step]
            images = np.array_split(chunk, self.world_size)[self.rank]
            yield self.batch(epoch, step, images, start + len(chunk))

    def batch(self, epoch: int, step: int, images: np.ndarray, end: int = 0) -> Batch:
        images = np.asarray(images, np.int64)
        draws = hash_draws(self.seed, epoch, images, self.crops_per_image, 3)
        height, width = self.image_shape
        y = draws[..., 0] % np.uint64(height - self.crop_size + 1)
        x = draws[..., 1] % np.uint64(width - self.crop_size + 1)
        anchors = np.stack([y, x], axis=-1).astype(np.int64)
        bits = (draws[..., 2:3] >> np.arange(3, dtype=np.uint64)) & np.uint64(1)
        augment = bits.astype(bool) if self.augment else np.zeros(bits.shape, bool)
        return Batch(step, images, anchors, augment, end)


class TilePlan:
    def __init__(self, num_images: int, image_shape, batch_size: int, crop_size: int = 256,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        height, width = image_shape
        self.rows, self.columns = height // crop_size, width // crop_size
        if self.rows == 0 or self.columns == 0:
            raise UserInputError(f"crop_size {crop_size} is larger than the images ({height}x{width})")
        self.num_images, self.image_shape, self.batch_size = num_images, (height, width), batch_size
        self.crop_size, self.rank, self.world_size = crop_size, rank, world_size
        self.crops_per_image = self.rows * self.columns
        self.mine = np.arange(rank, num_images, world_size, dtype=np.int64)
        grid_y, grid_x = np.meshgrid(np.arange(self.rows), np.arange(self.columns), indexing="ij")
        self.grid = np.stack([grid_y.ravel(), grid_x.ravel()], axis=-1) * crop_size

    def steps(self) -> int:
        return -(-len(self.mine) // self.batch_size)

    def largest_batch(self) -> int:
        return min(self.batch_size, len(self.mine))

    def batches_after(self, epoch: int):
        """Nothing: a tiling is read once (an embedding job), so no loader reads ahead past it."""
        return iter(())

    def batches(self, epoch: int = 0, position: int = 0):
        """This rank's batches from `position` (images of this rank's list already done) on."""
        for step in range(-(-(len(self.mine) - position) // self.batch_size)):
            images = self.mine[position + step * self.batch_size:position + (step + 1) * self.batch_size]
            anchors = np.broadcast_to(self.grid, (len(images),) + self.grid.shape).copy()
            end = position + step * self.batch_size + len(images)
            yield Batch(step, images, anchors, np.zeros(anchors.shape[:2] + (3,), bool), end)


def apply_augment(crop: np.ndarray, transpose: bool, flip_vertical: bool, flip_horizontal: bool) -> np.ndarray:
    """The reference augmentation of a (C, s, s) crop (numpy or torch alike through the same indexing)."""
    if transpose:
        crop = crop.swapaxes(-1, -2)
    if flip_vertical:
        crop = crop[..., ::-1, :]
    if flip_horizontal:
        crop = crop[..., :, ::-1]
    return crop
