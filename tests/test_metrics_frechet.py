"""Fréchet distance and KID: closed forms, an independent sqrtm reference, and (un)biasedness."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.linalg

from vlm3d_ttg.metrics.bootstrap import bootstrap_ci
from vlm3d_ttg.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_with_ci,
    gaussian_statistics,
    kernel_inception_distance,
    mmd2_unbiased,
)


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def scipy_sqrtm_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook implementation (complex sqrtm of Σ₁Σ₂, real part kept), as an independent reference."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_2x2_closed_form_for_non_commuting_covariances(seed):
    # For 2×2 PSD M: tr √M = √(tr M + 2√det M), with M = Σ₁^½ Σ₂ Σ₁^½: tr M = tr Σ₁Σ₂, det M = det Σ₁ det Σ₂.
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, 2), random_spd(rng, 2)
    mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the case where a naive √(Σ₁)√(Σ₂) would be wrong
    expected = (
        ((mu1 - mu2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_matches_closed_form_for_covariances_sharing_eigenvectors():
    # Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ ⇒ FD = ‖Δμ‖² + Σ (√a − √b)².
    rng = np.random.default_rng(3)
    dim = 32
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_of_samples_converges_to_the_gaussians_closed_form():
    rng = np.random.default_rng(4)
    dim = 6
    s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
    mu1 = rng.normal(size=dim)
    mu2 = mu1 + 0.5 * rng.normal(size=dim)
    expected = frechet_distance(mu1, s1, mu2, s2)
    x = rng.multivariate_normal(mu1, s1, size=20000)
    y = rng.multivariate_normal(mu2, s2, size=20000)
    # Sampling error of FD here is ~0.05 (measured over seeds); a 5 % error in the formula would fail.
    assert frechet_distance_from_features(x, y) == pytest.approx(expected, abs=0.15)
    assert expected > 3.0


@pytest.mark.parametrize("n_items, dim", [(300, 32), (40, 64)])
def test_frechet_matches_scipy_sqrtm_on_random_features(n_items, dim):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n_items, dim)) @ rng.normal(size=(dim, dim))
    y = rng.normal(size=(n_items, dim)) * 1.5 + 0.3
    reference = scipy_sqrtm_frechet(x, y)
    for method in ("covariance", "samples", "auto"):
        assert frechet_distance_from_features(x, y, method) == pytest.approx(reference, rel=1e-7), method


def test_covariance_and_sample_space_routes_agree_with_unequal_sizes():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 50))
    y = rng.normal(size=(45, 50)) @ np.diag(rng.uniform(0.5, 2.0, 50))
    by_covariance = frechet_distance_from_features(x, y, "covariance")
    by_samples = frechet_distance_from_features(x, y, "samples")
    # N < d: the covariance route takes square roots of round-off-level eigenvalues (~1e-15 → ~3e-8
    # each), which is why 'auto' prefers the sample-space route there.
    assert by_samples == pytest.approx(by_covariance, rel=1e-7)


@pytest.mark.parametrize("n_items, dim", [(500, 16), (20, 64)])
def test_frechet_of_a_set_against_itself_is_zero(n_items, dim):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_items, dim)) * 10.0
    scale = np.trace(np.cov(x, rowvar=False))
    for method in ("covariance", "samples"):
        assert frechet_distance_from_features(x, x, method) <= 1e-9 * scale
    assert frechet_distance(*gaussian_statistics(x), *gaussian_statistics(x)) <= 1e-9 * scale


def test_bootstrap_resamples_from_the_pooled_gram_equal_direct_recomputation():
    from vlm3d_ttg.metrics.frechet import pooled_frechet_resamples

    rng = np.random.default_rng(16)
    x = rng.normal(size=(25, 40)) + 5.0  # far from the origin: the Gram route must not lose precision
    y = rng.normal(size=(30, 40)) * 1.3 + 5.2
    rows_x, rows_y = rng.integers(0, 25, size=(4, 25)), rng.integers(0, 30, size=(4, 30))
    via_gram = pooled_frechet_resamples([x, y], [(0, 1)], [rows_x, rows_y], method="samples")[:, 0]
    direct = [scipy_sqrtm_frechet(x[rx], y[ry]) for rx, ry in zip(rows_x, rows_y)]
    np.testing.assert_allclose(via_gram, direct, rtol=1e-7)
    by_covariance = pooled_frechet_resamples([x, y], [(0, 1)], [rows_x, rows_y], method="covariance")[:, 0]
    np.testing.assert_allclose(by_covariance, direct, rtol=1e-6)


def test_frechet_ci_is_centred_on_the_value_despite_resampling_bias():
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(40, 64)), rng.normal(size=(40, 64)) + 0.2
    result = frechet_distance_with_ci(x, y, paired=True, n_resamples=300)
    assert result.ci_low < result.value < result.ci_high


def test_frechet_difference_detects_which_config_is_closer_to_the_reference():
    from vlm3d_ttg.metrics.frechet import frechet_difference_with_ci

    rng = np.random.default_rng(18)
    n_items, dim = 50, 64  # N < d, as in the benchmark (100 prompts, 2048-d Inception features)
    reference = rng.normal(size=(n_items, dim))
    base = reference + rng.normal(scale=1.0, size=(n_items, dim)) + 0.5  # shifted away from the reference
    guided = reference + rng.normal(scale=1.0, size=(n_items, dim))
    difference = frechet_difference_with_ci(base, guided, reference, paired_reference=True, n_resamples=300)
    assert difference.value == pytest.approx(difference.guided - difference.base)
    assert difference.guided == pytest.approx(frechet_distance_from_features(guided, reference))
    assert difference.ci_high < 0  # guided is closer, beyond item-sampling noise
    same = frechet_difference_with_ci(base, base, reference, n_resamples=100)
    assert same.value == 0.0 and same.ci_low == pytest.approx(0.0, abs=1e-9) and same.ci_high == pytest.approx(0.0, abs=1e-9)


def test_mmd2_unbiased_matches_a_direct_double_sum():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.2

    def k(a, b):
        return (a @ b / 5 + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_zero_in_expectation_for_one_distribution_while_fid_is_biased():
    rng = np.random.default_rng(9)
    dim, n_items, n_trials = 8, 30, 300
    kid, fid = np.empty(n_trials), np.empty(n_trials)
    for t in range(n_trials):
        x, y = rng.normal(size=(n_items, dim)), rng.normal(size=(n_items, dim))
        kid[t] = mmd2_unbiased(x, y)
        fid[t] = frechet_distance_from_features(x, y)
    standard_error = kid.std(ddof=1) / np.sqrt(n_trials)
    assert abs(kid.mean()) < 3 * standard_error
    # The Fréchet distance of two samples of one distribution is positive every time: biased at small N.
    assert fid.min() > 0 and fid.mean() > 20 * fid.std(ddof=1) / np.sqrt(n_trials)
    # And KID does see a real difference of the same size of sample.
    shifted = np.array([mmd2_unbiased(rng.normal(size=(n_items, dim)), rng.normal(size=(n_items, dim)) + 0.5) for _ in range(50)])
    assert shifted.mean() > 10 * shifted.std(ddof=1) / np.sqrt(50)


def test_resampled_mmd2_equals_mmd2_of_the_distinct_items_when_nothing_repeats():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(10, 4)) + 0.3
    from vlm3d_ttg.metrics.frechet import mmd2_unbiased_resampled, polynomial_kernel

    kernels = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    keep_x, keep_y = np.zeros(12), np.zeros(10)
    keep_x[[0, 3, 4, 7, 11]] = 1
    keep_y[[1, 2, 5, 9]] = 1
    expected = mmd2_unbiased(x[keep_x == 1], y[keep_y == 1])
    assert mmd2_unbiased_resampled(*kernels, keep_x, keep_y) == pytest.approx(expected, rel=1e-12)


def test_kid_bootstrap_resamples_are_unbiased_despite_duplicates():
    # Same distribution: the mean over bootstrap resamples stays near 0 (naive MMD² of resamples with
    # duplicated items would sit far above it).
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    result = kernel_inception_distance(x, y, n_resamples=400, seed=2)
    naive = np.mean([mmd2_unbiased(x[i], y[j]) for i, j in zip(rng.integers(0, 60, (100, 60)), rng.integers(0, 60, (100, 60)))])
    assert result.ci_low < 0.0 < result.ci_high
    assert naive > result.ci_high  # the bias that leaving out copies removes


def test_kid_result_reports_sizes_and_subsets():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(120, 16)), rng.normal(size=(80, 16))
    result = kernel_inception_distance(x, y, subset_size=50, n_subsets=20, n_resamples=100, seed=1)
    assert (result.n_generated, result.n_reference, result.subset_size, result.n_subsets) == (120, 80, 50, 20)
    assert result.ci_low <= 0.0 <= result.ci_high
    assert np.isfinite(result.std) and result.std > 0
    again = kernel_inception_distance(x, y, subset_size=50, n_subsets=20, n_resamples=100, seed=1)
    assert again == result


def test_small_n_warns_and_is_reported(caplog):
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.1
    with caplog.at_level(logging.WARNING, logger="vlm3d_ttg.metrics.frechet"):
        fd = frechet_distance_with_ci(x, y, paired=True, n_resamples=50)
        kid = kernel_inception_distance(x, y, n_resamples=50)
    assert not fd.full_rank and fd.n_generated == 20 and fd.feature_dim == 64
    assert kid.n_subsets == 1 and kid.subset_size == 20
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "rank-deficient" in messages and "KID" in messages
    assert fd.ci_low <= fd.ci_high

    big_x, big_y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlm3d_ttg.metrics.frechet"):
        full = frechet_distance_with_ci(big_x, big_y, n_resamples=20)
    assert full.full_rank and not caplog.records


def test_paired_bootstrap_needs_equal_sizes():
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match="paired"):
        frechet_distance_with_ci(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)), paired=True, n_resamples=5)


def test_bootstrap_ci_of_a_mean_covers_the_truth_about_as_often_as_it_says():
    rng = np.random.default_rng(13)
    covered = 0
    n_experiments = 200
    for e in range(n_experiments):
        values = rng.normal(loc=1.0, size=60)
        ci = bootstrap_ci(values, n_resamples=400, confidence=0.9, seed=e)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.82 <= covered / n_experiments <= 0.97
