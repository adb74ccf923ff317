"""PNG figures: a segmentation overlay on the middle slice (like the paper's Fig. 5) and training curves."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..common.files import write_bytes
from ..data.preprocess import PLANE_AXIS, orient


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int) -> Path:
    """A figure through the one write path (common.files): rendered in memory, written, read back, renamed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return write_bytes(buffer.getvalue(), path)


def _middle_slice(image: sitk.Image, axis: int) -> np.ndarray:
    array = sitk.GetArrayFromImage(orient(image))      # [S-I, P-A, L-R] after LPS orientation
    s = np.take(array, array.shape[2 - axis] // 2, axis=2 - axis)
    return s[::-1] if axis != 2 else s                 # superior at the top for sagittal/coronal


def overlay_png(scan: sitk.Image, prediction: sitk.Image, path: str | Path, reference: Optional[sitk.Image] = None,
                plane: str = "sagittal", title: str = "") -> Path:
    plt = pyplot()
    axis = PLANE_AXIS[plane]
    img = _middle_slice(scan, axis)
    spacing = orient(scan).GetSpacing()
    in_plane = [spacing[a] for a in range(3) if a != axis]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(img, cmap="gray", aspect=in_plane[1] / in_plane[0])  # row spacing / column spacing
    ax.contour(_middle_slice(prediction, axis) > 0, [0.5], colors="red", linewidths=1.0)
    if reference is not None:
        ax.contour(_middle_slice(reference, axis) > 0, [0.5], colors="lime", linewidths=1.0, linestyles="dashed")
    ax.set_title(title + ("\nred: model, green dashed: reference" if reference is not None else ""), fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def training_curve_png(history: Sequence[dict], curve: Sequence[dict], path: str | Path, title: str = "",
                       val_curve: Sequence[dict] = ()) -> Path:
    """Training loss and Dice over short windows (`curve`) and validation Dice (`history`, `val_curve`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        x = [c["epochs_done"] for c in curve]
        ax.plot(x, [c["train_dice"] for c in curve], "-", label="training Dice")
        ax.plot(x, [c["loss"] for c in curve], "-", alpha=0.7, label="loss")
    val = sorted([(h["epochs_done"], h["val_dice"]) for h in list(history) + list(val_curve)
                  if h.get("val_dice") is not None])
    if val:
        ax.plot(*zip(*val), "s-", color="green", label="validation Dice")
    ax.set_xlabel("epochs (one epoch shows every patch N times)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)
