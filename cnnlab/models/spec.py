"""The `model:` section of a recipe: a registered model's name, its builder's keyword arguments, and
the convolution algorithm its layers run through."""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, field_validator

from cnnlab.conv import ALGORITHMS
from cnnlab.models.registry import MODELS
from cnnlab.spec import BuilderCall, Spec, known

OWN_KEYS = ("name", "conv_impl")  # every other key is the builder's


class ModelSpec(Spec):
    """`name` picks a registered model; `conv_impl` runs every convolution the algorithm can compute
    through it (`cnnlab bench-conv` lists them; the rest stay on direct); every other key is that
    builder's keyword argument."""

    model_config = ConfigDict(extra="allow")
    name: str = "vgg-small"
    conv_impl: str = "direct"  # direct = F.conv2d (oneDNN / cuDNN); im2col, fft, winograd-2x2, ...

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return known(MODELS, v)

    @field_validator("conv_impl")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        return known(ALGORITHMS, v)

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        kwargs = {k: v for k, v in raw.items() if k not in OWN_KEYS}
        return [((), MODELS, raw.get("name", cls.model_fields["name"].default), kwargs)]
