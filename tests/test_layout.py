"""The layout as a test: imports point one way, cli -> tasks -> recipe -> features -> base, read from
the source (every import, function-local ones included), so a cycle cannot hide behind a late import."""
import ast
import os
from pathlib import Path

# CNNLAB_PACKAGE=/other/checkout/cnnlab checks another tree
PACKAGE = Path(os.environ.get("CNNLAB_PACKAGE", Path(__file__).resolve().parents[1] / "cnnlab"))

# what each part of the package may import; a module not named here is part of a feature
# (data, augment, models, transfer, lit, runinfo, ...), so a new feature needs no entry
PARTS = {"": "base", "errors": "base", "registry": "base", "spec": "base",
         "recipe": "recipe", "report": "report", "tasks": "tasks", "cli": "cli", "__main__": "cli"}
MAY_IMPORT = {
    "base": {"base"},
    "feature": {"base", "feature"},
    "recipe": {"base", "feature", "recipe"},
    "report": {"base", "feature", "report"},
    "tasks": {"base", "feature", "recipe", "report", "tasks"},
    "cli": {"base", "feature", "recipe", "report", "tasks", "cli"},
}


def part(module: str) -> str:
    """'cnnlab.transfer.spec' -> 'feature', 'cnnlab.tasks.train' -> 'tasks', 'cnnlab' -> 'base'."""
    top = module.split(".")[1] if "." in module else ""
    return PARTS.get(top, "feature")


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(cnnlab module, line) of every import anywhere in `tree`; `from cnnlab import x` names cnnlab.x."""
    here = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(f"{base}.{a.name}" if base == "cnnlab" else base, node.lineno) for a in node.names]
    return [(name, line) for name, line in out if name == "cnnlab" or name.startswith("cnnlab.")]


def violations(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, line in imported(tree, module, path.name == "__init__.py"):
            if part(target) not in MAY_IMPORT[part(module)]:
                found.append(f"{module} ({part(module)}) imports {target} ({part(target)}), line {line}")
    return list(dict.fromkeys(found))  # `from x import a, b` is one import


def test_imports_point_one_way():
    assert violations(PACKAGE) == []


def test_every_module_is_seen():
    names = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert {"cnnlab", "cnnlab.recipe", "cnnlab.spec", "cnnlab.data.spec", "cnnlab.models.spec",
            "cnnlab.augment.spec", "cnnlab.transfer.spec", "cnnlab.tasks.train", "cnnlab.cli"} <= names


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_catches_late_relative_and_upward_imports(tmp_path):
    pkg = tmp_path / "cnnlab"
    write(pkg, "__init__.py", "")
    write(pkg, "errors.py", "")
    write(pkg, "registry.py", "from cnnlab import errors\nfrom . import recipe\n")
    write(pkg, "recipe.py", "from cnnlab.data.spec import DataSpec\n")
    write(pkg, "report.py", "def f():\n    from cnnlab.tasks import train\n")
    write(pkg, "data/__init__.py", "")
    write(pkg, "data/spec.py", "from ..registry import did_you_mean\n\ndef late():\n    from cnnlab.recipe import Recipe\n")
    write(pkg, "data/module.py", "from .spec import DataSpec\nimport cnnlab.cli\n")
    write(pkg, "tasks/__init__.py", "")
    write(pkg, "tasks/train.py", "from cnnlab import recipe, report\nfrom cnnlab.data import module\n"
                                 "from cnnlab.cli import app\n")
    write(pkg, "cli.py", "from cnnlab.tasks import train\n")
    assert violations(pkg) == [
        "cnnlab.data.module (feature) imports cnnlab.cli (cli), line 2",
        "cnnlab.data.spec (feature) imports cnnlab.recipe (recipe), line 4",
        "cnnlab.registry (base) imports cnnlab.recipe (recipe), line 2",
        "cnnlab.report (report) imports cnnlab.tasks (tasks), line 2",
        "cnnlab.tasks.train (tasks) imports cnnlab.cli (cli), line 3",
    ]
