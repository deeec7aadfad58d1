"""Numeric kernels: explicit interpolation operators and the fused predictability-error solver."""
