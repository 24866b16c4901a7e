"""Reliability: run folders claimed atomically under parallel starts, every file written whole or
not at all (a unique temporary name, fsync, rename), metrics.csv appended rather than rewritten,
and a full disk as one clear line that leaves the last good checkpoint."""
import csv
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
