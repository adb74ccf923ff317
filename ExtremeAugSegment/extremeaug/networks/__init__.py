"""Stage 2, the network: the residual U-Net (model), its ONNX export checked against torch (export) and the
metadata contract between export and segmentation (metadata, free of torch)."""
