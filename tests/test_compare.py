"""`cnnlab compare`: real run folders side by side (the suite's smoke run, a run stopped by a signal
through the engine's own stop, and copies of the smoke run with one recipe key edited), a sweep-like
folder expanding to its runs, and every refusal: exit 2, one line, nothing written."""
import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from cnnlab.tasks.compare import differing, flatten, with_defaults
from conftest import RECIPES


DROP = object()  # a recipe edit that removes the key, as a recipe.yaml of an older cnnlab lacks it


def copy_run(src: Path, dest: Path, **recipe_edits) -> Path:
    """A copy of a run folder (without its checkpoints and plots), its recipe.yaml edited
    (`optim__lr=0.05` sets optim.lr, `output__plots=DROP` removes it): a second run that differs
    in exactly those keys."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    recipe = yaml.safe_load((dest / "recipe.yaml").read_text())
    for key, value in recipe_edits.items():
        *sections, last = key.split("__")
        d = recipe
        for s in sections:
            d = d[s]
        if value is DROP:
            del d[last]
        else:
            d[last] = value
    (dest / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def written(cli) -> dict:
    """compare.json of the one compare folder under cli.runs."""
    [folder] = list(cli.runs.iterdir())
    assert folder.name.startswith("compare-")
    return json.loads((folder / "compare.json").read_text())


def flat(output: str) -> str:
    return " ".join(output.split())


def test_flatten_and_differing_keys():
    a = {"optim": {"lr": 0.1, "betas": [0.9, 0.999]}, "eval": {"views": {}}, "output": {"dir": "x", "name": "a"}}
    b = {"optim": {"lr": 0.05, "betas": [0.9, 0.999]}, "eval": {"views": {}}, "output": {"dir": "y", "name": "b"}, "seed": 1}
    assert flatten(a) == {"optim.lr": 0.1, "optim.betas": [0.9, 0.999], "eval.views": {}, "output.dir": "x", "output.name": "a"}
    assert differing([flatten(a), flatten(b)]) == ["optim.lr", "seed"]  # a key one lacks differs; output.* never
    assert differing([flatten(a)]) == []
    # a key added to cnnlab since a run was written reads as today's default; a section given in
    # other terms (finetune: null beside finetune.regime) gets no default
    defaults = {"optim.lr": 0.1, "output.loggers": ["csv"], "finetune": None}
    older = with_defaults({"optim.lr": 0.2, "finetune.regime": "top"}, defaults)
    assert older == {"optim.lr": 0.2, "finetune.regime": "top", "output.loggers": ["csv"]}
    assert differing([older, with_defaults({"optim.lr": 0.2, "output.loggers": ["csv"], "finetune": None}, defaults)]) \
        == ["finetune.regime", "finetune"]


def test_two_runs_side_by_side_name_the_key_that_differs(cli, smoke_run, tmp_path):
    base = results(smoke_run.path)
    other = copy_run(smoke_run.path, tmp_path / "lower-lr", optim__lr=0.05, output__name="other", output__dir="elsewhere")
    r = results(other)
    r["test_acc"], r["test_loss"] = base["test_acc"] / 2, 1.5  # its own numbers, so the table must read each file
    (other / "results.json").write_text(json.dumps(r))

    res = cli("compare", str(smoke_run.path), str(other), "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    text = flat(res.output)
    assert "1 recipe key differs" in text and "optim.lr" in text and "output.name" not in text
    smoke_line = next(line for line in res.output.splitlines() if smoke_run.path.name in line)
    other_line = next(line for line in res.output.splitlines() if "lower-lr" in line)
    assert " 0.1 " in smoke_line and f"{base['test_acc']:.2%}" in smoke_line and f"{base['test_loss']:.4f}" in smoke_line
    assert " 0.05 " in other_line and f"{r['test_acc']:.2%}" in other_line and "1.5000" in other_line
    assert f"{base['train_images_per_s']:,.0f}" in smoke_line and f"{base['wall_time_s']:.1f} s" in smoke_line

    c = written(cli)
    assert c["differing"] == ["optim.lr"] and c["runs"] == [str(smoke_run.path), str(other)]
    assert [row["recipe"] for row in c["rows"]] == [{"optim.lr": 0.1}, {"optim.lr": 0.05}]
    assert [row["test_acc"] for row in c["rows"]] == [base["test_acc"], r["test_acc"]]
    assert [row["status"] for row in c["rows"]] == ["finished", "finished"]
    assert sorted(map(int, c["curves"][0]["train/loss"])) == list(range(base["epochs"]))
    assert f"wrote {c['json']} and {c['plot']}" in text

    from PIL import Image

    with Image.open(c["plot"]) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100  # two panels side by side
        png.load()

    # the same recipe, written elsewhere by an older cnnlab without output.plots: nothing differs
    same = copy_run(smoke_run.path, tmp_path / "again", output__name="again", output__dir="x", output__plots=DROP)
    res = cli("compare", str(smoke_run.path), str(same), "--out", str(tmp_path / "same"))
    assert res.exit_code == 0, res.output
    assert "the recipes are the same but for output.dir and output.name" in flat(res.output)
    [folder] = list((tmp_path / "same").iterdir())
    assert json.loads((folder / "compare.json").read_text())["differing"] == []


def test_a_run_stopped_by_a_signal_is_listed_as_interrupted(cli, smoke_run):
    """A second real run, its own recipe, stopped by SIGTERM through the engine's StopOnSignal (which
    writes the interrupted record): against the smoke run the differing keys are exactly the
    overrides in which the two recipes differ, more than fit in a column each."""
    import pytorch_lightning as pl

    from cnnlab import recipe as rc
    from cnnlab.engine.run import train
    from cnnlab.engine.signals import StopOnSignal
    from cnnlab.errors import Interrupted

    class TermAtEpoch1(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:  # as the handler records a SIGTERM
                next(c for c in trainer.callbacks if isinstance(c, StopOnSignal)).signum = signal.SIGTERM

    stopped = cli.runs.parent / "stopped"
    r = rc.load(RECIPES / "smoke.yaml", [f"output.dir={stopped}", "trainer.max_epochs=3", "data.subset=10",
                                         "data.test_subset=5", "output.plots=false"])
    with pytest.raises(Interrupted):
        train(r, progress=False, callbacks=[TermAtEpoch1()])
    [run] = list(stopped.iterdir())
    assert "interrupted" in results(run) and "test_acc" not in results(run)

    res = cli("compare", str(smoke_run.path), str(run), "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    c = written(cli)
    assert set(c["differing"]) == {"augment.ops", "eval.tta", "data.subset", "data.test_subset", "trainer.max_epochs",
                                   "output.plots"}
    assert [row["status"] for row in c["rows"]] == ["finished", "interrupted"] and c["rows"][1]["test_acc"] is None
    assert c["rows"][1]["stopped"]["signal"] == "SIGTERM"
    text = flat(res.output)
    assert "6 recipe keys differ" in text and "differs" in text  # one column of key=value pairs
    assert "interrupted after 1 epoch" in text and "data.subset=10" in text
    assert "trainer.max_epochs=3" in text and "eval.tta=[]" in text  # a list value as a --set writes it
    assert sorted(c["curves"][1]["train/loss"]) == ["0"]  # the epoch it finished, drawn dashed


def test_a_sweep_folder_expands_to_its_runs_sorted_and_a_run_given_twice_counts_once(cli, smoke_run, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copy(smoke_run.path / "recipe.yaml", sweep / "recipe.yaml")  # a sweep's own folder: a recipe, no results
    (sweep / "sweep.json").write_text("{}")
    copy_run(smoke_run.path, sweep / "lr-0.1" / "seed0")
    copy_run(smoke_run.path, sweep / "lr-0.05" / "seed0", optim__lr=0.05)
    diverged = copy_run(smoke_run.path, sweep / "lr-9" / "seed0", optim__lr=9.0)
    (diverged / "results.json").write_text(json.dumps({"run_dir": str(diverged), "diverged": {"step": 7, "checkpoint": "x"}}))

    res = cli("compare", str(sweep), str(sweep / "lr-0.1" / "seed0"), "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    c = written(cli)
    assert [row["name"] for row in c["rows"]] == ["lr-0.05/seed0", "lr-0.1/seed0", "lr-9/seed0"]
    assert [row["recipe"]["optim.lr"] for row in c["rows"]] == [0.05, 0.1, 9.0]
    assert [row["status"] for row in c["rows"]] == ["finished", "finished", "diverged"]
    assert "diverged (step 7)" in flat(res.output)

    twice = cli("compare", str(sweep / "lr-0.1"), str(sweep / "lr-0.05"), "--out", str(tmp_path / "two"))
    assert twice.exit_code == 0, twice.output  # both name their run seed0: each row says which one it is
    [folder] = list((tmp_path / "two").iterdir())
    names = [row["name"] for row in json.loads((folder / "compare.json").read_text())["rows"]]
    assert names == [str(sweep / "lr-0.1" / "seed0"), str(sweep / "lr-0.05" / "seed0")]


def _broken_json(tmp_path: Path, smoke_run) -> Path:
    """A sweep whose second run's results.json was cut short: refused before anything is written."""
    copy_run(smoke_run.path, tmp_path / "sweep" / "a")
    bad = copy_run(smoke_run.path, tmp_path / "sweep" / "b")
    (bad / "results.json").write_text('{"test_acc": 0.5,')
    return tmp_path / "sweep"


