"""Fréchet distance (FID, CLIP-FID) and KID between two sets of image features, with N and CIs.

Fréchet distance between Gaussians fitted to the two feature sets (float64 throughout):

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}

The last trace is computed from symmetric eigendecompositions only: Σ₁^{1/2} = V diag(√λ) Vᵀ from
`eigh(Σ₁)`, then the eigenvalues of the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}. No complex
`sqrtm` of the non-symmetric Σ₁Σ₂ is ever formed, so there is no imaginary part to discard.

With N items of dimension d and N ≤ d (100 prompts against Inception's 2048 dimensions) the same
trace has an exact, much cheaper form in sample space: with centred feature matrices X, Y,

    tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = ‖Y Xᵀ‖_* / √((N₁−1)(N₂−1)),

the nuclear norm (sum of singular values) of the N₂×N₁ cross-Gram matrix, because the non-zero
eigenvalues of Σ₁^{1/2} Σ₂ Σ₁^{1/2} are those of (Y Xᵀ)(Y Xᵀ)ᵀ / ((N₁−1)(N₂−1)). This is what makes a
bootstrap over items affordable; `method` picks the route and both give the same number.

Below N = d + 1 the sample covariance is rank-deficient and FD is strongly biased upward: values
are only comparable at the same N against the same reference set. A warning is logged. To ask
whether guidance moved FD, use `frechet_difference_with_ci` (guided − base on the same items,
paired bootstrap), in which that bias largely cancels.

KID (Bińkowski et al. 2018) is the unbiased estimator of MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; it is unbiased at any N, so it is the
number to trust when N is small.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

from .bootstrap import bias_shifted_interval, percentile_interval, resample_indices

logger = logging.getLogger(__name__)

FrechetMethod = Literal["auto", "covariance", "samples"]

# Below this many items per set KID's subset estimates are too noisy to rank configs reliably.
KID_MIN_ITEMS = 50


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dims) array, got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name} needs at least 2 items for a covariance, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains non-finite values")
    return array


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of (items, dims) features."""
    array = _as_features(features, "features")
    return array.mean(axis=0), np.cov(array, rowvar=False, ddof=1).reshape(array.shape[1], array.shape[1])


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues → 0)."""
    symmetric = (np.asarray(matrix, dtype=np.float64) + np.asarray(matrix, dtype=np.float64).T) / 2.0
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} for PSD Σ₁, Σ₂, via symmetric eigendecompositions."""
    root1 = psd_sqrt(sigma1)
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    # FD ≥ 0 exactly; a tiny negative value is round-off in the cancellation, not information.
    return max(value, 0.0)


def _double_centre(gram: np.ndarray) -> np.ndarray:
    """H G H with H = I − 11ᵀ/n on each side: the Gram matrix of the centred rows (and columns)."""
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def frechet_distance_from_gram(gram_xx: np.ndarray, gram_yy: np.ndarray, gram_yx: np.ndarray) -> float:
    """Fréchet distance of two feature sets given only their inner products XXᵀ, YYᵀ and YXᵀ (uncentred).

    Everything FD needs is an inner product: ‖x̄ − ȳ‖² = mean(XXᵀ) + mean(YYᵀ) − 2 mean(YXᵀ),
    tr Σ = tr(H G H)/(N − 1), and the cross term is the nuclear norm of H (YXᵀ) H.
    """
    n1, n2 = len(gram_xx), len(gram_yy)
    mean_gap = float(gram_xx.mean() + gram_yy.mean() - 2.0 * gram_yx.mean())
    trace1 = float(np.trace(_double_centre(gram_xx))) / (n1 - 1)
    trace2 = float(np.trace(_double_centre(gram_yy))) / (n2 - 1)
    nuclear = float(np.linalg.svd(_double_centre(gram_yx), compute_uv=False).sum())
    trace_sqrt = nuclear / np.sqrt((n1 - 1) * (n2 - 1))
    return max(float(mean_gap + trace1 + trace2 - 2.0 * trace_sqrt), 0.0)


