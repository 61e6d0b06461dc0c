"""Model building blocks: layers, metrics, ImageNet weights (offline), EfficientNet-Lite."""
