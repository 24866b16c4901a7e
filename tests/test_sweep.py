"""`cnnlab sweep`: grids of any recipe key x seeds, validated up front; the one summary (paired
differences on known numbers); jobs x threads within the cores; trials side by side giving the
same numbers as one at a time at equal threads; submitit's local executor; resume."""
import json
import math
from pathlib import Path

import pytest

from cnnlab.errors import UserError
from cnnlab.sweep import cells, paired, parse_grid, summarise, trials
from cnnlab.sweep.spec import LauncherSpec

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SMOKE = str(RECIPES / "smoke.yaml")
TINY = ["data.subset=10", "data.test_subset=5", "trainer.max_epochs=1", "output.plots=false"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# --------------------------------------------------------------------------- the grid

def test_a_grid_takes_yaml_flow_lists_of_numbers_lists_and_mappings():
    g = parse_grid(["optim.lr=[0.05, 0.1, 0.2]", "model.widths=[[16, 32], [32, 64]]",
                    "optim.weights=[{dtype: bf16, rounding: nearest}, {dtype: bf16, rounding: stochastic}]"])
    assert g["optim.lr"] == [0.05, 0.1, 0.2] and g["model.widths"] == [[16, 32], [32, 64]]
    assert g["optim.weights"][1] == {"dtype": "bf16", "rounding": "stochastic"}
    cs = cells(None, g)
    assert len(cs) == 12 and cs[0].label == 'optim.lr=0.05 model.widths=[16, 32] optim.weights={"dtype": "bf16", "rounding": "nearest"}'
    assert cs[0].overrides[1] == "model.widths=[16, 32]" and cs[-1].values["optim.lr"] == 0.2
    ts = trials(cs, [0, 1])
    assert len(ts) == 24 and [t.seed for t in ts[:12]] == [0] * 12  # seed by seed, every cell in turn
    assert len({t.id for t in ts}) == 24 and all("/" not in t.id for t in ts)


def test_variants_cross_the_grid():
    cs = cells({"sgd": [], "adamw": ["optim.name=adamw"]}, {"optim.lr": [0.1, 0.01]})
    assert [c.label for c in cs] == ["sgd optim.lr=0.1", "sgd optim.lr=0.01", "adamw optim.lr=0.1", "adamw optim.lr=0.01"]
    assert cs[2].overrides == ["optim.name=adamw", "optim.lr=0.1"]


def test_a_recipes_sweep_section_holds_the_grid_and_the_flags_win():
    from cnnlab import recipe as rc
    from cnnlab.engine.sweep import plan

    r = rc.load(RECIPES / "sweep_lr.yaml")
    p = plan(r, preflight=False)
    assert [c.label for c in p.cells] == ["optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.2"] and p.seeds == [0, 1, 2]
    assert len(p.trials) == 9 and p.recipes[p.trials[-1].id].optim.lr == 0.2 and p.recipes[p.trials[-1].id].seed == 2
    p = plan(r, {"optim.lr": [0.3], "model.depth": [1, 2]}, [5], preflight=False)  # --grid replaces a key, adds one
    assert [c.label for c in p.cells] == ["optim.lr=0.3 model.depth=1", "optim.lr=0.3 model.depth=2"] and p.seeds == [5]
    assert "sweep" not in p.base and p.recipes[p.trials[1].id].model.depth == 2
    with pytest.raises(UserError, match=r"sweep.grid.seed"):
        rc.load(None, ["sweep={grid: {seed: [1, 2]}}"])


@pytest.mark.parametrize("item, message", [
    ("optim.lr", "expected KEY=[V1, V2, ...]"),
    ("optim.lr=0.1", "a non-empty list of values in brackets"),
    ("optim.lr=[]", "got an empty list"),
    ("optim.lr=[0.1, 0.1]", "the values must be distinct"),
    ("seed=[0, 1]", "cannot set seed"),
    ("output.dir=[a, b]", "cannot set output"),
    ("optim.lr=[0.1, [", "is not a YAML list"),
])
def test_a_bad_grid_is_one_line_naming_it(item, message):
    with pytest.raises(UserError, match=r"^--grid ") as e:
        parse_grid([item])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_grid_value_of_the_wrong_type_is_refused_before_anything_runs(cli):
    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.1, abc]", *sets(f"output.dir={cli.runs}"))
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: cnnlab sweep: --grid optim.lr, value 'abc': input should be a valid number, unable to "
                     "parse string as a number, got 'abc'"], res.output
    res = cli("sweep", SMOKE, "--grid", "optim.lrr=[0.1]", "--grid", "model.widths=[3]", *sets(f"output.dir={cli.runs}"))
    assert res.exit_code == 2 and "2 problems" in res.output and "did you mean 'lr'" in res.output
    assert "--grid model.widths, value 3: input should be a valid list" in res.output
    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.1]", "--jobs", "none", *sets(f"output.dir={cli.runs}"))
    assert res.exit_code == 2 and "--jobs none: a number >= 1 or auto" in res.output
    assert not cli.runs.exists()  # nothing made, nothing run


