"""Integer datapath of quantized Vision Transformers (numba), the frozen
`QuantizedViT` description both executors read, and the trace of what ran.

Dependency direction: `simulator` never imports `reference` or `hwmodels`.
"""
