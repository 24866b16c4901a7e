"""Experiment trackers (`output.loggers`), read back through their own readers: a real SQLite MLflow
store through `mlflow.MlflowClient` (params, per-epoch metrics, artifacts, tags, a sweep's parent
and child runs, two processes writing at once), TensorBoard's event files through its
EventAccumulator; a tracker whose package is missing, and a bad list, refused before any work.
Three short runs of the smoke recipe, trained once for the module."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnlab import recipe as rc
from conftest import RECIPES

mlflow = pytest.importorskip("mlflow")  # the track extra; imported once here (seconds)
pytest.importorskip("tensorboard")

SMOKE = RECIPES / "smoke.yaml"
# two epochs of two steps: the loggers see every kind of row (steps, epochs, test) in a fraction of a second
TRACKED = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "data.subset=20", "data.test_subset=5",
           "output.loggers=[csv, tensorboard, mlflow]"]
CELLS = {"lr0.05": "optim.lr=0.05", "lr0.2": "optim.lr=0.2"}
WRITERS, RUNS, STEPS = 2, 3, 20  # processes, runs each, logging calls a run


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run alone, and a sweep of two cells grouped under a parent run, all in one store; while the
    cells train, two more processes write runs into the same store (test_two_processes_write_...):
    started first, they import mlflow while this process imports Lightning."""
    out = tmp_path_factory.mktemp("tracked")
    go = out / "go"
    helper = Path(__file__).parent / "helpers" / "mlflow_writer.py"
    writers = [subprocess.Popen([sys.executable, str(helper), str(go), f"w{i}", str(RUNS), str(STEPS), str(WRITERS)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(WRITERS)]
    try:
        from cnnlab.engine import trackers
        from cnnlab.engine.run import train

        recipe = rc.load(SMOKE, [f"output.dir={out}", *TRACKED], preflight=True)
        alone = train(recipe, progress=False)  # made the store
        uri = trackers.mlflow_uri(recipe.output)
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("writers", artifact_location=trackers.artifact_location(uri))
        (out / "go-tmp").write_text(json.dumps({"uri": uri, "experiment": experiment}))
        (out / "go-tmp").rename(go)  # whole when they read it
        sweep_dir = out / "sweep"
        group = trackers.open_group(recipe, sweep_dir, "lr-sweep")
        cells = {cell: train(rc.load(SMOKE, [f"output.dir={out}", *TRACKED, setting], preflight=True),
                             progress=False, run_dir=sweep_dir / cell, tracking=group, cell=cell)
                 for cell, setting in CELLS.items()}
        (sweep_dir / "sweep.json").write_text(json.dumps({"cells": list(cells)}))
        trackers.close_group(group, {"runs": 2, "best": "lr0.2"}, [sweep_dir / "sweep.json", sweep_dir / "absent.png"],
                             "FINISHED")
        yield SimpleNamespace(out=out, recipe=recipe, alone=alone, cells=cells, group=group, uri=uri, client=client,
                              writers=writers, writers_experiment=experiment)
    finally:
        for w in writers:  # a fixture that failed before `go` leaves them waiting
            if w.poll() is None:
                w.kill()
            w.wait()


def only_run(client, name: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    [run] = client.search_runs(experiments, filter_string=f"attributes.run_name = '{name}'")
    return run


def test_a_run_alone_has_the_recipe_as_params_metrics_per_epoch_and_its_files(tracked):
    from cnnlab.io import epoch_metrics

    run_dir = Path(tracked.alone["run_dir"])
    c = tracked.client
    run = only_run(c, run_dir.name)  # named by its run folder
    assert c.get_experiment(run.info.experiment_id).name == "smoke"  # output.name
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["optim.lr"], p["model.widths"], p["trainer.max_epochs"], p["data.root"]) == ("0.1", "[16, 32, 32]", "2", "null")
    assert p["output.loggers"] == '["csv", "tensorboard", "mlflow"]' and p["optim.name"] == "sgd"
    assert run.data.tags["checkpoint"] == tracked.alone["checkpoint"] and run.data.tags["cnnlab.run_dir"] == str(run_dir)
    csv = epoch_metrics(run_dir / "metrics.csv")
    for key in ("val/acc", "train/loss"):
        history = c.get_metric_history(run.info.run_id, key)
        assert [m.value for m in history] == pytest.approx([csv[key][e] for e in sorted(csv[key])])  # one per epoch
        assert len(history) == 2 and history[0].step < history[1].step
    assert c.get_metric_history(run.info.run_id, "test/acc")[0].value == pytest.approx(tracked.alone["test_acc"])
    files = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"results.json", "recipe.yaml", "curves.png"} <= files
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="results.json",
                                                     tracking_uri=tracked.uri))
    assert json.loads(local.read_text())["test_acc"] == tracked.alone["test_acc"]
    # the store and its artifacts beside the run folders, in output.dir
    assert run.info.artifact_uri.startswith((tracked.out / "mlartifacts").as_uri())
    assert (tracked.out / "mlflow.db").is_file()


