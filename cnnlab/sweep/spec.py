"""The `sweep:` section of a recipe (read by `cnnlab train --sweep`)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from cnnlab.spec import Problem, Spec

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class SweepSpec(Spec):
    """Named variants of the recipe, each a list of overrides written as for --set, trained once
    per seed. The first variant is the baseline that speeds are divided by."""

    seeds: list[Seed] = Field([0, 1], min_length=1)  # every variant trains once per seed
    variants: dict[str, list[str]] = Field(..., min_length=1)  # name -> ["optim.lr=0.01", ...]; {} overrides nothing

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    def cross_checks(self) -> list[Problem]:
        out: list[Problem] = []
        for name, overrides in self.variants.items():
            if not name.strip() or any(c in name for c in "/\\\0"):
                out.append((("variants", name), "a variant name is a non-empty label without '/' (it names run folders)"))
            for i, item in enumerate(overrides):
                key = item.partition("=")[0].strip()
                if key.split(".")[0] in ("seed", "sweep", "output"):
                    out.append((("variants", name, i), f"{key}: a variant cannot set seed (sweep.seeds does), sweep or output"))
        return out
