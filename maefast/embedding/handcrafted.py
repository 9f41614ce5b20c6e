"""Hand-crafted image features: the CellProfiler-style baseline of Kraus et al. 2024 (arXiv 2404.10242).

`handcrafted_features(pixels)` -> pandas.DataFrame, one row per image, named columns:
  {channel}_intensity_{stat}     mean, std, min, max, quantiles, skew, kurtosis, saturated fraction of
                                 the pixels scaled to [0, 1] by the dtype's maximum
  {channel}_texture_{stat}_d{d}  gray-level co-occurrence (Haralick) statistics at distance d, horizontal
                                 and vertical offsets pooled, on the image quantized to `glcm_levels`
                                 levels between its 1st and 99th percentile
  {channel}_texture_gradient_energy / _laplacian_energy
                                 mean squared finite difference / 5-point Laplacian over the variance
  nuclei_{stat}                  objects of an Otsu segmentation of the (smoothed) nuclei channel:
                                 count, area, perimeter, form factor, eccentricity, elongation, ellipse fill
  {channel}_nuclei_intensity_{mean,std}, {channel}_outside_intensity_mean
                                 every channel's intensity inside the nuclei and outside them
Aggregates over the objects of an image with no nuclei are 0 (nuclei_count says so).

Everything is computed from integer levels: uint8 / uint16 as given, floats in [0, 1] rounded to 16 bits.
The intensity statistics come from exact per-image histograms, which is what makes 1,000 images of
6 x 256 x 256 a matter of seconds on a CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from maefast.errors import UserInputError

QUANTILES = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95, "q99": 0.99}
INTENSITY_STATS = ("mean", "std", "min", "max", *QUANTILES, "skew", "kurtosis", "saturated")
GLCM_STATS = ("contrast", "homogeneity", "energy", "correlation", "entropy")
GRADIENT_STATS = ("gradient_energy", "laplacian_energy")
NUCLEI_STATS = ("count", "area_fraction", "area_mean", "area_std", "perimeter_mean", "form_factor_mean",
                "eccentricity_mean", "eccentricity_std", "elongation_mean", "ellipse_fill_mean")
OBJECT_INTENSITY_STATS = ("nuclei_intensity_mean", "nuclei_intensity_std", "outside_intensity_mean")
# 4-connectivity within each image of an (N, H, W) stack, none across images
PLANAR_CROSS = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)


def default_channel_names(channels: int) -> list[str]:
    return [f"ch{c}" for c in range(channels)]


def feature_names(channel_names: list[str], glcm_distances=(1, 3)) -> list[str]:
    """The columns of handcrafted_features, in order."""
    texture = [f"{stat}_d{d}" for d in glcm_distances for stat in GLCM_STATS] + list(GRADIENT_STATS)
    return ([f"{ch}_intensity_{s}" for ch in channel_names for s in INTENSITY_STATS]
            + [f"{ch}_texture_{s}" for ch in channel_names for s in texture]
            + [f"nuclei_{s}" for s in NUCLEI_STATS]
            + [f"{ch}_{s}" for ch in channel_names for s in OBJECT_INTENSITY_STATS])


def integer_levels(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, C, H, W) uint8 / uint16 / float in [0, 1] -> (integer array, its full-scale value)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise UserInputError(f"expected images (N, C, H, W), got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels, 255
    if pixels.dtype == np.uint16:
        return pixels, 65535
    if np.issubdtype(pixels.dtype, np.floating):
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if not (0.0 <= low and high <= 1.0):  # also refuses NaN
            raise UserInputError(f"floating-point pixels must lie in [0, 1], got values in [{low}, {high}]")
        return np.rint(pixels * 65535.0).astype(np.uint16), 65535
    raise TypeError(f"pixels must be uint8, uint16 or floating point in [0, 1], got {pixels.dtype}")


# -- intensity ----------------------------------------------------------------------------------------

def histograms(rows: np.ndarray, bins: int) -> np.ndarray:
    """(R, H, W) integers -> (R, bins) pixel counts (bincount per row is far faster than one offset call)."""
    return np.stack([np.bincount(row.ravel(), minlength=bins) for row in rows])


def order_statistics(hist: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """(R, bins) histograms, (K,) 0-based ranks -> (R, K) the rank-th smallest value of each row."""
    cumulative = np.cumsum(hist, axis=1)
    return np.stack([np.searchsorted(row, ranks, side="right") for row in cumulative]).astype(np.float64)


def moments(weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """(R, V) value frequencies, (V,) values -> per row: mean and the 2nd, 3rd, 4th central moments.

    Moments about one center for all rows come from one matrix product and are moved to each row's
    mean. That loses precision like (row mean - center)^k / variance^(k/2), so rows whose mean lies far
    from the center (in units of their std) are recomputed directly about their own mean.
    """
    center = weights.sum(0) @ values / weights.sum()
    raw = weights @ ((values - center)[:, None] ** np.arange(1, 5))
    shift = raw[:, 0]
    mean = center + shift
    m2 = np.maximum(raw[:, 1] - shift ** 2, 0.0)
    m3 = raw[:, 2] - 3 * shift * raw[:, 1] + 2 * shift ** 3
    m4 = raw[:, 3] - 4 * shift * raw[:, 2] + 6 * shift ** 2 * raw[:, 1] - 3 * shift ** 4
    far = shift ** 2 > 1e3 * m2
    if far.any():
        centered = values[None] - mean[far, None]
        weighted = weights[far] * centered ** 2
        m2[far] = weighted.sum(1)
        m3[far] = np.einsum("ij,ij->i", weighted, centered)
        m4[far] = np.einsum("ij,ij->i", weighted, centered ** 2)
    return mean, m2, m3, m4


def intensity_statistics(hist: np.ndarray, full_scale: int) -> np.ndarray:
    """(R, bins) histograms -> (R, len(INTENSITY_STATS)) in INTENSITY_STATS order, pixels scaled by full_scale.

    Quantiles interpolate linearly between order statistics, as numpy.quantile; skew and (excess)
    kurtosis are the biased moment ratios, as scipy.stats' defaults.
    """
    count = int(hist[0].sum())
    saturated = hist[:, -1] / count
    # only the value range the chunk occupies: 16-bit images rarely span all 65536 levels
    occupied = np.flatnonzero(hist.any(0))
    first = occupied[0]
    hist = hist[:, first:occupied[-1] + 1]
    values = np.arange(first, first + hist.shape[1], dtype=np.float64) / full_scale
    mean, m2, m3, m4 = moments(hist / count, values)
    positions = np.array(list(QUANTILES.values())) * (count - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, count - 1)
    ranks = np.concatenate([[0, count - 1], below, above])
    stats = (order_statistics(hist, ranks) + first) / full_scale
    k = len(QUANTILES)
    low, high = stats[:, 2:2 + k], stats[:, 2 + k:]
    quantiles = low + (positions - below) * (high - low)
    flat = stats[:, 0] == stats[:, 1]  # a constant image: no spread, no shape (rounding would invent some)
    m2 = np.where(flat, 0.0, m2)
    skew = np.where(flat, 0.0, m3 / np.where(flat, 1.0, m2) ** 1.5)
    kurtosis = np.where(flat, 0.0, m4 / np.where(flat, 1.0, m2) ** 2 - 3.0)
    return np.column_stack([mean, np.sqrt(m2), stats[:, 0], stats[:, 1], quantiles, skew, kurtosis, saturated])


# -- texture ------------------------------------------------------------------------------------------

def quantize(rows: np.ndarray, low: np.ndarray, high: np.ndarray, levels: int) -> np.ndarray:
    """(R, H, W) integers -> uint8 levels 0..levels-1, equal-width bins over [low, high] per row, clipped.

    Clipping at the 1st / 99th percentile keeps a few hot pixels from squeezing the image into one level.
    Done with a lookup table per row: one pass over the pixels.
    """
    values = np.arange(int(high.max()) + 1, dtype=np.float32)  # larger values: clipped to the top level
    scale = (levels / np.maximum(high - low, 1.0)).astype(np.float32)[:, None]
    tables = np.clip((values[None] - low.astype(np.float32)[:, None]) * scale, 0, levels - 1).astype(np.uint8)
    return np.stack([table.take(row, mode="clip") for table, row in zip(tables, rows)])


def cooccurrence(levels_image: np.ndarray, levels: int, distance: int) -> np.ndarray:
    """(R, H, W) uint8 levels -> (R, L, L) symmetric co-occurrence counts of the offsets (0, d) and (d, 0)."""
    counts = np.zeros((levels_image.shape[0], levels * levels), dtype=np.int64)
    for first, second in ((levels_image[:, :, :-distance], levels_image[:, :, distance:]),
                          (levels_image[:, :-distance, :], levels_image[:, distance:, :])):
        codes = first * np.uint8(levels) + second  # < 256 for levels <= 16
        for row, code in enumerate(codes):
            counts[row] += np.bincount(code.ravel(), minlength=levels * levels)
    counts = counts.reshape(-1, levels, levels)
    return counts + counts.transpose(0, 2, 1)


def glcm_statistics(counts: np.ndarray) -> np.ndarray:
    """(R, L, L) co-occurrence counts -> (R, len(GLCM_STATS)) in GLCM_STATS order (energy = sum p^2)."""
    p = counts / counts.sum(axis=(1, 2), keepdims=True)
    i = np.arange(p.shape[1], dtype=np.float64)
    difference = (i[:, None] - i[None, :]) ** 2
    contrast = (p * difference).sum(axis=(1, 2))
    homogeneity = (p / (1.0 + difference)).sum(axis=(1, 2))
    energy = (p ** 2).sum(axis=(1, 2))
    marginal = p.sum(axis=2)  # the same along both axes: p is symmetric
    mu = marginal @ i
    var = marginal @ i ** 2 - mu ** 2
    covariance = np.einsum("rij,i,j->r", p, i, i) - mu ** 2
    # a single-level image is perfectly predictable from its neighbour: correlation 1
    correlation = np.where(var > 1e-12, covariance / np.where(var > 1e-12, var, 1.0), 1.0)
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=(1, 2))
    return np.column_stack([contrast, homogeneity, energy, correlation, entropy])


def gradient_statistics(rows: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """(R, H, W), per-row variance in the same units -> (R, 2): mean squared first difference (x and y
    pooled) and mean squared 5-point Laplacian, each over the variance (white noise: 2 and 20)."""
    x = rows.astype(np.float32)
    count = rows.shape[0]
    dx, dy = np.diff(x, axis=2), np.diff(x, axis=1)
    laplacian = (dx[:, 1:-1, 1:] - dx[:, 1:-1, :-1]) + (dy[:, 1:, 1:-1] - dy[:, :-1, 1:-1])
    energies = []
    for terms in ((dx, dy), (laplacian,)):
        squares = sum(np.einsum("ij,ij->i", t.reshape(count, -1), t.reshape(count, -1)).astype(np.float64)
                      for t in terms)
        energies.append(squares / sum(t[0].size for t in terms))
    safe = np.where(variance > 0, variance, 1.0)
    return np.column_stack([np.where(variance > 0, e / safe, 0.0) for e in energies])


# -- nuclei -------------------------------------------------------------------------------------------

OTSU_BINS = 256


def otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,) Otsu thresholds: pixels above their image's threshold are foreground.

    Otsu's between-class variance over a 256-bin histogram spanning each image's range. When the classes
    are separated by empty bins, every cut in the gap scores the same: take the middle of the gap, not
    its lower edge, so that objects are not grown by their blurred rims. An image with one value gets its
    maximum as threshold: no foreground.
    """
    n = images.shape[0]
    flat = images.reshape(n, -1).astype(np.float64)
    low, high = flat.min(1), flat.max(1)
    step = np.where(high > low, (high - low) / (OTSU_BINS - 1), 1.0)
    bins = np.rint((flat - low[:, None]) / step[:, None]).astype(np.intp)
    hist = np.bincount((bins + OTSU_BINS * np.arange(n)[:, None]).ravel(), minlength=n * OTSU_BINS)
    p = hist.reshape(n, OTSU_BINS) / flat.shape[1]
    below = np.cumsum(p, 1)
    below_mass = np.cumsum(p * np.arange(OTSU_BINS), 1)
    spread = below * (1.0 - below)
    between = np.where(spread > 0, (below_mass[:, -1:] * below - below_mass) ** 2 / np.where(spread > 0, spread, 1), 0)
    best = between.max(1)
    plateau = between >= best[:, None] * (1 - 1e-9)
    first, last = plateau.argmax(1), OTSU_BINS - 1 - plateau[:, ::-1].argmax(1)
    cut = (first + last) / 2 + 0.5  # bin b holds values within step / 2 of low + b * step
    return np.where(best > 0, low + cut * step, high)


