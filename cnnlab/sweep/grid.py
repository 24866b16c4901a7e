"""A sweep's cells: named variants and grids of recipe keys, crossed with each other and with seeds.

A cell is a list of --set overrides with a label; it runs once per seed. Values are written back
as JSON (a subset of YAML), so a list or a mapping in a grid reaches the recipe exactly as given,
and the recipe's own schema decides whether it is the right type."""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from cnnlab.errors import UserError

# keys a cell cannot set: the seed comes from the seeds, and the sweep decides where runs go
RESERVED = ("seed", "sweep", "output", "launcher")


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: `overrides` applied to the base recipe, trained once per seed."""

    label: str  # what the tables call it: a variant's name and/or KEY=VALUE per grid key
    overrides: list[str]
    values: dict[str, Any] = field(default_factory=dict)  # grid key -> value (none for a plain variant)


@dataclass(frozen=True)
class Trial:
    """A cell at one seed: one training run, in its own folder `id` under the sweep's cells/."""

    id: str
    cell: str
    seed: int
    overrides: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reserved(key: str) -> str | None:
    """Why a cell may not set `key`, or None."""
    if key.split(".")[0] in RESERVED:
        return f"{key}: a sweep cell cannot set {key.split('.')[0]} (--seeds / sweep.seeds give the seeds; the sweep decides output and launcher)"
    return None


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`--grid 'KEY=[V1, V2]'` items -> {KEY: [V1, V2]}, in the order given. Each value list is one
    YAML flow list, so values can be numbers, strings, lists and mappings."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid {item!r}: expected KEY=[V1, V2, ...], e.g. --grid 'optim.lr=[0.05, 0.1, 0.2]'")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"--grid {key}: {text!r} is not a YAML list: {getattr(e, 'problem', None) or e}") from None
        check_values(key, values, f"--grid {key}")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; give one list of every value")
        grid[key] = values
    return grid


def check_values(key: str, values: Any, where: str) -> None:
    """A grid key's values: a non-empty list of distinct values, for a key a cell may set."""
    if why := reserved(key):
        raise UserError(f"{where}: {why}")
    if not isinstance(values, list) or not values:
        got = "an empty list" if values == [] else repr(values)
        raise UserError(f"{where}: a non-empty list of values in brackets, e.g. [0.05, 0.1], got {got}")
    seen = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(seen)) != len(seen):
        raise UserError(f"{where}: the values must be distinct, got {values}")


def show(value: Any) -> str:
    """A value as the tables print it: YAML flow style, one line."""
    return json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else value


def cells(variants: dict[str, list[str]] | None, grid: dict[str, list[Any]]) -> list[Cell]:
    """Every variant (or the recipe as it is, without variants) crossed with every grid point, in
    order: the first cell is the baseline the others are compared with."""
    base = list((variants or {"recipe": []}).items())
    points = list(itertools.product(*grid.values())) if grid else [()]
    out = []
    for (name, overrides), point in itertools.product(base, points):
        values = dict(zip(grid, point))
        set_ = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        shown = " ".join(f"{k}={show(v)}" for k, v in values.items())
        label = shown if (variants is None and shown) else f"{name} {shown}".strip()
        out.append(Cell(label, [*overrides, *set_], values))
    return out


def trials(cell_list: list[Cell], seeds: list[int]) -> list[Trial]:
    """Each cell once per seed, seed by seed (every cell at seed 0, then at seed 1, ...): a cell's runs
    are spread over the sweep, so a machine that speeds up or slows down tilts no cell's images/s.
    Folder names are unique and readable: the cell's number, its label as a slug, the seed."""
    width = len(str(len(cell_list) - 1))
    return [Trial(f"{i:0{width}d}-{slug(c.label)}-seed{s}", c.label, s, c.overrides)
            for s in seeds for i, c in enumerate(cell_list)]


def slug(label: str) -> str:
    """A label as part of a folder name: letters, digits, '.', '_', '-' only, at most 48 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace("=", "")).strip("-.")[:48] or "cell"
