"""Non-finite losses and gradients stop a run with its last finite state saved, never train on."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from cnnlab.errors import Diverged

__all__ = ["Diverged", "check_finite", "diverged_message", "weight_memory"]


def check_finite(loss: Tensor, grads: Iterable[Tensor]) -> str | None:
    """None when the loss and every gradient are finite, else what was not (one host sync)."""
    grads = list(grads)
    # each tensor's norm accumulated in float32: a float16 gradient's own norm overflows to inf at
    # 65504 while every element is finite
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32) if g.element_size() < 4 else torch.linalg.vector_norm(g)
             for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else loss.new_zeros(())
    ok = torch.stack([loss.detach().float().isfinite(), total.float().isfinite()]).cpu()
    if bool(ok.all()):
        return None
    if not ok[0]:
        return f"the loss was {loss.item()}"
    return f"{sum(not bool(g.isfinite().all()) for g in grads)} of {len(grads)} gradient tensors were not finite"


def diverged_message(what: str, step: int, epoch: int, checkpoint: str, precision: str, weights: str | None) -> str:
    advice = ["lower optim.lr (or add warm-up)"]
    if precision.startswith("16") or weights == "fp16":
        advice.append("use bf16 (float32's range in 16 bits) instead of fp16, or loss scaling (trainer.precision: 16-mixed)")
    elif weights is None and precision in ("32-true", "64-true"):
        advice.append("clip gradients (trainer.gradient_clip_val)")
    else:
        advice.append("use bf16-mixed or loss scaling (16-mixed on a GPU)")
    return (f"training diverged at step {step} (epoch {epoch}): {what}. Stopped before applying that step; the last "
            f"finite state is in {checkpoint}. Try: {'; '.join(advice)}")


def weight_memory(module: nn.Module) -> dict[str, Any]:
    """What a Classifier's network weights take at rest, measured on its tensors: the parameters,
    or the 16-bit storage that replaces them (optim.weights); with the format and rounding."""
    lowp = getattr(module, "lowp", None)
    tensors = list(lowp.storage(module.net).values()) if lowp is not None else list(module.net.parameters())
    n = sum(t.numel() for t in tensors)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return {"parameters": n, "bytes": nbytes, "bytes_per_parameter": nbytes / max(1, n),
            "dtype": ",".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors})),
            "format": lowp.fmt.describe() if lowp is not None else "parameters",
            "rounding": lowp.rounding if lowp is not None else None}