def segment_nuclei(nuclei: np.ndarray, smoothing_sigma: float) -> tuple[np.ndarray, int]:
    """(N, H, W) nuclei channel -> (labels (N, H, W) int32 numbered across the stack, object count)."""
    image = nuclei.astype(np.float32)
    if smoothing_sigma > 0:
        image = ndimage.gaussian_filter(image, sigma=(0, smoothing_sigma, smoothing_sigma))
    return ndimage.label(image > otsu_thresholds(image)[:, None, None], structure=PLANAR_CROSS)


def perimeters(labels: np.ndarray, count: int) -> np.ndarray:
    """(count,) perimeter of each object: its pixel edges facing another label or the image border,
    times pi / 4. A boundary at angle t has |cos t| + |sin t| edges per unit length, 4 / pi on average."""
    edges = np.zeros(count + 1)
    for first, second in ((labels[:, :-1], labels[:, 1:]), (labels[:, :, :-1], labels[:, :, 1:])):
        differ = first != second
        edges += np.bincount(first[differ], minlength=count + 1) + np.bincount(second[differ], minlength=count + 1)
    for border in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        edges += np.bincount(border.ravel(), minlength=count + 1)
    return edges[1:] * math.pi / 4


def per_image_mean_std(values: np.ndarray, image: np.ndarray, counts: np.ndarray, images: int):
    """Mean and std over the objects of each image (0 for an image without objects)."""
    safe = np.maximum(counts, 1)
    mean = np.bincount(image, weights=values, minlength=images) / safe
    square = np.bincount(image, weights=values ** 2, minlength=images) / safe
    return mean, np.sqrt(np.maximum(square - mean ** 2, 0.0))