# --------------------------------------------------------------------------- the summary

def test_paired_differences_and_their_interval_on_known_numbers():
    base = {0: 0.60, 1: 0.70, 2: 0.65}
    cell = {0: 0.61, 1: 0.73, 2: 0.67}  # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01
    d = paired(cell, base)
    assert d["mean"] == pytest.approx(0.02) and d["sd"] == pytest.approx(0.01) and d["n"] == 3
    t_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables)
    assert d["high"] - d["mean"] == pytest.approx(t_975_2 * 0.01 / math.sqrt(3))
    assert d["low"] == pytest.approx(0.02 - t_975_2 * 0.01 / math.sqrt(3))
    one = paired({0: 0.5}, {0: 0.4, 1: 0.3})
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["n"] == 1  # one pair: no spread
    assert paired({5: 0.5}, {0: 0.4}) is None


def test_the_summary_pairs_by_seed_and_lists_what_did_not_finish():
    def o(cell, seed, acc, speed=1000.0, status="done"):
        return {"cell": cell, "seed": seed, "status": status, "test_acc": acc, "train_images_per_s": speed,
                "wall_time_s": 2.0, "final_train_loss": 1.0, "threads": 1}

    runs = [o("a", 0, 0.60), o("a", 1, 0.70), o("b", 1, 0.75, 500.0), o("b", 0, 0.62, 500.0),
            {"cell": "c", "seed": 0, "status": "diverged", "why": "loss nan"}, o("c", 1, 0.5)]
    a, b, c = summarise(runs)
    assert a["baseline"] and a["vs_baseline"] is None and a["test_acc"] == pytest.approx(0.65)
    assert b["test_acc_sd"] == pytest.approx(math.sqrt(((0.62 - 0.685) ** 2 + (0.75 - 0.685) ** 2) / 1))
    assert b["vs_baseline"]["mean"] == pytest.approx(((0.62 - 0.60) + (0.75 - 0.70)) / 2)  # paired by seed, in any order
    assert b["speed_ratio"] == pytest.approx(0.5) and b["seeds"] == [0, 1]
    assert c["done"] == 1 and c["problems"] == [{"seed": 0, "status": "diverged", "why": "loss nan"}]
    assert c["vs_baseline"]["n"] == 1 and c["vs_baseline"]["mean"] == pytest.approx(0.5 - 0.70)
    [only] = summarise([{"cell": "x", "seed": 0, "status": "failed", "why": "no data"}])
    assert "test_acc" not in only and only["problems"][0]["status"] == "failed"


# --------------------------------------------------------------------------- jobs and threads

