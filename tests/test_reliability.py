"""Reliability: run folders claimed atomically under parallel starts, every file written whole or
not at all (a unique temporary name, fsync, rename), metrics.csv appended rather than rewritten,
and a full disk as one clear line that leaves the last good checkpoint."""
import csv
import json
import multiprocessing
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch

from cnnlab import io
from cnnlab.errors import UserError
from conftest import RECIPES

SMOKE = str(RECIPES / "smoke.yaml")


def _claim(out: str, barrier, queue) -> None:
    barrier.wait()  # every process asks for the same name in the same instant
    queue.put(str(io.new_run_dir(out, "race")))


def test_eight_parallel_starts_get_eight_run_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert len(set(got)) == 8 and sorted(Path(g).name for g in got) == sorted(p.name for p in tmp_path.iterdir())


def test_a_name_taken_after_the_clock_is_read_goes_to_the_next_suffix(tmp_path, monkeypatch):
    """The race the old existence check lost: another run makes the folder between this run's look
    and its mkdir. Here the mkdir is the claim, so the loser takes the next suffix."""
    fixed = datetime(2026, 12, 1, 12, 0, 0)
    monkeypatch.setattr(io, "datetime", type("Clock", (), {"now": staticmethod(lambda: fixed)}))
    (tmp_path / "run-20261201-120000").mkdir()  # taken by the other run
    (tmp_path / "run-20261201-120000-1").mkdir()
    assert io.new_run_dir(tmp_path, "run").name == "run-20261201-120000-2"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="output.dir: cannot make the run folder"):
        io.new_run_dir(tmp_path / "file", "run")


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic(path, "w") as f:
            f.write('{"half": ')
            raise RuntimeError("interrupted mid-write")
    assert path.read_text() == '{\n  "a": 1\n}\n' and os.listdir(tmp_path) == ["results.json"]
    with pytest.raises(UserError, match="results.json: the disk is full"):
        with io.atomic(path, "w"):
            raise OSError(28, "No space left on device")  # ENOSPC
    assert os.listdir(tmp_path) == ["results.json"]


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path, monkeypatch):
    names = []
    real = open

    def spy(file, *a, **k):
        names.append(Path(file).name)
        return real(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    io.write_text(tmp_path / "x", "1")
    io.write_text(tmp_path / "x", "2")
    assert len(set(names)) == 2 and all(n.startswith(".x.") and n.endswith(".tmp") for n in names)


def test_metrics_csv_appends_rows_and_rewrites_only_for_new_columns(tmp_path, monkeypatch):
    from cnnlab.engine.callbacks import MetricsCSV

    m = MetricsCSV()
    rewrites = []
    rewrite = m._rewrite
    monkeypatch.setattr(m, "_rewrite", lambda: (rewrites.append(1), rewrite()))
    m.start(tmp_path / "metrics.csv")
    for step in range(200):
        m.log_metrics({"train/loss_step": 1.0 / (step + 1), "epoch": step // 50}, step=step)
        if step % 50 == 49:
            m.log_metrics({"train/loss": 0.5, "train/acc": 0.8, "epoch": step // 50}, step=step)
    m.log_metrics({"test/acc": 0.9, "epoch": 4}, step=200)
    assert len(rewrites) == 3  # the first row, the first epoch row, the test row: O(n) in all, not O(n^2)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 205 and rows[-1]["test/acc"] == "0.9" and rows[0]["train/loss_step"] == "1.0"
    assert io.epochs_logged(tmp_path / "metrics.csv") == 4
    again = MetricsCSV()
    again.start(tmp_path / "metrics.csv", keep_epochs_before=2)  # a resumed fit redoes epochs 2 and 3
    assert {int(r["epoch"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())} == {0, 1}


@pytest.fixture
def small_disk(tmp_path):
    """A 320 KiB tmpfs: room for the smoke run's first checkpoints, not for the whole run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a small tmpfs (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_and_keeps_whole_checkpoints(cli, small_disk):
    res = cli("train", SMOKE, "--set", f"output.dir={small_disk}", "--set", "output.plots=false")
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert "Traceback" not in res.output and said.count("error:") == 1
    assert "the disk is full; nothing was half-written, the previous file (if any) is kept" in said
    files = [p for p in small_disk.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]  # nothing half-written left behind
    ckpts = [p for p in files if p.suffix == ".ckpt"]
    assert ckpts, "the first epochs' checkpoints fit"
    for p in ckpts:  # every checkpoint on the disk is whole
        assert torch.load(p, map_location="cpu", weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- divergence that stays finite


def high_loss_from(step: int, value: float = 1e7):
    """A callback that makes the training loss `value` (finite) from `step` on, before the module's check."""
    import pytorch_lightning as pl

    class High(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            if trainer.global_step >= step:
                module._loss = torch.tensor(value)

    return High()


@pytest.fixture
def with_callback(monkeypatch):
    import cnnlab.engine.run as run

    def add(cb):
        build = run.build_trainer
        monkeypatch.setattr(run, "build_trainer", lambda spec, folder=None, callbacks=(), **kw: build(spec, folder, [*callbacks, cb], **kw))

    return add


@pytest.mark.parametrize("steps", [20, 3])
def test_a_finite_loss_far_above_chance_for_a_run_of_steps_stops_with_exit_3(cli, with_callback, steps):
    with_callback(high_loss_from(5))
    over = [] if steps == 20 else ["--set", f"optim.divergence.steps={steps}"]
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=3", *over)
    said = " ".join(res.output.split())
    assert res.exit_code == 3, res.output
    assert (f"training diverged at step {4 + steps} (epoch {(4 + steps) // 11}): the loss stayed above 23 (10 x ln 10, "
            f"a uniform guess's loss) for {steps} steps, 1e+07 at the last") in said
    assert "Try: lower optim.lr (or add warm-up: schedule.warmup_epochs)" in said and "Traceback" not in res.output
    [run] = cli.runs.iterdir()
    ckpt = torch.load(run / "checkpoints" / "before-divergence.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and not (run / "results.json").exists()  # the state at the first such step


def test_a_run_of_high_losses_that_ends_in_time_and_divergence_null_train_on(cli, with_callback):
    with_callback(high_loss_from(30))  # from step 30 of 33: too few steps left to reach 20
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=3", "--set", "output.plots=false")
    assert res.exit_code == 0, res.output
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=1", "--set", "output.plots=false",
              "--set", "optim.divergence=null", "--set", "optim.lr=1e8")
    assert res.exit_code in (0, 3), res.output  # no finite-divergence stop; a NaN still stops (exit 3)
    assert "stayed above" not in res.output


def test_the_smoke_recipe_at_lr_1e8_exits_3(cli):
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "optim.lr=1e8")
    assert res.exit_code == 3 and "training diverged at step" in res.output and "Traceback" not in res.output


def test_a_run_at_chance_level_says_so_and_is_flagged(cli, with_callback):
    """A model collapsed onto one class: lr 1e8 without the divergence stop, on a machine where the
    loss stays finite; here the same end is forced by a learning rate of zero for the whole run."""
    from cnnlab.engine.assemble import chance

    assert chance(0.10, 10, 300)["at_chance"] and not chance(0.30, 10, 300)["at_chance"]
    assert chance(0.13, 10, 300)["at_chance"] and not chance(0.14, 10, 300)["at_chance"]  # 2 standard errors: 3.5 points
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=1", "--set", "output.plots=false",
              "--set", "schedule.name=constant", "--set", "optim.lr=1e-12")
    assert res.exit_code == 0, res.output
    [run] = cli.runs.iterdir()
    r = json.loads((run / "results.json").read_text())
    assert r["chance"] == {"guess_acc": 0.1, "at_chance": r["test_acc"] <= 0.1 + 2 * (0.09 / 300) ** 0.5}
    assert r["chance"]["at_chance"], r["test_acc"]  # an untrained net
    assert "is at chance level (a uniform guess scores 10.00%)" in " ".join(res.output.split())


# --------------------------------------------------------------------------- signals and mid-epoch resume

HELPERS = Path(__file__).parent / "helpers"


def interrupted(tmp_path, signal_name: str, where: str, over: list[str]):
    """A real `cnnlab train` process that receives `signal_name` at `where` (step:N, val:E, test)."""
    import sys

    sets = [a for o in [*over, f"output.dir={tmp_path}"] for a in ("--set", o)]
    res = subprocess.run([sys.executable, str(HELPERS / "signal_at_step.py"), signal_name, where, "train", SMOKE, *sets],
                         capture_output=True, text=True, timeout=300)
    [run] = list(tmp_path.iterdir())
    return res, run


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name,step,extra", [
    ("SIGINT", 7, []),
    ("SIGTERM", 7, ["data.num_workers=2", "augment.where=loader", "augment.ops=[{name: shift, max_px: 2}, {name: hflip}]"]),
    ("SIGINT", 12, ["augment.where=device", "augment.ops=[{name: shift, max_px: 2}, {name: hflip}]", "model.dropout=0.3"]),
], ids=["mid-epoch", "mid-epoch-2-workers-sigterm", "mid-epoch-device-augment"])
def test_a_run_stopped_by_a_signal_mid_epoch_resumes_to_the_same_weights(tmp_path, signal_name, step, extra):
    from cnnlab import recipe as rc
    from cnnlab.engine.run import train

    over = ["trainer.max_epochs=3", "data.subset=20", "output.plots=false", *extra]  # 5 steps an epoch
    res, run = interrupted(tmp_path / "b", signal_name, f"step:{step}", over)
    code = {"SIGINT": 130, "SIGTERM": 143}[signal_name]
    assert res.returncode == code, res.stdout + res.stderr
    said = " ".join(res.stderr.split() + res.stdout.split())
    assert f"interrupted by {signal_name} at step {step + 1} (epoch {(step + 1) // 5})" in said
    assert f"continue with: cnnlab train --resume {run}" in said and "Traceback" not in said
    r = json.loads((run / "results.json").read_text())
    assert r["interrupted"] == {"signal": signal_name, "epoch": (step + 1) // 5, "step": step + 1,
                                "checkpoint": str(run / "checkpoints" / "last.ckpt")}
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 1
    resumed = train(rc.load(run / "recipe.yaml"), resume=run, progress=False)
    straight = train(rc.load(SMOKE, [*over, f"output.dir={tmp_path / 'a'}"]), progress=False)
    wa, wb = weights(Path(straight["run_dir"])), weights(run)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"
    assert resumed["test_acc"] == straight["test_acc"] and "interrupted" not in resumed
    ma, mb = io.epoch_metrics(Path(straight["run_dir"]) / "metrics.csv"), io.epoch_metrics(run / "metrics.csv")
    assert ma["train/loss"] == mb["train/loss"] and ma["val/acc"] == mb["val/acc"]  # the epoch's means came back too


@pytest.mark.slow
def test_finetune_stopped_by_a_signal_resumes_to_the_same_weights(tmp_path, smoke_run, cli):
    import sys

    recipe = tmp_path / "ft.yaml"
    recipe.write_text(f"""data: {{source: fashion-mnist, classes: [7, 8, 9], subset: 40, test_subset: 10, val_split: 0.25, batch_size: 16}}
finetune: {{backbone: cnnlab, weights: {smoke_run.path}, regime: full}}
optim: {{name: adamw, lr: 0.01}}
trainer: {{accelerator: cpu, max_epochs: 3}}
output: {{dir: {tmp_path / 'runs'}, plots: false}}
""")
    res = subprocess.run([sys.executable, str(HELPERS / "signal_at_step.py"), "SIGINT", "step:2", "finetune", str(recipe)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, res.stdout + res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert "interrupted by SIGINT at step 3 (epoch 0)" in said and "Traceback" not in said
    [run] = list((tmp_path / "runs").iterdir())
    r = json.loads((run / "results.json").read_text())
    assert r["regime"] == "full" and r["interrupted"]["step"] == 3
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert f"continue with: cnnlab finetune --resume {run}" in said
    bad = cli("finetune", "--resume", str(run), "--set", "optim.lr=0.1")  # would change the recorded run
    assert bad.exit_code == 2 and "--resume continues the run as recorded" in bad.output
    res = cli("finetune", "--resume", str(run))
    assert res.exit_code == 0, res.output
    resumed = json.loads((run / "results.json").read_text())
    assert "interrupted" not in resumed and resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    from cnnlab import recipe as rc
    from cnnlab.tasks import finetune

    straight = finetune.run(rc.load(recipe, [f"output.dir={tmp_path / 'straight'}"]), progress=False)
    wa, wb = weights(Path(straight["run_dir"])), weights(run)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"
    assert resumed["test_acc"] == straight["test_acc"] and resumed["epochs"] == straight["epochs"] == 3


# the full matrix (make test-reliability): every point, loader workers 0 and 2, loader and device
# augmentation, SIGTERM and SIGKILL. A signal during validation stops after the next training step;
# during the test (training done) the run finishes its last seconds and writes everything; SIGKILL
# leaves the last checkpoint written (an epoch's end), which --resume continues from.
LOADER = ["augment.where=loader", "augment.ops=[{name: shift, max_px: 2}, {name: hflip}]"]
DEVICE = ["augment.where=device", "augment.ops=[{name: shift, max_px: 2}, {name: hflip}]"]
MATRIX = [(sig, where, workers, aug) for sig in ("SIGINT", "SIGTERM", "SIGKILL") for where in ("step:7", "val:1", "test")
          for workers in (0, 2) for aug in ("loader", "device")]


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("sig,where,workers,aug", MATRIX, ids=["-".join(map(str, m)) for m in MATRIX])
def test_every_interruption_point_resumes_to_the_same_weights(tmp_path, sig, where, workers, aug):
    from cnnlab import recipe as rc
    from cnnlab.engine.run import train

    over = ["trainer.max_epochs=3", "data.subset=20", "output.plots=false", f"data.num_workers={workers}",
            *(LOADER if aug == "loader" else DEVICE)]
    res, run = interrupted(tmp_path / "b", sig, where, over)
    straight = train(rc.load(SMOKE, [*over, f"output.dir={tmp_path / 'a'}"]), progress=False)
    said = res.stdout + res.stderr
    assert "Traceback" not in said
    assert res.returncode == {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}[sig], said
    if where == "test" and sig != "SIGKILL":  # training was over: the run completed its last seconds
        assert "after training had finished" in " ".join(said.split())
        assert json.loads((run / "results.json").read_text())["test_acc"] == straight["test_acc"]
    else:
        train(rc.load(run / "recipe.yaml"), resume=run, progress=False)
    wa, wb = weights(Path(straight["run_dir"])), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ"


# --------------------------------------------------------------------------- the other long commands

@pytest.fixture
def signal_in_fit(monkeypatch):
    """`arm(signal, step, fit)`: this process sends itself `signal` as training step `step` of its
    `fit`-th fit begins (a real signal, delivered to cnnlab's handler in this process)."""
    import os
    import signal as signals

    import pytorch_lightning as pl

    import cnnlab.engine.finetune as finetune
    import cnnlab.engine.run as run

    fits = []

    class At(pl.Callback):
        def __init__(self, sig, step, fit):
            self.sig, self.step, self.fit = sig, step, fit

        def on_fit_start(self, trainer, module):
            fits.append(1)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if len(fits) == self.fit and trainer.global_step == self.step:
                self.fit = -1
                os.kill(os.getpid(), getattr(signals, self.sig))

    def arm(sig: str, step: int, fit: int) -> None:
        at = At(sig, step, fit)
        build = run.build_trainer
        for m in (run, finetune):
            monkeypatch.setattr(m, "build_trainer", lambda spec, folder=None, callbacks=(), **kw: build(
                spec, folder, [*callbacks, at], **kw))

    return arm


TINY = ["data.subset=10", "data.test_subset=5", "trainer.max_epochs=1", "output.plots=false"]


def test_a_sweep_stopped_by_a_signal_keeps_the_runs_it_finished_as_a_marked_table(cli, signal_in_fit):
    recipe = cli.cwd / "sweep.yaml"
    recipe.write_text((RECIPES / "smoke.yaml").read_text() + "sweep: {seeds: [0], variants: {base: [], wide: ['model.widths=[24, 32, 32]'], deep: ['model.depth=2']}}\n")
    signal_in_fit("SIGINT", 1, 2)  # during the second run (in this process: launcher.jobs 1)
    over = [*TINY, f"output.dir={cli.runs}", "launcher.jobs=1"]
    res = cli("train", str(recipe), "--sweep", *[a for o in over for a in ("--set", o)])
    assert res.exit_code == 130, res.output
    said = " ".join(res.output.split())
    assert "interrupted by SIGINT: 1 of 3 trials finished and kept" in said and "(marked interrupted)" in said
    assert "Traceback" not in said
    [sweep] = cli.runs.iterdir()
    assert f"continue with: cnnlab sweep --resume {sweep}" in said
    s = json.loads((sweep / "sweep.json").read_text())
    assert [r["cell"] for r in s["rows"]] == ["base", "wide"] and s["rows"][0]["done"] == 1
    assert [p["status"] for p in s["rows"][1]["problems"]] == ["interrupted"]
    assert s["interrupted"]["signal"] == "SIGINT" and (s["interrupted"]["trials_done"], s["interrupted"]["trials_planned"]) == (1, 3)
    assert "base" in said.split("cell")[-1]  # the partial table was printed before the line
    # the resumed sweep keeps the finished trial, continues the stopped one from its checkpoint, runs the third
    res = cli("sweep", "--resume", str(sweep))
    assert res.exit_code == 0, res.output
    s = json.loads((sweep / "sweep.json").read_text())
    assert [r["done"] for r in s["rows"]] == [1, 1, 1] and "interrupted" not in s
    wide = next(t for t in s["trials"] if t["cell"] == "wide")
    assert wide["resumed_from"] and wide["resumed_from"].endswith("last.ckpt")
    base = next(t for t in s["trials"] if t["cell"] == "base")
    assert base["resumed_from"] is None


def test_an_ablation_stopped_by_a_signal_keeps_a_marked_partial_table(cli, signal_in_fit):
    signal_in_fit("SIGTERM", 0, 3)  # the third of none, shift, all: two finished
    over = [*TINY, f"output.dir={cli.runs}", "augment.ops=[{name: shift, max_px: 2}]", "launcher.jobs=1"]
    res = cli("augment", SMOKE, "--ablate", *[a for o in over for a in ("--set", o)])
    assert res.exit_code == 143, res.output
    said = " ".join(res.output.split())
    assert "interrupted by SIGTERM: 2 of 3 trials finished and kept" in said and "Traceback" not in said
    [run] = cli.runs.iterdir()
    r = json.loads((run / "results.json").read_text())
    assert [v["cell"] for v in r["ablation"]["rows"] if v["done"]] == ["none", "shift"]
    assert r["interrupted"]["signal"] == "SIGTERM"
    assert not (run / "ablation.png").exists()


def test_bench_conv_training_stopped_by_a_signal_keeps_the_rows_it_measured(cli, signal_in_fit):
    signal_in_fit("SIGINT", 0, 2)
    over = [*TINY, f"output.dir={cli.runs}", "model.widths=[8, 8, 8]"]
    res = cli("bench-conv", "--shape", "1,4,16,16,4,3", "--repeats", "1", "--stacking", "--train", "--out", str(cli.runs),
              *[a for o in over for a in ("--set", o)])
    assert res.exit_code == 130, res.output
    said = " ".join(res.output.split())
    assert "interrupted by SIGINT: 1 of 3 stacking runs kept in" in said and "Traceback" not in said
    [run] = [p for p in cli.runs.iterdir() if p.name.startswith("bench-conv")]
    r = json.loads((run / "bench_conv.json").read_text())
    assert r["interrupted"]["signal"] == "SIGINT" and len(r["stacking_train"]) == 1 and r["rows"] and r["stacking"]


def test_pack_stopped_by_sigterm_mid_write_leaves_no_file_and_no_temporary(tmp_path):
    import sys

    out = tmp_path / "d.cnnpack"
    res = subprocess.run([sys.executable, str(HELPERS / "signal_at_step.py"), "SIGTERM", "call:cnnlab.pack.format:_pad:2",
                          "pack", "digits", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 143, res.stdout + res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert f"interrupted by SIGTERM: nothing was written at {out} and no temporary file is left" in said
    assert "Traceback" not in said and list(tmp_path.iterdir()) == []


def test_bench_data_stopped_by_a_signal_removes_its_scratch_files_and_says_so(cli, monkeypatch):
    import os
    import signal as signals

    from cnnlab.bench import data as b

    once = b.gather_pass

    def gather_then_signal(*a, **kw):
        os.kill(os.getpid(), signals.SIGINT)
        return once(*a, **kw)

    monkeypatch.setattr(b, "gather_pass", gather_then_signal)
    res = cli("bench-data", SMOKE, "--limit", "40", "--repeats", "1", "--workers", "0", "--out", str(cli.runs))
    assert res.exit_code == 130, res.output
    said = " ".join(res.output.split())
    assert "interrupted by SIGINT: nothing was measured to the end" in said and "Traceback" not in said
    [run] = cli.runs.iterdir()
    assert sorted(p.name for p in run.iterdir()) == ["bench_data.json"]
    assert json.loads((run / "bench_data.json").read_text())["interrupted"]["signal"] == "SIGINT"


@pytest.mark.slow
@pytest.mark.reliability
def test_eight_real_cnnlab_train_processes_started_at_once_into_one_folder_all_succeed(tmp_path):
    """8 whole `cnnlab train` processes into one output.dir, started together (most claim their
    folder in the same second): 8 exit codes of 0 and 8 complete run folders."""
    import sys

    over = [*TINY, f"output.dir={tmp_path}", "output.name=race", "data.val_split=0"]
    cmd = [sys.executable, "-m", "cnnlab", "train", SMOKE, *[a for o in over for a in ("--set", o)]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(o[-500:] for o in outs)
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 8 and all((r / "results.json").is_file() and (r / "checkpoints" / "last.ckpt").is_file() for r in runs)
    assert len({json.loads((r / "results.json").read_text())["run_dir"] for r in runs}) == 8
