"""Stage 4, segmentation: an ONNX model through onnxruntime onto the scan's own grid (segmenter); needs no torch."""
