"""`cnnlab train`: recipe -> trained, tested run folder (the engine's training run), and
`--resume`, which continues a run folder exactly as it was recorded."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cnnlab.engine.checkpoint import check_resume_overrides
from cnnlab.engine.run import train
from cnnlab.recipe import Recipe


def run(recipe: Recipe, resume: Path | None = None, progress: bool = True, resume_overrides: list[str] = (),
        on_data: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Train (or, with `resume`, continue) and test; results.json's content on global rank 0, None
    on the other processes of a data-parallel run."""
    if resume is not None:
        check_resume_overrides(list(resume_overrides))
    return train(recipe, resume=resume, progress=progress, resume_overrides=resume_overrides, on_data=on_data)
