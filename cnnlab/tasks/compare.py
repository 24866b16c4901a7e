"""`cnnlab compare`: finished runs side by side, read back from their folders (nothing is trained or
evaluated again): the recipe keys that differ between them, their test numbers and speed, and their
curves on one plot, in a folder compare-<time> with compare.json and compare.png."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import UserError
from cnnlab.io import epoch_metrics, new_run_dir, write_json
from cnnlab.recipe import Recipe, RecipeError, read

RESULTS, RECIPE, METRICS = "results.json", "recipe.yaml", "metrics.csv"
OUTCOME = "outcome.json"  # a sweep trial's record; the only one a trial that diverged or failed leaves
# keys that differ between any two runs by construction (where they were written), so say nothing
SAYS_NOTHING = ("output.dir", "output.name")
CURVES = ("train/loss", "val/acc")  # the plot's two panels, epoch-level values from metrics.csv
NUMBERS = ("test_acc", "test_loss", "best_val_acc", "train_images_per_s", "wall_time_s", "epochs")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


@dataclass
class Run:
    """One run folder as read: what the table and the plot need, nothing interpreted yet."""
    name: str
    path: Path
    results: dict[str, Any]
    recipe: dict[str, Any]  # flattened: "optim.lr" -> 0.1
    curves: dict[str, dict[int, float]]  # "train/loss" -> {epoch: value}


def is_run(folder: Path) -> bool:
    """A run folder of `cnnlab train` or `finetune`: its results.json (or, for a sweep's trial that
    diverged or failed, its outcome.json) beside the recipe it ran (a sweep's own folder holds a
    recipe.yaml but neither)."""
    return ((folder / RESULTS).is_file() or (folder / OUTCOME).is_file()) and (folder / RECIPE).is_file()


def expand(path: Path) -> list[tuple[str, Path]]:
    """(name, run folder) for one argument: a run folder is itself, named by its folder; any other
    folder is every run folder under it (a sweep keeps its runs in subfolders), sorted by path and
    named by the path relative to it."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; give run folders (of cnnlab train or finetune) or folders of runs")
    if (path / RESULTS).is_file():
        if not (path / RECIPE).is_file():
            raise UserError(f"{path}: holds results.json but no recipe.yaml, so it is not a run folder of "
                            "cnnlab train or finetune")
        return [(path.resolve().name, path)]
    runs = sorted({f.parent for name in (RESULTS, OUTCOME) for f in path.rglob(name) if is_run(f.parent)})
    if not runs:
        raise UserError(f"{path}: no run folders under it (a run folder holds results.json and recipe.yaml)")
    return [(run.relative_to(path).as_posix(), run) for run in runs]


def find_runs(paths: list[Path]) -> list[tuple[str, Path]]:
    """Every argument's runs, in the order given. A folder reached twice (a run and the sweep it is
    in) counts once, where it came first; a name two runs share (two sweeps with the same variants)
    becomes the path as given, so every row and line says which run it is."""
    if not paths:
        raise UserError("missing RUN_OR_SWEEP: cnnlab compare runs/a runs/b (run folders, or folders of runs)")
    found, seen = [], set()
    for p in paths:
        for name, run in expand(Path(p)):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append((name, run))
    names = [n for n, _ in found]
    return [(str(run) if names.count(n) > 1 else n, run) for n, run in found]


def read_results(run: Path) -> dict[str, Any]:
    """results.json (else a sweep trial's outcome.json) as a mapping; anything else is refused, in
    one line naming the file."""
    f = run / RESULTS if (run / RESULTS).is_file() else run / OUTCOME
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{f}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{f}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{f}: not a JSON mapping of results, but {_JSON_TYPES.get(type(data), type(data).__name__)}")
    return data


def read_recipe(run: Path) -> dict[str, Any]:
    """recipe.yaml through the recipe reader (which refuses what no recipe could be), as it was
    written: not validated again, so a run of an older cnnlab still compares."""
    f = run / RECIPE
    try:
        raw, _ = read(f)
    except RecipeError as e:  # its problems, on one line after the file's name
        raise UserError(f"{f}: {'; '.join(e.problems)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{f}: not a recipe (a mapping of sections), but {_JSON_TYPES.get(type(raw), type(raw).__name__)}")
    return raw


