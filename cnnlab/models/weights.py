"""State dicts from files, loaded safely (tensors only), and the one reader of load_state_dict's
mismatch errors: every place that loads weights into a net reports a misfit the same way."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from cnnlab.errors import UserError


def load_state_dict_file(path: str | Path, key: str = "model.weights") -> dict[str, Tensor]:
    """A state dict from a local file, loaded safely (tensors only); also unwraps Lightning
    checkpoints. `key` names the recipe key the path came from, for the error message."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}: file not found: {p}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or not a torch file at all
        raise UserError(f"{key}: {p} is not a loadable state dict ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{key}: {p} holds a {type(sd).__name__}, not a state dict")
    return sd


def load_into(net: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """`net.load_state_dict(state_dict)`; a misfit is a UserError `what: <the first missing,
    unexpected or mis-shaped key>` (load_state_dict's first line only names the module)."""
    try:
        net.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        raise UserError(f"{what}: {lines[1] if len(lines) > 1 else lines[0]}") from None
