"""From per-structure probabilities to a label map: the slices' probabilities tied across slices, the threshold
and the choice between structures, the clean-up of connected components, and the uncertainty map. Segmentation
decides a scan with these, and training decides its pseudo-labels of unlabeled scans with the same functions, so a
pseudo-label is what `segment` would have given."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..common.structures import Structure
from .labels import label_dtype

SLICE_FWHM_MM = 2.0   # `across_slices`: a neighbour 1 mm away weighs half the slice itself, one 3 mm away 0.2 %


def across_slices(probs: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Each slice's probabilities averaged with its two neighbours', weighted by a Gaussian of their distance
    (SLICE_FWHM_MM full width at half maximum; the first and last slice count themselves as their missing neighbour).

    The network sees one slice at a time, so nothing else ties a structure's outline in one slice to the next; on
    1 mm slices this is the kernel [1, 2, 1] / 4; slices 3 mm or more apart it all but leaves as they are.

    Args:
        probs: the probabilities of a scan's slices in order, [n, K, S, S].
        spacing_mm: the distance between two slices.
    """
    w = 0.5 ** ((spacing_mm / (SLICE_FWHM_MM / 2)) ** 2)
    out = probs.copy()   # summed in place: a scan's probabilities can be a large share of the memory
    out[1:] += w * probs[:-1]
    out[:-1] += w * probs[1:]
    out[0] += w * probs[0]   # the first and last slice: their own missing neighbour (both, for a single slice)
    out[-1] += w * probs[-1]
    out /= 1 + 2 * w
    return out


def label_array(probs: np.ndarray, labels: Sequence[Structure], threshold: float, union: bool = False) -> np.ndarray:
    """Per voxel, the value of its most probable structure where that probability passes `threshold`, else 0.

    Args:
        probs: one probability per structure of `labels` and voxel, [K, ...].
        union: a voxel is foreground where the probability that it belongs to any structure, 1 - prod(1 - p_k),
            passes `threshold` (two neighbouring structures that share a voxel's probability keep it); the same
            as the highest probability with one structure."""
    values = np.array([lab.value for lab in labels])
    chosen = values[probs.argmax(axis=0)] if len(values) > 1 else values[0]
    foreground = 1 - np.prod(1 - probs, axis=0) if union and len(values) > 1 else probs.max(axis=0)
    return np.where(foreground > threshold, chosen, 0).astype(label_dtype(labels))


def uncertainty_map(probs: np.ndarray) -> np.ndarray:
    """Per voxel, 1 - the margin between its two most likely classes, in [0, 1], from probabilities [K, ...].

    The classes are the K structures and background, whose score is 1 - the highest structure probability. With
    one structure this is 1 - |2p - 1|; with several, two confident, competing structures (a disc that could be
    L3-L4 or L4-L5) count as uncertain too, which the highest probability alone would hide."""
    ranked = np.sort(probs, axis=0)
    first = ranked[-1]
    second = ranked[-2] if len(probs) > 1 else np.zeros_like(first)
    margin = np.where(first >= 0.5, first - np.maximum(1 - first, second), 1 - 2 * first)
    return (1 - margin).astype(np.float32)


def clean_structures(labelmap: sitk.Image, labels, min_mm3: float = 0.0, keep_largest: bool = False,
                     min_relative: float = 0.0) -> sitk.Image:
    """Per structure, drop connected components smaller than `min_mm3` (the paper's false-positive specks),
    smaller than `min_relative` times the structure's largest component and, with `keep_largest`, all but its
    largest component."""
    if not (min_mm3 and min_mm3 > 0) and not keep_largest and not min_relative > 0:
        return labelmap
    voxel_mm3 = float(np.prod(labelmap.GetSpacing()))
    min_size = int(np.ceil(min_mm3 / voxel_mm3)) if min_mm3 and min_mm3 > 0 else 0
    out = sitk.GetArrayFromImage(labelmap)
    for lab in labels:
        relabel = sitk.RelabelComponentImageFilter()   # components ranked by size, the largest is 1
        relabel.SetMinimumObjectSize(min_size)
        ranked = sitk.GetArrayFromImage(relabel.Execute(sitk.ConnectedComponent(labelmap == lab.value)))
        sizes = relabel.GetSizeOfObjectsInPixels()
        kept = 1 if keep_largest else sum(1 for n in sizes if sizes and n >= min_relative * sizes[0])
        out[(out == lab.value) & ((ranked == 0) | (ranked > kept))] = 0
    cleaned = sitk.GetImageFromArray(out)
    cleaned.CopyInformation(labelmap)
    return cleaned
