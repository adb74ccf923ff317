"""ExtremeAugSegment engine: train a residual U-Net from one labeled scan with extreme augmentation.

Stage packages, each importing only those before it: common -> data -> networks -> training -> inference ->
evaluation -> experiments -> project -> cli.
The engine imports neither Slicer nor Qt, so the CLI, the background trainer and the Slicer module share it.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .common.errors import ExtremeAugError

__all__ = ["ExtremeAugError", "__version__"]
