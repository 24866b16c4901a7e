"""The `model:` section of a recipe: a registered model's name, its builder's keyword arguments, and
the convolution algorithm its layers run through."""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, SerializerFunctionWrapHandler, field_validator, model_serializer

from cnnlab.conv import ALGORITHMS
from cnnlab.models.registry import MODELS
from cnnlab.spec import BuilderCall, Problem, Spec, known

OWN_KEYS = ("name", "conv_impl", "activation_checkpointing")  # every other key is the builder's


class ModelSpec(Spec):
    """`name` picks a registered model; `conv_impl` runs every convolution the algorithm can compute
    through it (`cnnlab bench-conv` lists them; the rest stay on direct); `activation_checkpointing`
    recomputes each stage's activations in backward instead of keeping them (cnnlab's staged nets,
    torchvision ResNets); every other key is that builder's keyword argument."""

    model_config = ConfigDict(extra="allow")
    name: str = "vgg-small"
    conv_impl: str = "direct"  # direct = F.conv2d (oneDNN / cuDNN); im2col, fft, winograd-2x2, ...
    activation_checkpointing: bool = False  # per stage: less activation memory for one more forward

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return known(MODELS, v)

    @field_validator("conv_impl")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        return known(ALGORITHMS, v)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved recipe names activation_checkpointing only when it is on, so a run's
        recipe.yaml (and what reads it: a model rebuilt from the model: section) is what it was
        before the key existed."""
        out = handler(self)
        if not self.activation_checkpointing:
            out.pop("activation_checkpointing", None)
        return out

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def cross_checks(self) -> list[Problem]:
        """activation_checkpointing needs stages: the model is built on the meta device (no memory,
        no weights read) to find them. A model that does not build is its builder check's problem."""
        if not self.activation_checkpointing or "weights" in self.kwargs():
            return []
        import torch

        from cnnlab.models.checkpointing import no_stages, stage_names
        from cnnlab.models.registry import build_model

        try:
            with torch.device("meta"):
                net = build_model(self.name, 3, 10, **self.kwargs())
        except Exception:  # noqa: BLE001  reported by the builder's own checks, or at assembly
            return []
        return [] if stage_names(net) else [(("activation_checkpointing",), no_stages(self.name))]

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        kwargs = {k: v for k, v in raw.items() if k not in OWN_KEYS}
        return [((), MODELS, raw.get("name", cls.model_fields["name"].default), kwargs)]
