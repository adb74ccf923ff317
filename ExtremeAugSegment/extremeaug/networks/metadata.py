"""The contract between export and segmentation: where the model's metadata lives in the ONNX file.

Kept free of torch so that segmenting needs only onnxruntime, SimpleITK and numpy.
"""
from __future__ import annotations

METADATA_KEY = "extremeaug"
FORMAT_VERSION = 1
