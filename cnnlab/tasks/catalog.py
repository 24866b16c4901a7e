"""`cnnlab list` and `cnnlab cp`: every named part, read from the registries themselves (each with its
recipe parameters, their types and defaults, and its one-line description), the precisions this
machine runs, and the recipes that ship inside the package, which `cp` copies out to edit."""
from __future__ import annotations

import fnmatch
import importlib
import inspect
from pathlib import Path
from typing import Any

from cnnlab import shipped
from cnnlab.errors import UserError
from cnnlab.io import write_text
from cnnlab.registry import ALL, Registry

# the feature packages whose registries `list` reads (importing them fills cnnlab.registry.ALL)
PACKAGES = ("cnnlab.augment", "cnnlab.tta", "cnnlab.conv", "cnnlab.models", "cnnlab.data", "cnnlab.transfer")
EXTRA = ("precisions", "recipes")


def registries() -> dict[str, Registry]:
    for name in PACKAGES:
        importlib.import_module(name)
    return dict(sorted(ALL.items()))


def kinds() -> list[str]:
    return [*registries(), *EXTRA]


def _first_line(obj: Any) -> str:
    """The first paragraph of a part's docstring; for a part that is an object (a convolution
    algorithm), its function's."""
    if not callable(obj) or (not inspect.isfunction(obj) and not inspect.isclass(obj) and hasattr(obj, "fn")):
        obj = getattr(obj, "fn", obj)
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def _type_name(t: Any) -> str:
    """A readable type: list[int], int | list[int], Literal['zero', 'reflect'] (constraints dropped)."""
    import typing

    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if t is type(None):
        return "None"
    return getattr(t, "__name__", str(t).replace("typing.", ""))


def parameters(registry: Registry, part: Any) -> list[dict[str, Any]]:
    """The part's recipe parameters (what a recipe may set), from the signature its keys are checked
    against; none for parts that take no keyword arguments."""
    try:
        fields = registry.signature(part).model_fields
    except (TypeError, ValueError, NameError):
        return []
    out = []
    for name, f in fields.items():
        default = None if f.is_required() else f.default
        out.append({"name": name, "type": _type_name(f.annotation), "default": default, "required": f.is_required()})
    return out


def entries(kind: str, pattern: str | None = None) -> list[dict[str, Any]]:
    """The rows of `cnnlab list KIND [PATTERN]` (PATTERN: a glob, or a substring)."""
    if kind == "recipes":
        rows = [{"name": p.stem, "file": str(p), "description": recipe_comment(p)} for p in sorted(shipped.folder().glob("*.yaml"))]
    elif kind == "precisions":
        rows = precisions()
    else:
        regs = registries()
        if kind not in regs:
            raise UserError(f"cnnlab list {kind}: not a kind of part; choose from {', '.join(kinds())}")
        reg = regs[kind]
        rows = [{"name": name, "description": _first_line(part), "parameters": parameters(reg, part)}
                for name, part in reg.parts().items()]
        rows += [{"name": f"{prefix}:<name>", "description": _first_line(resolve), "parameters": []}
                 for prefix, resolve in sorted(reg.prefixes().items())]
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        rows = [r for r in rows if fnmatch.fnmatch(r["name"], glob)]
    return rows


def recipe_comment(path: Path) -> str:
    """A recipe file's first comment line (what it is for)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def precisions() -> list[dict[str, Any]]:
    """Every accepted trainer.precision, and whether it runs here, per device, from the recipe's own
    checks (the pre-flight a recipe gets)."""
    import torch

    from cnnlab.spec import PRECISIONS, TrainerSpec

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for p in PRECISIONS:
        row: dict[str, Any] = {"name": p, "description": "", "runs": {}}
        for d in devices:
            spec = TrainerSpec(accelerator=d, precision=p)
            problems = spec.cross_checks() + spec.preflight()
            row["runs"][d] = "yes" if not problems else problems[0][1]
        rows.append(row)
    return rows


def copy_recipe(name: str, dest: Path) -> Path:
    """A shipped recipe copied to `dest` (a file, or a folder to put it in), never over a file."""
    src = shipped.resolve(name)
    if not src.is_file() or src.parent.resolve() != shipped.folder().resolve():
        raise UserError(f"cnnlab cp {name}: not a built-in recipe; choose from {', '.join(p.removesuffix('.yaml') for p in shipped.names())}")
    target = Path(dest) / src.name if Path(dest).is_dir() else Path(dest)
    if target.exists():
        raise UserError(f"cnnlab cp: {target} exists; give another name (cnnlab never writes over a file)")
    if not target.parent.is_dir():
        raise UserError(f"cnnlab cp: the folder {target.parent} does not exist")
    write_text(target, src.read_text())
    return target
