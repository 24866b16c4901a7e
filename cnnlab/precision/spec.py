"""`optim.weights`: store the weights in a 16-bit format and round every update back into it."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cnnlab.precision.rounding import DTYPES, weight_format
from cnnlab.spec import OptimSpec, Problem, Spec


class WeightsSpec(Spec):
    """16-bit master weights: the update is computed in float32 and written back with `rounding`."""

    dtype: Literal[DTYPES]  # type: ignore[valid-type]  # bf16 | fp16 | fixed16
    rounding: Literal["nearest", "stochastic"] = "stochastic"
    int_bits: int | None = Field(None, ge=1, le=16)  # fixed16: bits before the binary point, sign included; default 16 - frac_bits
    frac_bits: int | None = Field(None, ge=0, le=15)  # fixed16: bits after it (default 12); int_bits + frac_bits = 16
    state: Literal["fp32", "bf16"] = "fp32"  # optimizer state (momentum, Adam's moments), apart from the weights

    def cross_checks(self) -> list[Problem]:
        if self.dtype != "fixed16":
            return [((k,), f"only fixed16 has {k}; {self.dtype} is a float format")
                    for k in ("int_bits", "frac_bits") if getattr(self, k) is not None]
        if self.int_bits is not None and self.int_bits + self.fraction != 16:
            return [(("frac_bits",), f"int_bits + frac_bits must be 16 (the sign bit is one of the int_bits); "
                                     f"got {self.int_bits} + {self.fraction}")]
        return []

    @property
    def fraction(self) -> int:
        """fixed16's fraction bits: frac_bits, else 16 - int_bits, else 12 (Gupta et al.'s <4,12>)."""
        if self.frac_bits is not None:
            return self.frac_bits
        return 16 - self.int_bits if self.int_bits is not None else 12

    def format(self):
        return weight_format(self.dtype, self.fraction)


class Optim(OptimSpec):
    """The optimizer section, with the weights' storage format (None: float32 parameters)."""

    weights: WeightsSpec | None = None

    def cross_checks(self) -> list[Problem]:
        return [(("weights", *loc), msg) for loc, msg in self.weights.cross_checks()] if self.weights else []


def recipe_checks(optim: Optim, trainer: Any, finetune: Any) -> list[Problem]:
    """What 16-bit master weights cannot be combined with (key paths from the recipe's top)."""
    if optim.weights is None:
        return []
    out: list[Problem] = []
    why = "optim.weights keeps its own 16-bit weights and computes in float32"
    if trainer.precision != "32-true":
        out.append((("trainer", "precision"), f"{why}: use 32-true with it, got {trainer.precision}"))
    if trainer.strategy != "auto" or trainer.num_nodes > 1 or (isinstance(trainer.devices, int) and trainer.devices > 1):
        out.append((("optim", "weights"), "16-bit master weights run in one process (devices 1 or auto, strategy auto)"))
    if trainer.gradient_clip_val is not None:
        out.append((("trainer", "gradient_clip_val"), "not with optim.weights (its gradients are not the Trainer's parameters')"))
    if finetune is not None:
        out.append((("optim", "weights"), "cnnlab train's; fine-tuning keeps float32 weights"))
    return out
