"""Integer datapath of quantized Vision Transformers (numba): the typed graph (`ir`), the one
walk (`walk`), the frozen `QuantizedGraph` both executors read (`qgraph`), the numba op set and
executor (`int_ops`), and the trace of what ran.

Dependency direction: `simulator` never imports `reference` or `hwmodels`.
"""
