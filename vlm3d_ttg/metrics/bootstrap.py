"""Percentile bootstrap over items: how much a statistic moves when the set of items is resampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic's value on all items, with a percentile bootstrap confidence interval."""

    value: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_items: int


def resample_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_items) item indices drawn with replacement, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n_resamples, n_items))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap `samples` (NaNs ignored)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail])
    return float(low), float(high)


def bias_shifted_interval(samples: np.ndarray, value: float, confidence: float) -> tuple[float, float]:
    """The percentile interval of `samples`, shifted by the bootstrap bias estimate (mean(samples) − value).

    For statistics that resampling with replacement itself biases (a resample's duplicated items
    lower a covariance's rank and raise a Fréchet distance), the raw percentile interval can miss
    the value altogether; the shift re-centres the spread on the value.
    """
    samples = np.asarray(samples, dtype=np.float64)
    bias = float(np.nanmean(samples)) - value
    low, high = percentile_interval(samples, confidence)
    return low - bias, high - bias


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """`statistic` of per-item `values` (first axis = items) with a percentile bootstrap CI over items."""
    values = np.asarray(values)
    n_items = len(values)
    if n_items == 0:
        raise ValueError("bootstrap_ci needs at least one item")
    value = float(statistic(values))
    indices = resample_indices(n_items, n_resamples, seed)
    samples = np.array([statistic(values[idx]) for idx in indices], dtype=np.float64)
    low, high = percentile_interval(samples, confidence)
    return BootstrapCI(value, low, high, confidence, n_resamples, n_items)
