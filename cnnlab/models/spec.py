"""The `model:` section of a recipe: a registered model's name and its builder's keyword arguments."""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, field_validator

from cnnlab.models.registry import MODELS
from cnnlab.spec import BuilderCall, Spec, known


class ModelSpec(Spec):
    """`name` picks a registered model; every other key is that builder's keyword argument."""

    model_config = ConfigDict(extra="allow")
    name: str = "vgg-small"

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return known(MODELS, v)

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        kwargs = {k: v for k, v in raw.items() if k != "name"}
        return [((), MODELS, raw.get("name", cls.model_fields["name"].default), kwargs)]
