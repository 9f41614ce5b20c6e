"""Procedural cell-painting-like sites: cells with nuclei, ER, RNA, actin/Golgi, mitochondria, membrane.

A site is rendered from a `Phenotype` (how the perturbation changes the cells) and a `BatchEffect` (how the
plate and experiment change the imaging). Everything is drawn from the generator passed in, so a site is
a pure function of its seed. Rendering works in float32 intensities and quantizes once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from maefast.errors import UserInputError

BASE_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito", "Membrane")
# phenotype features a perturbation can shift, in this order (effects are vectors over these)
FEATURES = ("cell_size", "nucleus_ratio", "elongation", "density", "dna", "er", "rna", "agp", "mito",
            "membrane", "puncta", "golgi")


def channel_names(count: int) -> list[str]:
    """Names of `count` rendered channels: the six stains, then Extra7, Extra8, ... (mixtures of them)."""
    if count < 1:
        raise UserInputError(f"channels must be at least 1, got {count}")
    return list(BASE_CHANNELS[:count]) + [f"Extra{k + 1}" for k in range(len(BASE_CHANNELS), count)]


@dataclass(frozen=True)
class BatchEffect:
    gain: np.ndarray          # (C,) multiplicative per channel
    offset: np.ndarray        # (C,) background per channel, in intensity units
    tilt: tuple[float, float] = (0.0, 0.0)  # illumination slope across the field (y, x)
    vignette: float = 0.0     # strength of the radial fall-off

    @staticmethod
    def none(channels: int) -> BatchEffect:
        return BatchEffect(np.ones(channels, np.float32), np.full(channels, 0.03, np.float32))

    @staticmethod
    def random(rng: np.random.Generator, channels: int, strength: float = 1.0) -> BatchEffect:
        return BatchEffect(gain=np.exp(rng.normal(0, 0.15 * strength, channels)).astype(np.float32),
                           offset=(0.03 + 0.02 * strength * rng.random(channels)).astype(np.float32),
                           tilt=tuple(rng.normal(0, 0.1 * strength, 2)), vignette=float(0.25 * strength * rng.random()))

    def illumination(self, size: int) -> np.ndarray:
        """The (size, size) multiplicative illumination field of this batch (values around 1)."""
        axis = np.linspace(-1, 1, size, dtype=np.float32)
        field = 1 + self.tilt[0] * axis[:, None] + self.tilt[1] * axis[None, :]
        field = field - self.vignette * (axis[:, None] ** 2 + axis[None, :] ** 2) / 2
        return (field / field.mean()).astype(np.float32)


def render_site(rng: np.random.Generator, size: int, channels: int, effect=None, batch: BatchEffect | None = None,
                dtype=np.uint8) -> np.ndarray:
    """One site: (channels, size, size) integer pixels. effect: (len(FEATURES),) shifts, 0 = control."""
    effect = np.zeros(len(FEATURES), np.float32) if effect is None else np.asarray(effect, np.float32)
    if effect.shape != (len(FEATURES),):
        raise UserInputError(f"effect must have {len(FEATURES)} entries ({', '.join(FEATURES)}), got {effect.shape}")
    f = dict(zip(FEATURES, effect))
    batch = BatchEffect.none(channels) if batch is None else batch
    fields = _cell_fields(rng, size, f)
    stains = _stains(rng, size, fields, f)
    image = np.empty((channels, size, size), np.float32)
    for c in range(channels):
        if c < len(stains):
            image[c] = stains[c]
        else:  # extra channels: fixed mixtures of the stains, different for each channel index
            weights = np.random.default_rng(c).dirichlet(np.ones(len(stains)))
            image[c] = np.tensordot(weights, stains, axes=1) * 1.5
    illumination = batch.illumination(size)
    image *= batch.gain[:, None, None]
    image += batch.offset[:, None, None]
    image *= illumination
    noise = np.sqrt(image)
    noise *= 0.03
    noise += 0.01
    noise *= rng.standard_normal(image.shape, dtype=np.float32)
    image += noise
    top = np.iinfo(dtype).max
    image *= 0.5 * top
    np.clip(image, 0, top, out=image)
    return np.rint(image, out=image).astype(dtype)


def render_sites(n: int, channels: int = 6, size: int = 256, seed: int = 0, dtype=np.uint8,
                 effect_scale: float = 1.0) -> np.ndarray:
    """n random sites (n, channels, size, size) integer pixels: a quarter controls, the rest random phenotypes.

    For demos and tests; the screen generator (synth_screen) controls phenotypes and batches itself.
    """
    images = np.empty((n, channels, size, size), dtype)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        effect = None if i % 4 == 0 else rng.normal(0, 0.5 * effect_scale, len(FEATURES))
        images[i] = render_site(rng, size, channels, effect, BatchEffect.random(rng, channels, 0.5), dtype)
    return images


def _cell_fields(rng: np.random.Generator, size: int, f: dict) -> dict:
    """Per-pixel cell structure: cytoplasm, nucleus, membrane ring, perinuclear and Golgi maps."""
    radius = 20.0 * np.exp(0.25 * f["cell_size"])
    count = rng.poisson(max(1.0, 0.45 * size * size / (np.pi * radius ** 2) * np.exp(0.3 * f["density"])))
    cyto, nucleus, ring, perinuclear, golgi = (np.zeros((size, size), np.float32) for _ in range(5))
    reach = int(np.ceil(radius * 1.5)) + 2
    offsets = np.arange(-reach, reach + 1, dtype=np.float32)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    nucleus_ratio = float(np.clip(0.45 * np.exp(0.2 * f["nucleus_ratio"]), 0.2, 0.8))
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        a = radius * rng.uniform(0.8, 1.2) * np.exp(0.25 * f["elongation"] + rng.normal(0, 0.1))
        b = radius * rng.uniform(0.8, 1.2) * np.exp(-0.25 * f["elongation"] + rng.normal(0, 0.1))
        theta = rng.uniform(0, np.pi)
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        r = np.sqrt(u * u + v * v)  # 1 at the cell edge
        cell = np.clip((1.0 - r) * 6, 0, 1)
        shift_u, shift_v = rng.normal(0, 0.1, 2)
        rn = np.sqrt((u - shift_u) ** 2 + (v - shift_v) ** 2) / nucleus_ratio
        nuc = np.clip((1.0 - rn) * 4, 0, 1)
        angle = rng.uniform(0, 2 * np.pi)
        gu, gv = np.cos(angle) * nucleus_ratio * 1.3, np.sin(angle) * nucleus_ratio * 1.3
        gol = np.clip(1 - ((u - gu) ** 2 + (v - gv) ** 2) / (0.03 * np.exp(0.4 * f["golgi"])), 0, None)
        y0, x0 = int(cy) - reach, int(cx) - reach
        ys, xs = slice(max(y0, 0), min(y0 + 2 * reach + 1, size)), slice(max(x0, 0), min(x0 + 2 * reach + 1, size))
        window = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        brightness = rng.uniform(0.7, 1.3)
        np.maximum(cyto[ys, xs], cell[window] * brightness, out=cyto[ys, xs])
        np.maximum(nucleus[ys, xs], nuc[window] * brightness, out=nucleus[ys, xs])
        np.maximum(ring[ys, xs], np.clip(1 - np.abs(r - 0.93)[window] * 10, 0, None), out=ring[ys, xs])
        np.maximum(perinuclear[ys, xs], (cell / (1 + np.clip(rn - 1, 0, None)))[window], out=perinuclear[ys, xs])
        np.maximum(golgi[ys, xs], (gol * cell)[window], out=golgi[ys, xs])
    return dict(cyto=cyto, nucleus=nucleus, ring=ring, perinuclear=perinuclear, golgi=golgi)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Positive noise varying over about `scale` pixels, mean about 1."""
    low = rng.gamma(4.0, 0.25, (size // scale + 2, size // scale + 2)).astype(np.float32)
    big = Image.fromarray(low, mode="F").resize((size + 2 * scale, size + 2 * scale), Image.BILINEAR)
    return np.asarray(big)[scale:scale + size, scale:scale + size]


def _puncta(rng: np.random.Generator, size: int, density: float) -> np.ndarray:
    """Small bright dots (mitochondria, nucleoli): sparse points at half resolution, smoothed up."""
    half = (size + 1) // 2
    points = (rng.random((half, half)) < density).astype(np.float32) * 4
    big = Image.fromarray(points, mode="F").resize((2 * half, 2 * half), Image.BILINEAR)
    return np.asarray(big)[:size, :size]


def _stains(rng: np.random.Generator, size: int, fields: dict, f: dict) -> list[np.ndarray]:
    e = {k: float(np.exp(0.35 * f[k])) for k in ("dna", "er", "rna", "agp", "mito", "membrane")}
    cyto, nucleus, ring = fields["cyto"], fields["nucleus"], fields["ring"]
    texture = _smooth_noise(rng, size, 6)
    puncta = _puncta(rng, size, 0.05 * np.exp(0.4 * f["puncta"]))
    dna = nucleus * (0.75 + 0.25 * texture) * 0.9 * e["dna"]
    er = (0.25 * cyto + 0.6 * fields["perinuclear"] * (1 - nucleus)) * _smooth_noise(rng, size, 3) * e["er"]
    rna = (0.25 * cyto * (1 - nucleus) + 0.3 * nucleus * puncta) * e["rna"] + 0.1 * nucleus
    agp = (0.5 * ring * cyto + 0.7 * fields["golgi"]) * e["agp"] + 0.05 * cyto
    mito = cyto * (1 - 0.7 * nucleus) * (0.15 + 0.6 * puncta) * e["mito"]
    membrane = (0.6 * ring + 0.1 * cyto) * _smooth_noise(rng, size, 12) * e["membrane"]
    return [dna, er, rna, agp, mito, membrane]
