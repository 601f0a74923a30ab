"""Triton kernels, installed as `specdec.kernels` (each kernel beside its host wrapper)."""
