"""State dicts and cnnlab checkpoints from files, loaded safely (tensors only), and the one reader of
load_state_dict's mismatch errors: every place that loads weights into a net reports a misfit the
same way."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cnnlab.errors import UserError
from cnnlab.io import Refused, find_checkpoint, load_tensors


def load_state_dict_file(path: str | Path, key: str = "model.weights") -> dict[str, Tensor]:
    """A state dict from a local file, loaded safely (tensors only); also unwraps Lightning
    checkpoints. `key` names the recipe key the path came from, for the error message."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}: file not found: {p}")
    try:
        sd = load_tensors(p)
    except Refused as e:
        raise UserError(f"{key}: {p} {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{key}: {p} holds a {type(sd).__name__}, not a state dict")
    return sd


@dataclass
class Checkpoint:
    path: Path
    hparams: dict[str, Any]  # the recipe (as plain data), num_classes, finetune's network keys
    state_dict: dict[str, Tensor]


def read_checkpoint(path: str | Path, key: str | None = None) -> Checkpoint:
    """Any checkpoint cnnlab writes: a run folder's best (else last) checkpoint, or a .ckpt file.
    `key` names the recipe key the path came from, for the error message."""
    ckpt_path = find_checkpoint(path, key)
    at = f"{key}: " if key else ""
    try:
        ckpt = load_tensors(ckpt_path)
    except Refused as e:
        raise UserError(f"{at}{ckpt_path} {e}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state_dict = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "recipe" not in hparams or "num_classes" not in hparams:
        raise UserError(f"{at}{ckpt_path} is not a cnnlab checkpoint: no recipe inside")
    if not isinstance(state_dict, dict):
        raise UserError(f"{at}{ckpt_path} is not a cnnlab checkpoint: no weights inside")
    return Checkpoint(ckpt_path, hparams, state_dict)


def load_into(net: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """`net.load_state_dict(state_dict)`; a misfit is a UserError `what: <the first missing,
    unexpected or mis-shaped key>` (load_state_dict's first line only names the module)."""
    try:
        net.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        raise UserError(f"{what}: {lines[1] if len(lines) > 1 else lines[0]}") from None