def _a_list(tmp_path: Path, smoke_run) -> Path:
    run = copy_run(smoke_run.path, tmp_path / "run")
    (run / "results.json").write_text("[0.5]")
    return run


def _no_recipe(tmp_path: Path, smoke_run) -> Path:
    run = copy_run(smoke_run.path, tmp_path / "run")
    (run / "recipe.yaml").unlink()
    return run


def _no_runs(tmp_path: Path, smoke_run) -> Path:
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    shutil.copy(smoke_run.path / "recipe.yaml", tmp_path / "empty" / "recipe.yaml")  # a sweep with no run yet
    return tmp_path / "empty"


def _missing(tmp_path: Path, smoke_run) -> Path:
    return tmp_path / "nope"


@pytest.mark.parametrize("make,why", [
    (_missing, "{p}: no such file or folder"),
    (_no_runs, "{p}: no run folders under it (a run folder holds results.json and recipe.yaml)"),
    (_broken_json, "{p}/b/results.json: not JSON (line 1, column 18: Expecting property name enclosed in double quotes)"),
    (_a_list, "{p}/results.json: not a JSON mapping of results, but an array"),
    (_no_recipe, "{p}: holds results.json but no recipe.yaml, so it is not a run folder of cnnlab train or finetune"),
    (None, "missing RUN_OR_SWEEP: cnnlab compare runs/a runs/b (run folders, or folders of runs)"),
], ids=["missing", "no-runs", "not-json", "not-a-mapping", "no-recipe", "no-arguments"])
def test_refusals_are_one_line_exit_2_and_write_nothing(cli, smoke_run, tmp_path, make, why):
    args = [] if make is None else [str(p := make(tmp_path, smoke_run))]
    res = cli("compare", *([str(smoke_run.path)] if make is _missing else []), *args)  # default --out runs, in cwd
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    [line] = res.output.strip().splitlines()
    assert line == "error: " + why.format(p=p if make else "")
    assert list(cli.cwd.iterdir()) == []
