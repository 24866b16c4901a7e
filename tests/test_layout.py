"""The layout as a test, read from the source (every import, function-local ones included, so a
circle cannot hide behind a late import). Three rules:
1. every import points down the declared order of layers (and of features among themselves);
2. no task module imports another task module;
3. no circle between the package's units (its top-level modules and packages), whatever the layers say.
Every unit is declared: a new package or module fails the test until it has its place."""
import ast
import os
from pathlib import Path

# CNNLAB_PACKAGE=/other/checkout/cnnlab checks another tree
PACKAGE = Path(os.environ.get("CNNLAB_PACKAGE", Path(__file__).resolve().parents[1] / "cnnlab"))

# layers, lowest first: a module may import its own layer and the layers below it
LAYERS = ["base", "feature", "recipe", "report", "engine", "bench", "tasks", "cli"]
UNITS = {
    "": "base", "errors": "base", "registry": "base", "spec": "base", "io": "base", "env": "base", "shipped": "base",
    "recipe": "recipe", "report": "report", "engine": "engine", "bench": "bench", "tasks": "tasks",
    "cli": "cli", "__main__": "cli",
}
# the feature packages, lowest first: a feature may import only the features before it
FEATURES = ["precision", "augment", "tta", "conv", "models", "pack", "data", "transfer", "sweep", "profile"]
UNITS.update({f: "feature" for f in FEATURES})


def unit(module: str) -> str:
    """'cnnlab.transfer.spec' -> 'transfer', 'cnnlab' -> ''."""
    return module.split(".")[1] if "." in module else ""


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def exists(module: str, package: Path) -> bool:
    p = package.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imported(tree: ast.AST, module: str, is_package: bool, package: Path) -> list[tuple[str, int]]:
    """(cnnlab module, line) of every import anywhere in `tree`; `from cnnlab.tasks import train`
    names cnnlab.tasks.train (a module), `from cnnlab.data import Split` names cnnlab.data."""
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
            out += [(f"{base}.{a.name}" if exists(f"{base}.{a.name}", package) else base, node.lineno) for a in node.names]
    return [(name, line) for name, line in out if name == "cnnlab" or name.startswith("cnnlab.")]


