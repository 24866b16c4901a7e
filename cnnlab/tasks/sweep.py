"""`cnnlab sweep` (and its preset `train --sweep`): a recipe's cells (variants and grids of any key,
crossed) trained once per seed, here, side by side, or through submitit; one table of means,
spreads and paired differences, sweep.json, and plots of the metric against each grid key and of
the loss curves, in one sweep folder. `--resume` runs only what did not finish."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from cnnlab.engine.assemble import require_one_process
from cnnlab.engine.sweep import PLAN, Plan, drive, plan
from cnnlab.errors import UserError
from cnnlab.io import new_run_dir, write_recipe
from cnnlab.recipe import Recipe
from cnnlab.sweep.grid import parse_grid
from cnnlab.sweep.spec import LauncherSpec


def launcher(recipe_spec: LauncherSpec, jobs: str | None = None, threads: str | None = None,
             name: str | None = None) -> LauncherSpec:
    """The recipe's launcher: section with the command's flags (which win) applied and checked."""
    update: dict[str, Any] = {}
    for flag, key, value in (("--jobs", "jobs", jobs), ("--threads", "threads", threads), ("--launcher", "name", name)):
        if value is None:
            continue
        update[key] = int(value) if key != "name" and value.isdigit() else value
        try:
            LauncherSpec.model_validate({**recipe_spec.model_dump(), key: update[key]})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            allowed = {"jobs": "a number >= 1 or auto", "threads": "a number >= 1 or auto", "name": "local or submitit"}[key]
            raise UserError(f"{flag} {value}: {allowed} ({msg})") from None
    return LauncherSpec.model_validate({**recipe_spec.model_dump(), **update})


def run(recipe: Recipe, grid: list[str] = (), seeds: int | None = None, jobs: str | None = None,
        threads: str | None = None, launcher_name: str | None = None, progress: bool = True,
        on_trial: Callable[[dict[str, Any]], None] | None = None, command: str = "cnnlab sweep") -> dict[str, Any]:
    """Plan (every cell validated), make the sweep folder, run, summarise, plot."""
    require_one_process(recipe, command.removeprefix("cnnlab "), "A sweep runs one process per trial")
    spec = launcher(recipe.launcher, jobs, threads, launcher_name)
    p = plan(recipe, parse_grid(list(grid)), list(range(seeds)) if seeds else None, source=command)
    root = new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-sweep")
    write_recipe(root, recipe.dump())
    return drive(p, root, spec, progress, on_trial, command)  # Interrupted: sweep.json holds the partial table


def resume(sweep_dir: Path, jobs: str | None = None, threads: str | None = None, launcher_name: str | None = None,
           progress: bool = True, on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run again only the trials of `sweep_dir` that did not finish: finished ones are kept, one
    stopped in flight continues from its last checkpoint."""
    root = Path(sweep_dir)
    try:
        record = json.loads((root / PLAN).read_text())
        p = Plan.from_dict(record, str(root / PLAN))
        spec_raw = record["launcher"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = "no plan.json" if isinstance(e, FileNotFoundError) else "its plan.json is not one cnnlab wrote"
        raise UserError(f"--resume: {root} is not a sweep folder ({why})") from None
    spec = launcher(LauncherSpec.model_validate(spec_raw), jobs, threads, launcher_name)
    return drive(p, root, spec, progress, on_trial, record.get("command", "cnnlab sweep"))