def read_curves(run: Path) -> dict[str, dict[int, float]]:
    """The plotted metrics per epoch from metrics.csv (none when a run stopped before logging)."""
    f = run / METRICS
    try:
        m = epoch_metrics(f)
    except (OSError, ValueError) as e:  # ValueError: a cell that is not a number, or not UTF-8
        raise UserError(f"{f}: not a metrics.csv cnnlab could have written ({e})") from None
    return {k: m[k] for k in CURVES if k in m}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys (`optim.lr`); a list stays one value (`model.widths`), since
    its length is part of what differs, and an empty section stays `{}`."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def with_defaults(flat: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A run's keys, and today's default for each key its recipe.yaml lacks: a recipe.yaml holds
    every key of the cnnlab that wrote it, so a lacking key is one added since (output.loggers),
    which that run ran without, as a run with the default does. A default is not added where the
    run has the section in other terms: `finetune: null` beside a run's `finetune.regime`."""
    out = dict(flat)
    for k, v in defaults.items():
        if k not in out and not any(o.startswith(f"{k}.") or k.startswith(f"{o}.") for o in flat):
            out[k] = v
    return out


def differing(recipes: list[dict[str, Any]]) -> list[str]:
    """The dotted keys whose value is not the same in every run (a key one run lacks differs too),
    in the recipes' own order."""
    keys = dict.fromkeys(k for r in recipes for k in r)

    def same(k: str) -> bool:
        return len({json.dumps(r[k], sort_keys=True) if k in r else None for r in recipes}) == 1

    return [k for k in keys if k not in SAYS_NOTHING and not same(k)]


def read_run(name: str, path: Path, defaults: dict[str, Any]) -> Run:
    return Run(name, path, read_results(path), with_defaults(flatten(read_recipe(path)), defaults), read_curves(path))


def status(results: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """finished, interrupted (stopped by a signal before its test), diverged (stopped on a
    non-finite or runaway loss), or incomplete (no test accuracy and no record of why), with the
    record of the stop."""
    if results.get("diverged"):
        return "diverged", results["diverged"] if isinstance(results["diverged"], dict) else None
    if "test_acc" in results:
        return "finished", None
    if results.get("interrupted"):
        return "interrupted", results["interrupted"] if isinstance(results["interrupted"], dict) else None
    if results.get("status") == "failed":  # a sweep trial's outcome: it says why
        return "failed", {"why": results.get("why")}
    return "incomplete", None


def _number(results: dict[str, Any], key: str) -> float | None:
    """A number from results.json, or None where it is absent or not a number (so that a run of
    another version can be listed rather than break the table)."""
    v = results.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def row(run: Run, keys: list[str]) -> dict[str, Any]:
    """One run's line: its status, its values of the differing keys (absent ones left out) and
    its numbers from results.json."""
    state, stop = status(run.results)
    return {"name": run.name, "run_dir": str(run.path), "status": state, "stopped": stop,
            "recipe": {k: run.recipe[k] for k in keys if k in run.recipe},
            **{k: _number(run.results, k) for k in NUMBERS}}


def run(paths: list[Path], out: str | Path = "runs") -> dict[str, Any]:
    """Read every run (all of them before anything is written, so a refusal leaves nothing
    behind), then write compare.json and compare.png to a new folder under `out`; returns what
    compare.json holds."""
    from cnnlab.report.compare import plot_compare

    defaults = flatten(Recipe().dump())
    runs = [read_run(name, path, defaults) for name, path in find_runs(paths)]
    keys = differing([r.recipe for r in runs])
    try:
        folder = new_run_dir(out, "compare")
    except UserError as e:  # its message names the recipe key of the other commands; here it is a flag
        raise UserError(f"--out: {str(e).removeprefix('output.dir: ')}") from None
    result = {"compare_dir": str(folder), "runs": [str(r.path) for r in runs], "differing": keys,
              "rows": [row(r, keys) for r in runs], "curves": [r.curves for r in runs],
              "json": str(folder / "compare.json"), "plot": str(folder / "compare.png")}
    plot_compare(result, folder / "compare.png")
    write_json(folder / "compare.json", result)
    return result