def nuclei_features(pixels: np.ndarray, full_scale: int, nuclei_channel: int,
                    smoothing_sigma: float, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (N, len(NUCLEI_STATS)), (N, C, len(OBJECT_INTENSITY_STATS))."""
    n, channels, height, width = pixels.shape
    labels, count = segment_nuclei(pixels[:, nuclei_channel], smoothing_sigma)
    flat = np.flatnonzero(labels)
    label = labels.ravel()[flat]
    image_of_pixel, within = np.divmod(flat, height * width)
    y, x = (v.astype(np.float64) for v in np.divmod(within, width))
    sums = [np.bincount(label, weights=w, minlength=count + 1)[1:] for w in (None, y, x, y * y, x * x, y * x)]
    area, sy, sx, syy, sxx, sxy = sums
    image = np.zeros(count, dtype=np.int64)
    image[label - 1] = image_of_pixel
    keep = area >= min_area
    area_safe = np.maximum(area, 1)
    # second central moments of each object, with the 1/12 variance of a unit pixel
    vyy = syy / area_safe - (sy / area_safe) ** 2 + 1 / 12
    vxx = sxx / area_safe - (sx / area_safe) ** 2 + 1 / 12
    vxy = sxy / area_safe - (sy / area_safe) * (sx / area_safe)
    half_gap = np.sqrt(((vyy - vxx) / 2) ** 2 + vxy ** 2)
    major, minor = (vyy + vxx) / 2 + half_gap, (vyy + vxx) / 2 - half_gap
    eccentricity = np.sqrt(np.clip(1.0 - minor / major, 0.0, 1.0))
    elongation = np.sqrt(major / minor)
    ellipse_fill = area / (4 * math.pi * np.sqrt(major * minor))  # the moment ellipse has semi-axes 2 sqrt(lambda)
    perimeter = perimeters(labels, count)
    form_factor = 4 * math.pi * area / np.maximum(perimeter, 1e-9) ** 2

    kept_image = image[keep]
    objects = np.bincount(kept_image, minlength=n).astype(np.float64)
    stats = lambda v: per_image_mean_std(v[keep], kept_image, objects, n)  # noqa: E731
    area_mean, area_std = stats(area)
    ecc_mean, ecc_std = stats(eccentricity)
    nuclei = np.column_stack([
        objects, np.bincount(kept_image, weights=area[keep], minlength=n) / (height * width), area_mean, area_std,
        stats(perimeter)[0], stats(form_factor)[0], ecc_mean, ecc_std, stats(elongation)[0], stats(ellipse_fill)[0]])

    inside_pixels = np.bincount(kept_image, weights=area[keep], minlength=n)
    per_channel = np.zeros((n, channels, len(OBJECT_INTENSITY_STATS)))
    for c in range(channels):
        values = pixels[:, c].ravel()[flat].astype(np.float64) / full_scale
        object_sum = np.bincount(label, weights=values, minlength=count + 1)[1:]
        mean, std = stats(object_sum / area_safe)
        inside = np.bincount(kept_image, weights=object_sum[keep], minlength=n)
        total = pixels[:, c].reshape(n, -1).sum(1, dtype=np.float64) / full_scale
        outside = (total - inside) / np.maximum(height * width - inside_pixels, 1)
        per_channel[:, c] = np.column_stack([mean, std, outside])
    return nuclei, per_channel


# -- the table ----------------------------------------------------------------------------------------

def check_options(glcm_levels: int, glcm_distances, smoothing_sigma: float, min_nucleus_area: int,
                  height: int, width: int) -> None:
    if min(height, width) < 3:
        raise UserInputError(f"images must be at least 3x3 for texture features, got {height}x{width}")
    if not 2 <= glcm_levels <= 16:
        raise UserInputError(f"glcm_levels must be in [2, 16], got {glcm_levels}")
    if not glcm_distances or any(not 1 <= d < min(height, width) for d in glcm_distances):
        raise UserInputError(f"glcm_distances must be in [1, {min(height, width)}) for {height}x{width} images, "
                             f"got {tuple(glcm_distances)}")
    if smoothing_sigma < 0 or min_nucleus_area < 1:
        raise UserInputError(f"smoothing_sigma must be >= 0 and min_nucleus_area >= 1, got {smoothing_sigma}, "
                             f"{min_nucleus_area}")


def chunk_features(pixels: np.ndarray, full_scale: int, nuclei_channel: int, glcm_levels: int,
                   glcm_distances, smoothing_sigma: float, min_nucleus_area: int) -> np.ndarray:
    n, channels, height, width = pixels.shape
    rows = pixels.reshape(n * channels, height, width)
    hist = histograms(rows, full_scale + 1)
    intensity = intensity_statistics(hist, full_scale)
    column = INTENSITY_STATS.index
    levels_image = quantize(rows, intensity[:, column("q01")] * full_scale, intensity[:, column("q99")] * full_scale,
                            glcm_levels)
    texture = [glcm_statistics(cooccurrence(levels_image, glcm_levels, d)) for d in glcm_distances]
    variance = (intensity[:, column("std")] * full_scale) ** 2
    texture.append(gradient_statistics(rows, variance))
    nuclei, per_channel = nuclei_features(pixels, full_scale, nuclei_channel, smoothing_sigma, min_nucleus_area)
    per_image = lambda a: a.reshape(n, -1)  # noqa: E731  (rows are image-major, channel-minor)
    return np.concatenate([per_image(intensity), per_image(np.concatenate(texture, axis=1)), nuclei,
                           per_image(per_channel)], axis=1)


def handcrafted_features(pixels: np.ndarray, channel_names: list[str] | None = None, nuclei_channel: int = 0, *,
                         glcm_levels: int = 8, glcm_distances=(1, 3), smoothing_sigma: float = 1.0,
                         min_nucleus_area: int = 10, chunk_size: int = 32) -> pd.DataFrame:
    """(N, C, H, W) images -> DataFrame (N rows, columns `feature_names(channel_names, glcm_distances)`)."""
    levels, full_scale = integer_levels(pixels)
    n, channels, height, width = levels.shape
    names = list(channel_names) if channel_names is not None else default_channel_names(channels)
    if len(names) != channels:
        raise UserInputError(f"{len(names)} channel_names given for images with {channels} channels")
    if not 0 <= nuclei_channel < channels:
        raise UserInputError(f"nuclei_channel must be in [0, {channels}), got {nuclei_channel}")
    check_options(glcm_levels, glcm_distances, smoothing_sigma, min_nucleus_area, height, width)
    blocks = [chunk_features(levels[start:start + chunk_size], full_scale, nuclei_channel, glcm_levels,
                             glcm_distances, smoothing_sigma, min_nucleus_area)
              for start in range(0, n, chunk_size)]
    columns = feature_names(names, glcm_distances)
    data = np.concatenate(blocks) if blocks else np.zeros((0, len(columns)))
    return pd.DataFrame(data, columns=columns)


class HandcraftedEmbedder:
    """The hand-crafted features behind a model's embedding API: `.embed(pixels) -> (N, D)` float32."""

    def __init__(self, channel_names: list[str], nuclei_channel: int = 0, **options):
        self.channel_names = list(channel_names)
        self.nuclei_channel = nuclei_channel
        self.options = options
        self.feature_names = feature_names(self.channel_names, options.get("glcm_distances", (1, 3)))

    @property
    def embed_dim(self) -> int:
        return len(self.feature_names)

    def embed(self, pixels) -> np.ndarray:
        """pixels: (N, C, H, W) numpy array or torch tensor (uint8, uint16, float in [0, 1])."""
        if hasattr(pixels, "detach"):  # a torch tensor, possibly on an accelerator
            pixels = pixels.detach().cpu().numpy()
        table = handcrafted_features(pixels, self.channel_names, self.nuclei_channel, **self.options)
        return table.to_numpy(dtype=np.float32)
