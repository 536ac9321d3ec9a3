"""Validation of ONNX variants against the PyTorch original: datasets, reference runner, metrics, reports."""
