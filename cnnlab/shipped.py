"""The recipes that ship inside the package: the repository's recipes/ folder, installed as
`cnnlab.recipes`. A recipe argument that names no file here but names a shipped recipe
(`smoke`, `smoke.yaml` or `recipes/smoke.yaml`) reads the shipped one, from any working folder."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def folder() -> Path:
    """Where the shipped recipes are (the checkout's recipes/ in an editable install)."""
    return Path(str(files("cnnlab.recipes")))


def names() -> list[str]:
    return sorted(p.name for p in folder().glob("*.yaml"))


def recipe(name: str) -> Path:
    """A shipped recipe by file name, e.g. recipe("stacking.yaml")."""
    return folder() / name


def _could_be_shipped(p: Path) -> bool:
    """A bare name, or one under recipes/: what a shipped recipe is called by."""
    return len(p.parts) == 1 or (len(p.parts) == 2 and p.parts[0] == "recipes")


def resolve(given: str | Path) -> Path:
    """`given` itself when it is a file (or anything but a shipped recipe's name); else the shipped
    recipe it names."""
    p = Path(given)
    if p.exists() or not _could_be_shipped(p):
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    return recipe(name) if name in names() else p


def hint(given: str | Path) -> str:
    """For a recipe not found: the shipped names, when `given` looks like one."""
    return f" (shipped recipes, found by name from any folder: {', '.join(names())})" if _could_be_shipped(Path(given)) else ""
