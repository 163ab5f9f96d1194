"""Towers to verified ONNX / TensorRT model bundles (filled by the export issue)."""
