"""`cnnlab train`: recipe -> trained, tested run folder (the engine's training run), and
`--resume`, which continues a run folder exactly as it was recorded."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cnnlab.engine.run import train
from cnnlab.errors import UserError
from cnnlab.recipe import Recipe

# A resumed run continues the recorded one: these keys only say where it runs, not what it computes.
RESUME_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.strategy", "data.num_workers")


def check_resume_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUME_KEYS]
    if bad:
        raise UserError(f"--resume continues the run as recorded in its recipe.yaml; --set {bad[0]} would change it "
                        f"(max_epochs, for one, reshapes the learning-rate schedule): start a new run instead. "
                        f"On resume --set takes only {', '.join(RESUME_KEYS)}")


def run(recipe: Recipe, resume: Path | None = None, progress: bool = True, resume_overrides: list[str] = (),
        on_data: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Train (or, with `resume`, continue) and test; results.json's content on global rank 0, None
    on the other processes of a data-parallel run."""
    if resume is not None:
        check_resume_overrides(list(resume_overrides))
    return train(recipe, resume=resume, progress=progress, resume_overrides=resume_overrides, on_data=on_data)