def _pooled_gram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # FD is translation invariant; removing the pooled mean first keeps the Gram-based means and
    # traces free of cancellation when features sit far from the origin.
    pooled = np.concatenate([x, y])
    pooled = pooled - pooled.mean(axis=0)
    return pooled @ pooled.T


def frechet_distance_from_samples(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets, computed in sample space.

    Exact (see the module docstring); costs O((N₁+N₂)²d + N³) instead of O(d³).
    """
    x = _as_features(features1, "features1")
    y = _as_features(features2, "features2")
    gram = _pooled_gram(x, y)
    n1 = len(x)
    return frechet_distance_from_gram(gram[:n1, :n1], gram[n1:, n1:], gram[n1:, :n1])


def _resolve_method(method: FrechetMethod, n_max: int, dim: int) -> FrechetMethod:
    if method == "auto":
        return "samples" if n_max < dim else "covariance"
    if method not in ("samples", "covariance"):
        raise ValueError(f"Unknown method '{method}'; use 'auto', 'covariance' or 'samples'")
    return method


def pooled_frechet_resamples(
    feature_sets: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], rows: Sequence[np.ndarray], method: FrechetMethod = "auto"
) -> np.ndarray:
    """Fréchet distances between resampled feature sets: out[r, p] = FD(sets[i][rows[i][r]], sets[j][rows[j][r]]) for pairs[p] = (i, j).

    In sample space the d-dimensional work is done once (one Gram matrix of all sets pooled);
    each resample then only indexes it, so 1000 resamples at N ≈ 100, d = 2048 take about a second.
    """
    sets = [_as_features(f, f"feature set {i}") for i, f in enumerate(feature_sets)]
    n_resamples = len(rows[0])
    out = np.empty((n_resamples, len(pairs)), dtype=np.float64)
    method = _resolve_method(method, max(len(f) for f in sets), sets[0].shape[1])
    if method == "covariance":
        for r in range(n_resamples):
            for p, (i, j) in enumerate(pairs):
                out[r, p] = frechet_distance(*gaussian_statistics(sets[i][rows[i][r]]), *gaussian_statistics(sets[j][rows[j][r]]))
        return out
    pooled = np.concatenate(sets)
    pooled = pooled - pooled.mean(axis=0)  # translation invariance; avoids cancellation in Gram means
    gram = pooled @ pooled.T
    offsets = np.cumsum([0] + [len(f) for f in sets])
    for r in range(n_resamples):
        for p, (i, j) in enumerate(pairs):
            rows_i, rows_j = rows[i][r] + offsets[i], rows[j][r] + offsets[j]
            out[r, p] = frechet_distance_from_gram(
                gram[np.ix_(rows_i, rows_i)], gram[np.ix_(rows_j, rows_j)], gram[np.ix_(rows_j, rows_i)]
            )
    return out


def frechet_distance_from_features(
    features1: np.ndarray, features2: np.ndarray, method: FrechetMethod = "auto"
) -> float:
    """Fréchet distance between the Gaussians fitted to two (items, dims) feature sets.

    `method`: 'covariance' (d×d eigendecompositions), 'samples' (N×N cross-Gram; exact, cheaper
    when N < d) or 'auto' (the cheaper one).
    """
    x = _as_features(features1, "features1")
    y = _as_features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"Feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if _resolve_method(method, max(len(x), len(y)), x.shape[1]) == "samples":
        return frechet_distance_from_samples(x, y)
    return frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (xᵀy / d + 1)³ between the rows of x and y."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(features1: np.ndarray, features2: np.ndarray) -> float:
    """Unbiased estimate of MMD² between two feature sets with the cubic polynomial kernel.

    Within-set sums leave out the diagonal (i = j), which is what removes the bias.
    """
    x = np.asarray(features1, dtype=np.float64)
    y = np.asarray(features2, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("MMD² needs at least 2 items per set")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def mmd2_unbiased_resampled(
    k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray
) -> float:
    """Unbiased MMD² of a bootstrap resample given as item multiplicities, from full-set kernel matrices.

    A resample drawn with replacement holds copies of one item; a pair of copies is a pair (i, i)
    in disguise, so within-set sums run over pairs of *distinct* items only:
    Σ_{i≠j} c_i c_j K_ij = cᵀKc − Σ c_i² K_ii over (Σc)² − Σ c_i² pairs.
    """
    def within(kernel: np.ndarray, counts: np.ndarray) -> float:
        pairs = counts.sum() ** 2 - (counts**2).sum()
        if pairs <= 0:
            return float("nan")  # a resample of one distinct item has no within-set pair
        return float((counts @ kernel @ counts - (counts**2 * np.diag(kernel)).sum()) / pairs)

    cross = float(counts_x @ k_xy @ counts_y / (counts_x.sum() * counts_y.sum()))
    return within(k_xx, counts_x) + within(k_yy, counts_y) - 2.0 * cross


@dataclass(frozen=True)
class FrechetResult:
    """A Fréchet distance with its bootstrap CI over items and the sizes it was computed at."""

    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    n_generated: int
    n_reference: int
    feature_dim: int
    full_rank: bool  # N ≥ d + 1 for both sets, so the covariances can be full rank

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the result."""
        return asdict(self)


@dataclass(frozen=True)
class FrechetDifference:
    """FD(guided, reference) − FD(base, reference) on the same items, with a paired bootstrap CI."""

    value: float  # negative: guided is closer to the reference than base
    ci_low: float
    ci_high: float
    base: float
    guided: float
    confidence: float
    n_resamples: int
    n_items: int
    n_reference: int
    feature_dim: int

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the result."""
        return asdict(self)


@dataclass(frozen=True)
class KIDResult:
    """KID: mean and std over random subsets, a bootstrap CI over items, and the sizes used."""

    value: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    subset_size: int
    n_subsets: int
    n_generated: int
    n_reference: int
    feature_dim: int

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the result."""
        return asdict(self)


def _paired_or_independent_indices(n_generated: int, n_reference: int, paired: bool, n_resamples: int, seed: int):
    generated_idx = resample_indices(n_generated, n_resamples, seed)
    if paired:
        if n_generated != n_reference:
            raise ValueError(f"paired=True needs equal set sizes, got {n_generated} and {n_reference}")
        return generated_idx, generated_idx
    return generated_idx, resample_indices(n_reference, n_resamples, seed + 1)


def _warn_if_rank_deficient(n_items: int, dim: int) -> bool:
    full_rank = n_items >= dim + 1
    if not full_rank:
        logger.warning(
            "Fréchet distance with N=%d items in %d dims: the covariance is rank-deficient (needs N ≥ %d) and "
            "the value is biased upward. Compare only at the same N and reference set, and prefer KID for small N.",
            n_items, dim, dim + 1,
        )
    return full_rank


def frechet_distance_with_ci(
    generated: np.ndarray,
    reference: np.ndarray,
    *,
    paired: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: FrechetMethod = "auto",
) -> FrechetResult:
    """Fréchet distance between generated and reference features with a bootstrap CI over items.

    `paired=True` when item i of both sets belongs together (e.g. a render and its input image):
    both are then resampled with the same indices. A resample's duplicated items lower its
    covariance rank and raise its FD, so the percentile interval is shifted back by that bootstrap
    bias (`bias_shifted_interval`): the CI shows the spread due to the choice of items around the
    value. To compare two configs use `frechet_difference_with_ci`, where that bias cancels.
    """
    x = _as_features(generated, "generated")
    y = _as_features(reference, "reference")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"Feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    full_rank = _warn_if_rank_deficient(min(len(x), len(y)), x.shape[1])
    value = frechet_distance_from_features(x, y, method)
    generated_idx, reference_idx = _paired_or_independent_indices(len(x), len(y), paired, n_resamples, seed)
    if n_resamples > 0:
        samples = pooled_frechet_resamples([x, y], [(0, 1)], [generated_idx, reference_idx], method)[:, 0]
        low, high = bias_shifted_interval(samples, value, confidence)
    else:
        low, high = float("nan"), float("nan")
    return FrechetResult(value, low, high, confidence, n_resamples, len(x), len(y), x.shape[1], full_rank)


def frechet_difference_with_ci(
    base: np.ndarray,
    guided: np.ndarray,
    reference: np.ndarray,
    *,
    paired_reference: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: FrechetMethod = "auto",
) -> FrechetDifference:
    """FD(guided, reference) − FD(base, reference), with a bootstrap CI resampling the same items for both.

    Row i of `base` and `guided` is the same item (prompt, seed). `paired_reference=True` when row i
    of `reference` belongs to that item too (e.g. the input image). The small-N bias of FD is the
    same for both configs and largely cancels in the difference, so this is the number to report
    when asking whether guidance moved FD.
    """
    a = _as_features(base, "base")
    b = _as_features(guided, "guided")
    r = _as_features(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"base and guided must hold the same items: shapes {a.shape} vs {b.shape}")
    if r.shape[1] != a.shape[1]:
        raise ValueError(f"Feature dims differ: {a.shape[1]} vs {r.shape[1]}")
    _warn_if_rank_deficient(min(len(a), len(r)), a.shape[1])
    fd_base = frechet_distance_from_features(a, r, method)
    fd_guided = frechet_distance_from_features(b, r, method)
    value = fd_guided - fd_base
    item_idx, reference_idx = _paired_or_independent_indices(len(a), len(r), paired_reference, n_resamples, seed)
    if n_resamples > 0:
        resampled = pooled_frechet_resamples([a, b, r], [(0, 2), (1, 2)], [item_idx, item_idx, reference_idx], method)
        low, high = bias_shifted_interval(resampled[:, 1] - resampled[:, 0], value, confidence)
    else:
        low, high = float("nan"), float("nan")
    return FrechetDifference(value, low, high, fd_base, fd_guided, confidence, n_resamples, len(a), len(r), a.shape[1])


def kernel_inception_distance(
    generated: np.ndarray,
    reference: np.ndarray,
    *,
    subset_size: int = 1000,
    n_subsets: int = 100,
    paired: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> KIDResult:
    """KID between generated and reference features (works for any feature extractor, e.g. CLIP).

    The value is the mean of the unbiased MMD² over `n_subsets` random subsets of
    min(subset_size, N) items per set (one full-set estimate when the subsets would be the whole
    sets); the CI resamples items (`paired` as in `frechet_distance_with_ci`), leaving pairs of
    copies of one item out of the within-set sums so that each resample stays unbiased.
    """
    x = _as_features(generated, "generated")
    y = _as_features(reference, "reference")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"Feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < KID_MIN_ITEMS:
        logger.warning(
            "KID with N=%d generated / %d reference items: unbiased but noisy below %d items; report its CI.",
            len(x), len(y), KID_MIN_ITEMS,
        )
    size = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    whole_sets = size == len(x) == len(y)
    subset_count = 1 if whole_sets else n_subsets
    estimates = np.empty(subset_count, dtype=np.float64)
    for s in range(subset_count):
        x_sub = x if whole_sets else x[rng.choice(len(x), size, replace=False)]
        y_sub = y if whole_sets else y[rng.choice(len(y), size, replace=False)]
        estimates[s] = mmd2_unbiased(x_sub, y_sub)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    generated_idx, reference_idx = _paired_or_independent_indices(len(x), len(y), paired, n_resamples, seed + 2)
    samples = np.empty(n_resamples, dtype=np.float64)
    for r in range(n_resamples):
        counts_x = np.bincount(generated_idx[r], minlength=len(x)).astype(np.float64)
        counts_y = np.bincount(reference_idx[r], minlength=len(y)).astype(np.float64)
        samples[r] = mmd2_unbiased_resampled(k_xx, k_yy, k_xy, counts_x, counts_y)
    low, high = percentile_interval(samples, confidence) if n_resamples > 0 else (float("nan"), float("nan"))
    return KIDResult(
        value=float(estimates.mean()),
        std=float(estimates.std(ddof=1)) if subset_count > 1 else float("nan"),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_resamples=n_resamples,
        subset_size=size,
        n_subsets=subset_count,
        n_generated=len(x),
        n_reference=len(y),
        feature_dim=x.shape[1],
    )
