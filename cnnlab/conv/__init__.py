"""Convolution algorithms: pure torch functions `(x, w, b, stride, padding, dilation) -> y` with
F.conv2d's semantics (cross-correlation, NCHW, groups 1), in a registry, so that they run on CPU and
GPU and autograd differentiates through them.
"""
from __future__ import annotations

from cnnlab.registry import Registry

ALGORITHMS: Registry = Registry("convolution algorithm")

from cnnlab.conv import algorithms as _algorithms  # noqa: E402,F401  (registers the algorithms)