def edges(package: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of the package in the package."""
    out = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        tree = ast.parse(path.read_text(), filename=str(path))
        out += [(module, target, line) for target, line in imported(tree, module, path.name == "__init__.py", package)]
    return list(dict.fromkeys(out))  # `from x import a, b` is one import


def rank(u: str) -> tuple[int, int]:
    layer = UNITS[u]
    return LAYERS.index(layer), FEATURES.index(u) if layer == "feature" else 0


def undeclared(package: Path) -> list[str]:
    found = {unit(module_name(p, package)) for p in package.rglob("*.py")}
    return [f"cnnlab.{u} is not declared in tests/test_layout.py (UNITS, and FEATURES for a feature)"
            for u in sorted(found - set(UNITS))]


def against_the_order(package: Path) -> list[str]:
    found = []
    for module, target, line in edges(package):
        a, b = unit(module), unit(target)
        if a == b or a not in UNITS or b not in UNITS:
            continue
        if rank(b) > rank(a):
            what = lambda u: f"feature {u}" if UNITS[u] == "feature" else UNITS[u]  # noqa: E731
            found.append(f"{module} ({what(a)}) imports {target} ({what(b)}), line {line}")
    return found


def task_imports(package: Path) -> list[str]:
    found = []
    for module, target, line in edges(package):
        m, t = module.split("."), target.split(".")
        if m[1:2] == t[1:2] == ["tasks"] and len(m) > 2 and (len(t) == 2 or t[2] != m[2]):
            found.append(f"task {module} imports {target}, line {line}")
    return found


def circles(package: Path) -> list[str]:
    """Every import between two units that lies on a circle (the imported unit leads back)."""
    graph: dict[str, dict[str, str]] = {}
    for module, target, line in edges(package):
        a, b = unit(module), unit(target)
        if a != b and a and b:
            graph.setdefault(a, {}).setdefault(b, f"{module} -> {target}, line {line}")

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return [f"circle: {a} -> {b} ({why}) and {b} leads back to {a}"
            for a in sorted(graph) for b, why in sorted(graph[a].items()) if a in reach(b)]


def violations(package: Path) -> list[str]:
    return undeclared(package) + against_the_order(package) + task_imports(package) + circles(package)


def test_the_package_keeps_the_layout():
    assert violations(PACKAGE) == []


def test_the_reader_sees_every_kind_of_import_in_the_real_package():
    found = {(m, t) for m, t, _ in edges(PACKAGE)}
    assert ("cnnlab.engine.run", "cnnlab.engine.trainer") in found  # from cnnlab.engine.trainer import ...
    assert ("cnnlab.cli", "cnnlab.tasks.train") in found  # function-local: from cnnlab.tasks import train as task
    assert ("cnnlab.engine.run", "cnnlab.engine.tta") in found  # from cnnlab.engine import tta (a module)
    assert ("cnnlab.engine.run", "cnnlab.report.train") in found  # function-local, inside an if
    assert ("cnnlab.models", "cnnlab.models.small") in found  # from cnnlab.models import small, ... (registration)
    modules = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert {m for m, _ in found} <= modules and len(modules) > 80


def write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "cnnlab"
    for rel, text in {"__init__.py": "", "errors.py": "", "io.py": "", "data/__init__.py": "", "models/__init__.py": "",
                      "tasks/__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_a_clean_planted_package_passes(tmp_path):
    pkg = write(tmp_path, {"data/module.py": "from cnnlab.models import x\nfrom ..errors import UserError\n",
                           "tasks/train.py": "from cnnlab.data import module\n",
                           "cli.py": "def f():\n    from cnnlab.tasks import train\n"})
    assert violations(pkg) == []


def test_an_arrow_against_the_order_fails_late_and_relative_imports_too(tmp_path):
    pkg = write(tmp_path, {"registry.py": "from cnnlab import errors\nfrom . import recipe\n",
                           "recipe.py": "",
                           "models/spec.py": "def late():\n    from ..data import module\n",
                           "data/module.py": "import cnnlab.cli\n",
                           "cli.py": ""})
    assert against_the_order(pkg) == [
        "cnnlab.data.module (feature data) imports cnnlab.cli (cli), line 1",
        "cnnlab.models.spec (feature models) imports cnnlab.data.module (feature data), line 2",
        "cnnlab.registry (base) imports cnnlab.recipe (recipe), line 2",
    ]


def test_a_task_importing_a_task_fails(tmp_path):
    pkg = write(tmp_path, {"tasks/train.py": "", "tasks/sweep.py": "def run():\n    from cnnlab.tasks import train\n",
                           "tasks/eval.py": "from .train import run\nfrom cnnlab import tasks\n"})
    assert task_imports(pkg) == ["task cnnlab.tasks.eval imports cnnlab.tasks.train, line 1",
                                 "task cnnlab.tasks.eval imports cnnlab.tasks, line 2",
                                 "task cnnlab.tasks.sweep imports cnnlab.tasks.train, line 2"]


def test_a_circle_fails_even_inside_one_layer(tmp_path):
    # io and env are both base, so the order allows each arrow; the circle is still caught
    pkg = write(tmp_path, {"io.py": "from cnnlab.env import versions\n", "env.py": "def f():\n    from cnnlab import io\n"})
    assert against_the_order(pkg) == []
    assert circles(pkg) == ["circle: env -> io (cnnlab.env -> cnnlab.io, line 2) and io leads back to env",
                            "circle: io -> env (cnnlab.io -> cnnlab.env, line 1) and env leads back to io"]


def test_an_undeclared_unit_fails(tmp_path):
    pkg = write(tmp_path, {"serve/__init__.py": "", "lit.py": ""})
    assert undeclared(pkg) == [
        "cnnlab.lit is not declared in tests/test_layout.py (UNITS, and FEATURES for a feature)",
        "cnnlab.serve is not declared in tests/test_layout.py (UNITS, and FEATURES for a feature)",
    ]
