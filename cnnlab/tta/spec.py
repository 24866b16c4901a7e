"""The `eval:` section of a recipe: test-time augmentation policies evaluated at the end of
`cnnlab train` (and `cnnlab eval-tta`'s defaults), each view's parameters checked against the view."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from cnnlab.spec import BuilderCall, Spec
from cnnlab.tta import VIEWS
from cnnlab.tta.policy import parse

# eval-tta's policies when neither the recipe nor --views names any
DEFAULT_POLICIES = ["hflip", "translate", "hflip+translate", "five-crop", "ten-crop", "scales", "hflip+scales"]


class EvalSpec(Spec):
    """Test-time augmentation. Each policy is views joined by '+' (`ten-crop+scales`); the single
    view (`identity`) is always measured too, as the baseline every policy is compared with."""

    tta: list[str] = []  # policies; [] = none at the end of training
    agg: Literal["mean-prob", "mean-logit", "max"] = "mean-prob"  # how an image's view scores combine
    views: dict[str, dict[str, Any]] = {}  # per view, its parameters: {translate: {px: 2}}
    chunk: Annotated[int, Field(ge=1)] | None = None  # view-images per forward pass; None = data.batch_size

    @field_validator("tta")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                parse(p)
            except KeyError as e:
                raise ValueError(f"policy '{p}': {e.args[0]}") from None
        if len(set(v)) != len(v):
            raise ValueError(f"each policy once, got {v}")
        return v

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        views = raw.get("views")
        return [(("views", name), VIEWS, name, kwargs) for name, kwargs in (views.items() if isinstance(views, dict) else ())
                if isinstance(kwargs, dict)]