def test_a_sweeps_cells_are_the_two_children_of_its_parent_run(tracked):
    c, g = tracked.client, tracked.group
    parent = c.get_run(g.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "lr-sweep"
    assert parent.data.params["optim.lr"] == "0.1" and "sweep" not in parent.data.params
    assert parent.data.metrics["runs"] == 2
    assert {a.path for a in c.list_artifacts(g.parent_run_id)} == {"sweep.json", "summary.json"}
    children = c.search_runs([g.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{g.parent_run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(CELLS)
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.params["optim.lr"] == CELLS[r.info.run_name].split("=")[1]
        assert r.data.tags["checkpoint"] == tracked.cells[r.info.run_name]["checkpoint"]
        assert len(c.get_metric_history(r.info.run_id, "val/acc")) == 2


def test_a_group_is_plain_json(tracked):
    from cnnlab.engine.trackers import Group

    g = tracked.group
    assert Group.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert g.tensorboard_dir == str((tracked.out / "sweep" / "tensorboard").resolve()) and g.experiment == "smoke"


def test_tensorboard_holds_the_scalars_of_every_epoch(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = [Path(tracked.alone["run_dir"]) / "tensorboard", *(Path(tracked.group.tensorboard_dir) / c for c in CELLS)]
    for folder in folders:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc"} <= tags, (folder, tags)
        assert len(acc.Scalars("val/acc")) == len(acc.Scalars("train/loss")) == 2  # one per epoch
    # a sweep's cells are the runs of one TensorBoard folder, named by the cell
    assert sorted(p.name for p in Path(tracked.group.tensorboard_dir).iterdir()) == sorted(CELLS)


def test_the_default_store_waits_for_a_busy_database(tracked):
    """The busy timeout in the URL reaches sqlite3.connect (SQLAlchemy's pysqlite reads it from the
    query): a fresh connection of the store's own engine waits that long for another writer's lock."""
    from mlflow.store.db.utils import create_sqlalchemy_engine

    from cnnlab.engine.trackers import BUSY_TIMEOUT_S

    assert tracked.uri == f"sqlite:///{tracked.out.resolve() / 'mlflow.db'}?timeout={BUSY_TIMEOUT_S}"
    con = create_sqlalchemy_engine(tracked.uri).raw_connection()
    try:
        assert con.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_S * 1000
    finally:
        con.close()


def test_two_processes_write_one_store_at_once(tracked):
    """Two processes (tests/helpers/mlflow_writer.py), started together, each log runs into the store
    the fixture's cells log into at the same time: three writers of one SQLite file, none refused."""
    outs = [w.communicate(timeout=120)[0] for w in tracked.writers]
    assert [w.returncode for w in tracked.writers] == [0] * WRITERS, outs
    c = tracked.client
    runs = c.search_runs([tracked.writers_experiment])
    assert len(runs) == WRITERS * RUNS and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(c.get_metric_history(r.info.run_id, "loss")) == STEPS for r in runs)


def test_trackers_follow_metrics_csv_on_the_trainer(tmp_path):
    from cnnlab.engine.callbacks import MetricsCSV
    from cnnlab.engine.trackers import RunTensorBoard, build
    from cnnlab.engine.trainer import build_trainer
    from cnnlab.spec import TrainerSpec

    assert build(rc.load(SMOKE)) == []  # csv alone: nothing more
    trainer = build_trainer(TrainerSpec(accelerator="cpu"), tmp_path, progress=False, loggers=[RunTensorBoard(tmp_path)])
    assert [type(lg) for lg in trainer.loggers] == [MetricsCSV, RunTensorBoard]


def missing(*names: str):
    real = importlib.util.find_spec
    return lambda name, *a, **k: None if name in names else real(name, *a, **k)


@pytest.mark.parametrize("hidden,asked,line", [
    (("mlflow",), "[csv, mlflow]", "output.loggers (--set): 'mlflow' needs the track extra: pip install 'cnnlab[track]'"),
    (("tensorboard", "tensorboardX"), "[csv, tensorboard]",
     "output.loggers (--set): 'tensorboard' needs the track extra (TensorBoardLogger writes with tensorboard or "
     "tensorboardX): pip install 'cnnlab[track]'"),
])
def test_a_tracker_not_installed_is_one_line_naming_the_extra_and_nothing_is_written(cli, monkeypatch, hidden, asked, line):
    monkeypatch.setattr(importlib.util, "find_spec", missing(*hidden))
    res = cli("train", str(SMOKE), "--set", f"output.dir={cli.runs}", "--set", f"output.loggers={asked}")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert [ln.strip() for ln in res.output.splitlines() if "output.loggers" in ln] == [line]
    assert not cli.runs.exists() and list(cli.cwd.iterdir()) == []


@pytest.mark.parametrize("asked,line", [
    ("[tensorboard, mlflow]", "output.loggers (--set): csv must stay in the list (cnnlab's run folder reads metrics.csv); "
                              "add trackers beside it, e.g. [csv, tensorboard, mlflow]"),
    ("[csv, tensorbord]", "output.loggers.1 (--set): 'tensorbord' is not allowed (did you mean 'tensorboard'?); "
                          "choose from csv, tensorboard, mlflow"),
    ("[csv, mlflow, mlflow]", "output.loggers (--set): 'mlflow' given twice; list each tracker once: [csv, mlflow]"),
])
def test_a_bad_list_of_loggers_is_refused_in_one_line(asked, line):
    with pytest.raises(rc.RecipeError) as e:
        rc.load(SMOKE, [f"output.loggers={asked}"])
    assert e.value.problems == [line]


def test_a_store_that_cannot_be_used_is_a_user_error_naming_the_key():
    from cnnlab.engine.trackers import build
    from cnnlab.errors import UserError

    with pytest.raises(UserError, match=r"^output\.mlflow_uri: cannot use the MLflow store nosuch://store: "):
        build(rc.load(SMOKE, ["output.loggers=[csv, mlflow]", "output.mlflow_uri=nosuch://store"]))
