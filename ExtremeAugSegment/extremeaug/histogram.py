"""Linear histogram matching, computed as ITK's HistogramMatchingImageFilter (mean threshold on) computes it,
in numpy: a quantile table from 1-D histograms, then one piecewise-linear map of every voxel.

Why not the filter: on a 67-slice scan it took 0.2-0.25 s of segmentation on two cores (single-threaded
histograms, a per-voxel search over the match points); this takes half that: the template's side of the
table is computed once per model and the map is one np.interp. Its output equals the filter's, bit for bit
on the real scans (Testing/test_preprocess.py compares them on phantoms and real scans).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple

import numpy as np

f32 = np.float32


def quantile_table(values: np.ndarray, levels: int, points: int) -> Tuple[float, np.ndarray]:
    """(minimum, [threshold, quantiles 1..points, maximum]) as the filter finds them: a histogram of `levels`
    bins over [mean, max] (float32 bin edges, the first bin widened down to the minimum) and ITK's
    `Histogram::Quantile` interpolation inside the bin a quantile falls in."""
    values = values.ravel()
    vmin, vmax = f32(values.min()), f32(values.max())
    threshold = f32(values.mean(dtype=np.float64))
    interval = f32((vmax - threshold) / f32(levels))
    mins = (threshold + np.arange(levels, dtype=f32) * interval).astype(f32)
    maxs = np.append(mins[1:], vmax).astype(f32)
    mins[0] = vmin
    counted = values[values >= threshold]
    counts = np.bincount(np.searchsorted(mins[1:], counted, side="right"), minlength=levels).astype(np.float64)
    total = counts.sum()
    table = [float(threshold)]
    for j in range(1, points + 1):
        table.append(_quantile(counts, total, mins, maxs, j / (points + 1.0)))
    table.append(float(vmax))
    return float(vmin), np.asarray(table)


def _quantile(counts: np.ndarray, total: float, mins: np.ndarray, maxs: np.ndarray, p: float) -> float:
    if p < 0.5:
        cumulative = np.cumsum(counts) / total
        n = min(int(np.searchsorted(cumulative, p, side="left")), len(counts) - 1)   # first bin reaching p
        before = cumulative[n - 1] if n else 0.0
        return float(mins[n]) + (p - before) / (counts[n] / total) * (float(maxs[n]) - float(mins[n]))
    above = 1.0 - np.cumsum(counts[::-1]) / total          # what lies above each bin, from the top down
    reached = above <= p
    m = int(np.argmax(reached)) if reached.any() else len(counts) - 1
    n = len(counts) - 1 - m
    previous = above[m - 1] if m else 1.0
    return float(maxs[n]) - (previous - p) / (counts[n] / total) * (float(maxs[n]) - float(mins[n]))


@lru_cache(maxsize=8)
def _reference(template: Tuple[float, ...], levels: int, points: int) -> Tuple[float, np.ndarray]:
    return quantile_table(np.asarray(template, f32), levels, points)


def match_histogram(array: np.ndarray, template: Sequence[float], levels: int, points: int) -> np.ndarray:
    """`array`'s intensities mapped onto the template's (float32, not clipped).

    The filter's map is the line through (minimum, template minimum) and the table's points, taken between
    consecutive points (below the threshold: from the minimum): np.interp's own formula, in one C pass. Equal
    table entries leave an empty segment that neither ever uses."""
    smin, source = quantile_table(array, levels, points)
    rmin, reference = _reference(tuple(template), levels, points)
    return np.interp(array, np.concatenate([[smin], source]), np.concatenate([[rmin], reference])).astype(f32)
