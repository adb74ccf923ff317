"""Linear histogram matching, computed as ITK's HistogramMatchingImageFilter (mean threshold on) computes it,
in numpy: a quantile table from 1-D histograms, then one piecewise-linear map of every voxel.

Why not the filter: on a 67-slice scan it took 0.2-0.25 s of segmentation on two cores (single-threaded
histograms, a per-voxel search over the match points); this takes a quarter of that: the template's side of
the table is computed once per model, the histogram's bins are found by arithmetic and the map is np.interp.
Its output equals the filter's, bit for bit on the real scans (Testing/test_preprocess.py compares them on
phantoms and real scans).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np

f32 = np.float32
CHUNK = 1 << 16


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
    counts = np.bincount(bin_index(counted, mins, threshold, interval), minlength=levels).astype(np.float64)
    total = counts.sum()
    table = [float(threshold)]
    for j in range(1, points + 1):
        table.append(_quantile(counts, total, mins, maxs, j / (points + 1.0)))
    table.append(float(vmax))
    return float(vmin), np.asarray(table)


def bin_index(values: np.ndarray, mins: np.ndarray, threshold: np.float32, interval: np.float32) -> np.ndarray:
    """`np.searchsorted(mins[1:], values, side="right")` for values >= threshold: each value's bin among the
    float32 lower edges `mins` (threshold + k * interval, rounded). The width gives a guess that is then moved
    against the edges themselves until it is exact, as np.histogram does: a third of a binary search's time."""
    last = len(mins) - 1
    if not interval > 0:
        return np.searchsorted(mins[1:], values, side="right")
    guess = np.clip((values - threshold) / interval, 0, last).astype(np.intp)
    while True:
        down = (guess > 0) & (values < mins[guess])
        up = (guess < last) & (values >= mins[np.minimum(guess + 1, last)])
        if not (down.any() or up.any()):
            return guess
        guess += up
        guess -= down


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


def match_histogram(array: np.ndarray, template: Sequence[float], levels: int, points: int,
                    source: Optional[np.ndarray] = None) -> np.ndarray:
    """`array`'s intensities mapped onto the template's (float32, not clipped), by the map that matches `source`'s
    histogram (default: `array`'s own; a padded copy of a scan is matched as the scan is).

    The filter's map is the line through (minimum, template minimum) and the table's points, taken between
    consecutive points (below the threshold: from the minimum): np.interp's own formula, in one C pass. Equal
    table entries leave an empty segment that neither ever uses."""
    smin, source = quantile_table(array if source is None else source, levels, points)
    rmin, reference = _reference(tuple(template), levels, points)
    xp, fp = np.concatenate([[smin], source]), np.concatenate([[rmin], reference])
    flat, out = array.ravel(), np.empty(array.size, f32)
    for start in range(0, flat.size, CHUNK):   # np.interp's float64 copies stay in the cache: 1.3x faster
        out[start:start + CHUNK] = np.interp(flat[start:start + CHUNK], xp, fp)
    return out.reshape(array.shape)
