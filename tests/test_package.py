"""The installed package: the wheel holds every package and every recipe, and a command run from
outside the checkout finds the shipped recipes by name."""
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, RECIPES


def test_pyproject_lists_every_package_of_the_tree():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnnlab").rglob("__init__.py")}
    assert sorted(listed) == sorted(found | {"cnnlab.recipes"})


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, built with the venv's own setuptools (no download) and installed, without its
    dependencies, into a folder outside the source tree."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(out / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = (out / "dist").glob("cnnlab-*.whl")
    site = out / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    return wheel, site


@pytest.mark.slow
def test_the_wheel_holds_every_recipe(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"cnnlab/recipes/{p.name}" for p in RECIPES.glob("*.yaml")} <= set(names)
    assert "cnnlab/engine/run.py" in names and "cnnlab/report/train.py" in names


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_an_installed_cnnlab_finds_the_shipped_recipes_from_any_folder(installed, tmp_path):
    _, site = installed
    where = subprocess.run([sys.executable, "-c", "import cnnlab.shipped as s; print(s.__file__); print(s.folder())"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    module, folder = where.stdout.split()
    assert module.startswith(str(site)) and folder.startswith(str(site))  # the installed copy, not the checkout
    res = run_installed(site, tmp_path, "train", "smoke", "--print-recipe")
    assert res.returncode == 0, res.stderr
    assert "widths:\n  - 16\n  - 32\n  - 32" in res.stdout  # recipes/smoke.yaml's model
    # a command whose default recipe is shipped: bench-data's data section, refused on a bad value
    # before any work, so the default resolved and validated from here
    res = run_installed(site, tmp_path, "bench-data", "--repeats", "0")
    assert res.returncode == 2 and "--repeats" in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written outside


def test_a_shipped_recipe_is_found_by_name_and_a_missing_one_lists_them(cli):
    from cnnlab import shipped

    for name in ("smoke", "smoke.yaml", "recipes/smoke.yaml"):
        assert shipped.resolve(name) == RECIPES / "smoke.yaml"  # from cli's empty working folder
    assert shipped.resolve("elsewhere/smoke.yaml") == Path("elsewhere/smoke.yaml")  # a path is a path
    res = cli("train", "no-such-recipe.yaml", "--print-recipe")
    assert res.exit_code == 2 and "shipped recipes" in res.output and "smoke.yaml" in res.output
