"""Segmentation: the project's nnU-Net model (PyTorch or ONNX), external parenchyma models, the cortex split, the trainers."""
