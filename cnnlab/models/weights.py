"""State dicts and cnnlab checkpoints from files, loaded safely (tensors only), and the one reader of
load_state_dict's mismatch errors: every place that loads weights into a net reports a misfit the
same way."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.errors import UserError
from cnnlab.io import find_checkpoint


def _why(e: Exception) -> str:
    """What went wrong loading a file, in one line, and without torch.load's advice to load it
    unsafely: an untrusted file is only ever read as plain tensors."""
    if isinstance(e, pickle.UnpicklingError):
        return "not a torch file of plain tensors"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_state_dict_file(path: str | Path, key: str = "model.weights") -> dict[str, Tensor]:
    """A state dict from a local file, loaded safely (tensors only); also unwraps Lightning
    checkpoints. `key` names the recipe key the path came from, for the error message."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}: file not found: {p}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or not a torch file at all
        raise UserError(f"{key}: {p} is not a loadable state dict ({_why(e)})") from None
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
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams, state_dict = ckpt["hyper_parameters"], ckpt["state_dict"]
        if "recipe" not in hparams or "num_classes" not in hparams:
            raise KeyError("recipe" if "recipe" not in hparams else "num_classes")
    except Exception as e:
        at = f"{key}: " if key else ""
        raise UserError(f"{at}{ckpt_path} is not a cnnlab checkpoint ({_why(e)})") from None
    return Checkpoint(ckpt_path, hparams, state_dict)


def load_into(net: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """`net.load_state_dict(state_dict)`; a misfit is a UserError `what: <the first missing,
    unexpected or mis-shaped key>` (load_state_dict's first line only names the module)."""
    try:
        net.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        raise UserError(f"{what}: {lines[1] if len(lines) > 1 else lines[0]}") from None
