"""The `augment:` section of a recipe: where augmentation runs and its ops, each checked against
the op's signature."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from cnnlab.augment import OPS
from cnnlab.spec import BuilderCall, Spec


def _named(op: Any) -> Any:
    if not isinstance(op, dict) or "name" not in op:
        raise ValueError("each op must be a mapping with a 'name' key, e.g. {name: hflip}")
    return op


class AugmentSpec(Spec):
    """Training-time augmentation: a list of ops, each `{name: op, <op parameters>}`."""

    where: Literal["device", "loader"] = "device"  # device: batched on the training device
    ops: list[Annotated[dict[str, Any], BeforeValidator(_named)]] = []

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        ops = raw.get("ops")
        return [(("ops", i), OPS, op["name"], {k: v for k, v in op.items() if k != "name"})
                for i, op in enumerate(ops if isinstance(ops, list) else [])
                if isinstance(op, dict) and "name" in op]
