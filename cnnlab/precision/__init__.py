"""Precision: 16-bit weight formats with stochastic rounding, master weights stored in them, and
detection of non-finite losses and gradients."""
from cnnlab.precision.finite import Diverged, check_finite, weight_memory
from cnnlab.precision.rounding import DTYPES, Format, weight_format
from cnnlab.precision.weights import LowPrecision, LowPrecisionAdamW, LowPrecisionSGD

__all__ = ["DTYPES", "Diverged", "Format", "LowPrecision", "LowPrecisionAdamW", "LowPrecisionSGD", "check_finite",
           "weight_format", "weight_memory"]
