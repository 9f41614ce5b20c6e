"""Hand-crafted features against direct numpy / scipy computations and hand-built images."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from maefast.embedding.handcrafted import (
    GLCM_STATS,
    HandcraftedEmbedder,
    cooccurrence,
    feature_names,
    glcm_statistics,
    handcrafted_features,
)


def columns(table, channels, stat, group="intensity"):
    return table[[f"{ch}_{group}_{stat}" for ch in channels]].to_numpy()


@pytest.mark.parametrize("dtype, full_scale", [(np.uint8, 255), (np.uint16, 65535)])
def test_intensity_statistics_match_numpy_and_scipy(dtype, full_scale):
    rng = np.random.default_rng(0)
    # images at very different levels and spreads, so one chunk mixes them
    scales = rng.uniform(0.05, 1.0, (5, 3, 1, 1))
    pixels = (rng.beta(2, 5, (5, 3, 40, 48)) * scales * full_scale).astype(dtype)
    pixels[1, 2, :2] = full_scale  # some saturation
    table = handcrafted_features(pixels, ["DNA", "ER", "RNA"])
    assert table.shape == (5, len(feature_names(["DNA", "ER", "RNA"])))
    x = pixels.reshape(5, 3, -1).astype(np.float64) / full_scale
    expected = {
        "mean": x.mean(-1), "std": x.std(-1), "min": x.min(-1), "max": x.max(-1),
        "q01": np.quantile(x, 0.01, axis=-1), "q05": np.quantile(x, 0.05, axis=-1),
        "q25": np.quantile(x, 0.25, axis=-1), "median": np.median(x, axis=-1),
        "q75": np.quantile(x, 0.75, axis=-1), "q95": np.quantile(x, 0.95, axis=-1),
        "q99": np.quantile(x, 0.99, axis=-1), "skew": scipy.stats.skew(x, axis=-1),
        "kurtosis": scipy.stats.kurtosis(x, axis=-1), "saturated": (pixels.reshape(5, 3, -1) == full_scale).mean(-1),
    }
    for stat, values in expected.items():
        np.testing.assert_allclose(columns(table, ["DNA", "ER", "RNA"], stat), values, rtol=1e-7, atol=1e-9,
                                   err_msg=stat)
    assert table["RNA_intensity_saturated"].iloc[1] > 0


def test_moments_stay_exact_for_a_narrow_image_far_from_the_others():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, (2, 1, 32, 32)).astype(np.uint16)
    pixels[1] = rng.integers(40000, 40012, (1, 32, 32))  # spread of a few levels, far from the chunk mean
    table = handcrafted_features(pixels)
    x = pixels[1, 0].astype(np.float64).ravel() / 65535
    np.testing.assert_allclose(table["ch0_intensity_skew"].iloc[1], scipy.stats.skew(x), rtol=1e-6)
    np.testing.assert_allclose(table["ch0_intensity_kurtosis"].iloc[1], scipy.stats.kurtosis(x), rtol=1e-6)


def test_float_input_is_read_at_16_bits_and_a_constant_image_has_no_spread():
    rng = np.random.default_rng(2)
    pixels = rng.random((2, 2, 24, 24))
    pixels[1, 1] = 0.25
    table = handcrafted_features(pixels)
    x = np.rint(pixels[0, 0] * 65535).ravel() / 65535
    np.testing.assert_allclose(table["ch0_intensity_mean"].iloc[0], x.mean(), rtol=1e-9)
    np.testing.assert_allclose(table["ch0_intensity_q95"].iloc[0], np.quantile(x, 0.95), rtol=1e-9)
    constant = table.iloc[1]
    assert constant["ch1_intensity_std"] == 0 and constant["ch1_intensity_skew"] == 0
    assert constant["ch1_intensity_kurtosis"] == 0
    np.testing.assert_allclose(constant["ch1_intensity_median"], round(0.25 * 65535) / 65535)


def brute_force_glcm(levels_image, levels, distance):
    counts = np.zeros((levels, levels))
    height, width = levels_image.shape
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, distance), (distance, 0)):
                if y + dy < height and x + dx < width:
                    a, b = levels_image[y, x], levels_image[y + dy, x + dx]
                    counts[a, b] += 1
                    counts[b, a] += 1
    return counts


@pytest.mark.parametrize("distance", [1, 3])
def test_cooccurrence_and_haralick_statistics_match_their_definitions(distance):
    rng = np.random.default_rng(3)
    levels_image = rng.integers(0, 5, (2, 9, 11)).astype(np.uint8)
    counts = cooccurrence(levels_image, 5, distance)
    for row in range(2):
        np.testing.assert_array_equal(counts[row], brute_force_glcm(levels_image[row], 5, distance))
    stats = glcm_statistics(counts)
    p = counts[0] / counts[0].sum()
    i, j = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    mu_i, mu_j = (p * i).sum(), (p * j).sum()
    sd_i, sd_j = np.sqrt((p * (i - mu_i) ** 2).sum()), np.sqrt((p * (j - mu_j) ** 2).sum())
    expected = {
        "contrast": (p * (i - j) ** 2).sum(), "homogeneity": (p / (1 + (i - j) ** 2)).sum(),
        "energy": (p ** 2).sum(), "correlation": (p * (i - mu_i) * (j - mu_j)).sum() / (sd_i * sd_j),
        "entropy": -(p[p > 0] * np.log2(p[p > 0])).sum(),
    }
    for column, stat in enumerate(GLCM_STATS):
        np.testing.assert_allclose(stats[0, column], expected[stat], rtol=1e-10, err_msg=stat)


def test_texture_separates_stripes_from_blocks():
    rng = np.random.default_rng(4)
    stripes = np.where(np.arange(32) % 2, rng.integers(200, 256, (32, 32)), rng.integers(0, 50, (32, 32)))
    blocks = np.where((np.arange(32) // 8) % 2, rng.integers(200, 256, (32, 32)), rng.integers(0, 50, (32, 32)))
    pixels = np.stack([stripes, blocks])[:, None].astype(np.uint8)
    table = handcrafted_features(pixels)
    assert table["ch0_texture_contrast_d1"].iloc[0] > 5 * table["ch0_texture_contrast_d1"].iloc[1]
    assert table["ch0_texture_correlation_d1"].iloc[1] > 0.5 > table["ch0_texture_correlation_d1"].iloc[0]
    # gradient / Laplacian energy over the variance, against the direct formulas
    x = stripes.astype(np.float64)
    dx, dy = np.diff(x, axis=1), np.diff(x, axis=0)
    gradient = ((dx ** 2).sum() + (dy ** 2).sum()) / (dx.size + dy.size) / x.var()
    laplacian = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    np.testing.assert_allclose(table["ch0_texture_gradient_energy"].iloc[0], gradient, rtol=1e-5)
    np.testing.assert_allclose(table["ch0_texture_laplacian_energy"].iloc[0], (laplacian ** 2).mean() / x.var(),
                               rtol=1e-5)


def disk(shape, cy, cx, ry, rx=None):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    rx = ry if rx is None else rx
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def cell_image(rng):
    """Nuclei channel: two disks and a 2x2 speck on a dim noisy background; channel 1: a value per disk."""
    shape = (96, 96)
    small, large = disk(shape, 25, 25, 7), disk(shape, 60, 55, 15)
    nuclei = rng.integers(0, 40, shape)
    nuclei[small | large] = rng.integers(180, 256, (small | large).sum())
    nuclei[85:87, 5:7] = 250
    other = rng.integers(0, 30, shape)
    other[small], other[large] = 100, 200
    return np.stack([nuclei, other]).astype(np.uint8), small, large


def test_known_objects_give_their_count_areas_and_intensities():
    rng = np.random.default_rng(5)
    image, small, large = cell_image(rng)
    table = handcrafted_features(image[None], ["DNA", "ER"], nuclei_channel=0, smoothing_sigma=0.0)
    row = table.iloc[0]
    areas = np.array([small.sum(), large.sum()], dtype=float)
    assert row["nuclei_count"] == 2  # the 4-pixel speck is below min_nucleus_area
    np.testing.assert_allclose(row["nuclei_area_mean"], areas.mean())
    np.testing.assert_allclose(row["nuclei_area_std"], areas.std())
    np.testing.assert_allclose(row["nuclei_area_fraction"], areas.sum() / 96 ** 2)
    assert row["nuclei_eccentricity_mean"] < 0.15 and row["nuclei_elongation_mean"] < 1.05
    assert 0.85 < row["nuclei_form_factor_mean"] < 1.1 and 0.95 < row["nuclei_ellipse_fill_mean"] < 1.05
    np.testing.assert_allclose(row["ER_nuclei_intensity_mean"], 150 / 255)
    np.testing.assert_allclose(row["ER_nuclei_intensity_std"], 50 / 255)
    outside = ~(small | large)
    np.testing.assert_allclose(row["ER_outside_intensity_mean"], image[1][outside].mean() / 255)
    np.testing.assert_allclose(row["DNA_nuclei_intensity_mean"],
                               (image[0][small].mean() + image[0][large].mean()) / 2 / 255)
    # default smoothing: the same objects, areas within a few percent
    smoothed = handcrafted_features(image[None], ["DNA", "ER"]).iloc[0]
    assert smoothed["nuclei_count"] == 2
    np.testing.assert_allclose(smoothed["nuclei_area_mean"], areas.mean(), rtol=0.05)


def test_ellipse_shape_and_images_without_nuclei():
    rng = np.random.default_rng(6)
    ellipse = disk((80, 80), 40, 40, 6, 18)
    nuclei = rng.integers(0, 30, (80, 80))
    nuclei[ellipse] = rng.integers(200, 256, ellipse.sum())
    empty = np.full((80, 80), 17)
    pixels = np.stack([nuclei, empty])[:, None].astype(np.uint8)
    table = handcrafted_features(pixels, smoothing_sigma=0.0)
    found = table.iloc[0]
    assert found["nuclei_count"] == 1 and found["nuclei_area_mean"] == ellipse.sum()
    np.testing.assert_allclose(found["nuclei_eccentricity_mean"], math.sqrt(1 - (6 / 18) ** 2), rtol=0.02)
    np.testing.assert_allclose(found["nuclei_elongation_mean"], 3.0, rtol=0.05)
    assert found["nuclei_eccentricity_std"] == 0
    nothing = table.iloc[1]
    assert nothing["nuclei_count"] == 0 and nothing["nuclei_area_mean"] == 0
    np.testing.assert_allclose(nothing["ch0_outside_intensity_mean"], 17 / 255)


def test_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, (5, 2, 32, 32)).astype(np.uint16)
    pixels[3] += 20000
    whole = handcrafted_features(pixels, chunk_size=32)
    pieces = handcrafted_features(pixels, chunk_size=2)
    np.testing.assert_allclose(pieces.to_numpy(), whole.to_numpy(), rtol=1e-9, atol=1e-12)


def test_embedder_matches_the_table_and_takes_tensors():
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (3, 2, 32, 32)).astype(np.uint8)
    embedder = HandcraftedEmbedder(["DNA", "Mito"], glcm_distances=(2,))
    features = embedder.embed(torch.from_numpy(pixels))
    table = handcrafted_features(pixels, ["DNA", "Mito"], glcm_distances=(2,))
    assert features.dtype == np.float32 and features.shape == (3, embedder.embed_dim)
    assert embedder.feature_names == list(table.columns) and "Mito_texture_contrast_d2" in embedder.feature_names
    np.testing.assert_allclose(features, table.to_numpy(dtype=np.float32))
    assert np.isfinite(features).all()


@pytest.mark.parametrize("pixels, kwargs, error, message", [
    (np.zeros((2, 16, 16), np.uint8), {}, ValueError, r"expected images \(N, C, H, W\)"),
    (np.full((1, 1, 8, 8), 1.5), {}, ValueError, r"must lie in \[0, 1\], got values in \[1.5, 1.5\]"),
    (np.ones((1, 1, 8, 8), np.int32), {}, TypeError, "uint8, uint16 or floating point in \\[0, 1\\], got int32"),
    (np.ones((1, 2, 8, 8), np.uint8), dict(channel_names=["DNA"]), ValueError,
     "1 channel_names given for images with 2"),
    (np.ones((1, 2, 8, 8), np.uint8), dict(nuclei_channel=2), ValueError, r"nuclei_channel must be in \[0, 2\)"),
    (np.ones((1, 1, 8, 8), np.uint8), dict(glcm_levels=32), ValueError, r"glcm_levels must be in \[2, 16\]"),
    (np.ones((1, 1, 8, 8), np.uint8), dict(glcm_distances=(8,)), ValueError, r"glcm_distances must be in \[1, 8\)"),
])
def test_bad_inputs_name_expected_and_given(pixels, kwargs, error, message):
    with pytest.raises(error, match=message):
        handcrafted_features(pixels, **kwargs)