@pytest.mark.parametrize("n_cores", [1, 2, 3, 8, 16])
def test_jobs_times_threads_never_exceeds_the_cores(monkeypatch, n_cores):
    import cnnlab.engine.sweep as engine

    monkeypatch.setattr(engine, "cores", lambda: n_cores)
    for n_trials in (1, 2, 9, 40):
        for jobs in ["auto", *range(1, n_cores + 1)]:
            j, t, why = engine.resources(LauncherSpec(jobs=jobs), n_trials, gpu=False, cluster=False)
            assert j * t <= n_cores and 1 <= j <= n_trials and t >= 1 and why
        j, t, _ = engine.resources(LauncherSpec(), n_trials, gpu=False, cluster=False)
        assert (j, t) == (min(n_trials, n_cores), max(1, n_cores // min(n_trials, n_cores)))  # auto: a core per trial
        assert engine.resources(LauncherSpec(), n_trials, gpu=True, cluster=False)[0] == 1
    with pytest.raises(UserError, match=f"on {n_cores} cores"):
        engine.resources(LauncherSpec(jobs=n_cores, threads=2), 40, gpu=False, cluster=False)
    with pytest.raises(UserError, match=f"on {n_cores} cores"):
        engine.resources(LauncherSpec(jobs=n_cores + 1, threads=1), 40, gpu=False, cluster=False)


# --------------------------------------------------------------------------- through the CLI

def _accuracies(sweep_dir: Path) -> dict[str, float]:
    s = json.loads((sweep_dir / "sweep.json").read_text())
    assert all(t["status"] == "done" for t in s["trials"]), s["trials"]
    return {t["id"]: t["test_acc"] for t in s["trials"]}


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    """The smoke sweep of the tests below, one trial at a time in this process, one thread each."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    out = tmp_path_factory.mktemp("sweep1")
    res = CliRunner().invoke(app, ["sweep", SMOKE, "--grid", "optim.lr=[0.05, 0.2]", "--seeds", "2", "--jobs", "1",
                                   "--threads", "1", *sets(*TINY, f"output.dir={out}")])
    assert res.exit_code == 0, res.output
    [sweep] = out.iterdir()
    return sweep, res.output


def test_a_sweep_through_the_cli_gives_one_table_with_paired_differences(one_at_a_time):
    sweep, said = one_at_a_time
    s = json.loads((sweep / "sweep.json").read_text())
    assert s["cells"] == ["optim.lr=0.05", "optim.lr=0.2"] and s["seeds"] == [0, 1] and len(s["trials"]) == 4
    base, other = s["rows"]
    acc = {(t["cell"], t["seed"]): t["test_acc"] for t in s["trials"]}
    assert other["vs_baseline"]["mean"] == pytest.approx(
        ((acc["optim.lr=0.2", 0] - acc["optim.lr=0.05", 0]) + (acc["optim.lr=0.2", 1] - acc["optim.lr=0.05", 1])) / 2)
    assert other["vs_baseline"]["low"] is not None and other["values"] == {"optim.lr": 0.2}
    for t in s["trials"]:  # each trial an ordinary run folder, its recipe the cell's, its numbers its own
        run = Path(t["run_dir"])
        recipe = (run / "recipe.yaml").read_text()
        assert f"lr: {t['cell'].split('=')[1]}" in recipe and f"seed: {t['seed']}" in recipe
        results = json.loads((run / "results.json").read_text())
        assert results["test_acc"] == t["test_acc"] and t["threads"] == results["threads"] == 1
    assert (s["jobs"], s["threads"]) == (1, 1)
    text = " ".join(said.split())
    assert "optim.lr=0.2, seed 1: test accuracy" in text and "(95% CI)" in text and "(baseline)" in text


def _seed0(accuracies: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in accuracies.items() if k.endswith("-seed0")}


@pytest.mark.slow  # fresh interpreters: a process pool, submitit jobs
def test_trials_side_by_side_match_one_at_a_time_at_equal_threads(cli, one_at_a_time):
    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.05, 0.2]", "--jobs", "2", "--threads", "1",
              *sets(*TINY, f"output.dir={cli.runs}"))
    assert res.exit_code == 0, res.output
    [sweep] = cli.runs.iterdir()
    got = _accuracies(sweep)
    assert len(got) == 2 and got == _seed0(_accuracies(one_at_a_time[0]))
    assert json.loads((sweep / "sweep.json").read_text())["jobs"] == 2


@pytest.mark.slow  # fresh interpreters: a process pool, submitit jobs
def test_submitits_local_executor_runs_the_sweep_to_the_same_table(cli, one_at_a_time):
    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.05, 0.2]", "--jobs", "2", "--threads", "1",
              "--launcher", "submitit", *sets(*TINY, f"output.dir={cli.runs}"))
    assert res.exit_code == 0, res.output
    [sweep] = cli.runs.iterdir()
    got = _accuracies(sweep)
    assert len(got) == 2 and got == _seed0(_accuracies(one_at_a_time[0]))
    assert len(list((sweep / "submitit").glob("*_result.pkl"))) == 2  # each trial a submitit job
    assert json.loads((sweep / "sweep.json").read_text())["launcher"] == "submitit"


def test_resume_runs_only_the_trial_that_is_missing(cli, one_at_a_time, tmp_path):
    import shutil

    sweep = tmp_path / "copy"
    shutil.copytree(one_at_a_time[0], sweep)
    before = _accuracies(sweep)
    plan = json.loads((sweep / "plan.json").read_text())
    for t in plan["trials"]:  # point the copy's outcomes at the copy
        o = sweep / "cells" / t["id"] / "outcome.json"
        o.write_text(o.read_text().replace(str(one_at_a_time[0]), str(sweep)))
    missing = plan["trials"][1]["id"]
    shutil.rmtree(sweep / "cells" / missing)
    kept = {t["id"]: (sweep / "cells" / t["id"] / "outcome.json").stat().st_mtime_ns
            for t in plan["trials"] if t["id"] != missing}
    res = cli("sweep", "--resume", str(sweep))
    assert res.exit_code == 0, res.output
    assert _accuracies(sweep) == before  # the trial run again gives the same numbers (deterministic, 1 thread)
    assert {i: (sweep / "cells" / i / "outcome.json").stat().st_mtime_ns for i in kept} == kept  # untouched
    assert f"seed {plan['trials'][1]['seed']}: test accuracy" in res.output and res.output.count(": test accuracy ") == 1
    res = cli("sweep", "--resume", str(tmp_path))
    assert res.exit_code == 2 and "is not a sweep folder (no plan.json)" in res.output


def test_a_failed_or_diverged_trial_is_recorded_and_the_sweep_goes_on(cli):
    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.1, 1e30]", "--grid", "data.root=[null, /nonexistent/fm]",
              "--jobs", "1", *sets(*TINY, f"output.dir={cli.runs}"))
    assert res.exit_code == 0, res.output
    [sweep] = cli.runs.iterdir()
    s = json.loads((sweep / "sweep.json").read_text())
    status = {t["cell"]: t["status"] for t in s["trials"]}
    assert status == {"optim.lr=0.1 data.root=null": "done", "optim.lr=1e30 data.root=null": "diverged",
                      "optim.lr=0.1 data.root=/nonexistent/fm": "failed", "optim.lr=1e30 data.root=/nonexistent/fm": "failed"}
    failed = next(t for t in s["trials"] if t["status"] == "failed")
    assert "/nonexistent/fm" in failed["why"]
    res = cli("compare", str(sweep), "--out", str(cli.cwd / "cmp"))  # every trial is listed, as it ended
    assert res.exit_code == 0, res.output
    [c] = (cli.cwd / "cmp").iterdir()
    compared = json.loads((c / "compare.json").read_text())
    assert sorted(r["status"] for r in compared["rows"]) == ["diverged", "failed", "failed", "finished"]
    assert set(compared["differing"]) == {"optim.lr", "data.root"}


@pytest.mark.reliability  # three fresh interpreters and four pool processes (~30 s): make test-reliability
def test_sigint_to_the_driver_stops_the_trials_in_flight_at_a_checkpoint_and_resume_finishes(tmp_path):
    """A real SIGINT to `cnnlab sweep --jobs 2` (the driver alone, as `kill -INT` sends it): both
    trials in flight stop after a step with a checkpoint, the partial table is written and the
    resume command named; `--resume` continues them from their checkpoints and finishes the sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["sweep", SMOKE, "--grid", "optim.lr=[0.05, 0.2]", "--jobs", "2", "--threads", "1",
            *sets("data.subset=10", "data.test_subset=5", "trainer.max_epochs=60", "output.plots=false",
                  f"output.dir={tmp_path}")]
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(tmp_path.glob("*/cells/*/metrics.csv"))) < 2:
        time.sleep(0.2)  # both trials are training once each has logged
    proc.send_signal(signal.SIGINT)
    said = " ".join(proc.communicate(timeout=120)[0].split())
    assert proc.returncode == 130, said
    assert "interrupted by SIGINT: 0 of 2 trials finished and kept" in said and "Traceback" not in said
    [sweep] = tmp_path.iterdir()
    assert f"continue with: cnnlab sweep --resume {sweep}" in said
    s = json.loads((sweep / "sweep.json").read_text())
    assert s["interrupted"]["signal"] == "SIGINT" and {t["status"] for t in s["trials"]} == {"interrupted"}
    for t in s["trials"]:
        assert (Path(t["run_dir"]) / "checkpoints" / "last.ckpt").is_file() and t["interrupted"]["step"] >= 1
    res = subprocess.run([sys.executable, "-m", "cnnlab", "sweep", "--resume", str(sweep)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads((sweep / "sweep.json").read_text())
    assert [t["status"] for t in s["trials"]] == ["done", "done"] and all(t["resumed_from"] for t in s["trials"])



@pytest.mark.slow  # MLflow's import and a new store
def test_a_sweeps_trials_are_child_runs_of_one_mlflow_parent_and_share_one_tensorboard_folder(cli):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = cli("sweep", SMOKE, "--grid", "optim.lr=[0.05, 0.2]", "--seeds", "2", "--jobs", "1",
              *sets(*TINY, f"output.dir={cli.runs}", "output.loggers=[csv, tensorboard, mlflow]"))
    assert res.exit_code == 0, res.output
    [sweep] = [p for p in cli.runs.iterdir() if p.is_dir() and p.name.startswith("smoke-sweep")]
    c = MlflowClient(tracking_uri=f"sqlite:///{cli.runs.resolve()}/mlflow.db")
    [parent] = c.search_runs([c.get_experiment_by_name("smoke").experiment_id], "tags.cnnlab.sweep_dir != ''")
    assert parent.info.status == "FINISHED" and parent.info.run_name == sweep.name
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = {t["id"]: t for t in json.loads((sweep / "sweep.json").read_text())["trials"]}
    assert sorted(r.info.run_name for r in children) == sorted(trials) and len(children) == 4
    for r in children:  # each child holds its own cell's parameters and its per-epoch metrics
        t = trials[r.info.run_name]
        assert (r.data.params["optim.lr"], r.data.params["seed"]) == (t["cell"].split("=")[1], str(t["seed"]))
        assert r.data.metrics["test/acc"] == pytest.approx(t["test_acc"])
    assert "sweep.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    runs = sorted(p.name for p in (sweep / "tensorboard").iterdir())
    assert runs == sorted(trials)  # one TensorBoard folder per sweep, a sub-run per trial
    acc = EventAccumulator(str(sweep / "tensorboard" / runs[0]))
    acc.Reload()
    assert "val/acc" in acc.Tags()["scalars"]


def test_pool_processes_are_forked_only_where_that_is_safe():
    from cnnlab.engine.sweep import can_fork
    from cnnlab.engine.trackers import Group

    assert can_fork(None, gpu=False) and can_fork(Group("s", tensorboard_dir="/tmp/tb"), gpu=False)
    assert not can_fork(None, gpu=True)  # CUDA's driver, once asked, cannot cross a fork
    assert not can_fork(Group("s", parent_run_id="abc"), gpu=False)  # nor an open SQLite connection
