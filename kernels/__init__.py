"""Triton kernels (installed as mlkd_fast.kernels). Importing this package needs triton."""
