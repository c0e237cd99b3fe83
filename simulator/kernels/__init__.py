"""Integer kernels: private ``@njit`` loops behind thin checked wrappers.

``gemm`` (exact integer GEMM backends), ``output_stage`` (bias, dyadic
requantization, fused residual add, saturation), ``softmax``, ``gelu``,
``layernorm``. Every kernel states its formula; the formulas themselves live
in `simulator.fixedpoint` and `simulator.int_nonlinear`.
"""
