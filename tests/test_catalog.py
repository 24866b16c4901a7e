"""`cnnlab list`, `cnnlab cp`, built-in recipes by name, `--version` and completion. The list is read
from the registries: a test walks every module for Registry objects, so a new registry or part
that `list` would miss fails here."""
import importlib
import json
import pkgutil

import pytest

import cnnlab
from cnnlab import shipped
from cnnlab.registry import Registry
from conftest import RECIPES


def every_registry() -> dict[str, Registry]:
    """Every Registry object in every cnnlab module, found by walking the package (not from ALL)."""
    found = {}
    for info in pkgutil.walk_packages(cnnlab.__path__, "cnnlab."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Registry):
                found[value.listed_as] = value
    return found


def test_list_shows_every_registered_part_of_every_registry_with_a_description(cli):
    from cnnlab.tasks import catalog

    regs = every_registry()
    assert set(regs) <= set(catalog.kinds()) and len(regs) >= 8
    for kind, reg in regs.items():
        res = cli("list", kind, "--json")
        assert res.exit_code == 0, res.output
        listed = {e["name"]: e for e in json.loads(res.output)["entries"]}
        assert set(listed) == set(reg.parts()) | {f"{p}:<name>" for p in reg.prefixes()}, kind
        assert all(e["description"] for e in listed.values()), [n for n, e in listed.items() if not e["description"]]
    vgg = {e["name"]: e for e in json.loads(cli("list", "models", "--json").output)["entries"]}["vgg-small"]
    assert {p["name"]: p["default"] for p in vgg["parameters"]} == {"widths": [32, 64, 128], "depth": 2, "dropout": 0.0}
    crop = json.loads(cli("list", "ops", "crop", "--json").output)["entries"]
    assert [e["name"] for e in crop] == ["crop", "resized_crop"]  # a pattern: part of the name
    table = cli("list", "views").output
    assert "ten-crop" in table and "hflip" in table


def test_list_precisions_says_what_runs_here_and_recipes_what_each_is(cli):
    rows = {e["name"]: e for e in json.loads(cli("list", "precisions", "--json").output)["entries"]}
    assert rows["32-true"]["runs"]["cpu"] == "yes" and rows["bf16-mixed"]["runs"]["cpu"] == "yes"
    assert "needs a CUDA device" in rows["16-mixed"]["runs"]["cpu"]
    recipes = {e["name"]: e for e in json.loads(cli("list", "recipes", "--json").output)["entries"]}
    assert set(recipes) == {n.removesuffix(".yaml") for n in shipped.names()}
    assert recipes["smoke"]["description"] == (RECIPES / "smoke.yaml").read_text().splitlines()[0].lstrip("# ")
    bad = cli("list", "modles")
    assert bad.exit_code == 2 and "cnnlab list modles: not a kind of part; choose from algorithms" in bad.output


def test_cp_copies_a_built_in_recipe_and_never_writes_over_a_file(cli):
    res = cli("cp", "smoke")
    assert res.exit_code == 0 and (cli.cwd / "smoke.yaml").read_text() == (RECIPES / "smoke.yaml").read_text()
    again = cli("cp", "smoke")
    assert again.exit_code == 2 and "exists; give another name" in again.output
    assert cli("cp", "smoke", "mine.yaml").exit_code == 0 and (cli.cwd / "mine.yaml").is_file()
    unknown = cli("cp", "smok")
    assert unknown.exit_code == 2 and "not a built-in recipe; choose from" in unknown.output


def test_a_built_in_recipe_by_name_says_so_and_a_local_file_wins(cli):
    res = cli("bench-data", "smoke", "--repeats", "0")  # loads the recipe, then refuses the flag
    assert res.exit_code == 2 and f"recipe: the built-in smoke.yaml ({shipped.recipe('smoke.yaml')})" in " ".join(res.output.split())
    (cli.cwd / "smoke.yaml").write_text((RECIPES / "smoke.yaml").read_text())
    res = cli("bench-data", "smoke.yaml", "--repeats", "0")
    assert res.exit_code == 2 and "built-in" not in res.output


def test_version_and_shell_completion(cli):
    from cnnlab.cli import _kinds
    from cnnlab.tasks import catalog

    assert cli("--version").output.strip() == f"cnnlab {cnnlab.__version__}"
    assert "--install-completion" in cli("--help").output
    assert _kinds("") == sorted(catalog.kinds()) and _kinds("re") == ["recipes", "regimes"]


@pytest.mark.parametrize("kind", ["models", "recipes"])
def test_list_tables_render(cli, kind):
    res = cli("list", kind)
    assert res.exit_code == 0 and kind in res.output
