"""`cnnlab profile`: the phase split of real training steps (through the engine's Trainer), the
verdict logic on constructed timings, the planner on a small budget, the end-to-end command and its
refusals. The memory accounting has its own tests (test_profile_memory.py), the machine's limits
too (test_machine.py)."""
import json

import pytest
import torch

from cnnlab.profile import verdict as vd
from conftest import RECIPES

SMOKE = str(RECIPES / "smoke.yaml")
TINY = ["data.subset=20", "data.test_subset=5", "output.plots=false"]


@pytest.fixture(scope="module")
def quick_machine(tmp_path_factory):
    """This machine's limits measured the quick way, once for the module (the full measurement is
    `profile --machine`'s, seconds longer)."""
    from cnnlab.bench import machine

    facts, _ = machine.cached(tmp_path_factory.mktemp("data"), cache_dir=tmp_path_factory.mktemp("cache"), quick=True)
    return {**facts, "cache_hit": False}


@pytest.fixture
def profiled(cli, monkeypatch, quick_machine):
    import cnnlab.tasks.profile as task

    monkeypatch.setattr(task, "machine", lambda *a, **kw: quick_machine)

    def run(*args: str):
        return cli("profile", *args, "--set", f"output.dir={cli.runs}")
    return run


# --------------------------------------------------------------------------- the split, measured

def test_the_phases_of_real_steps_add_up_to_the_step_with_little_left_over(tmp_path):
    import time

    from cnnlab import recipe as rc
    from cnnlab.engine.assemble import assemble
    from cnnlab.tasks.profile import phases

    # batches of 64: a step of tens of ms, of which Lightning's own loop is a small part
    r = rc.load(SMOKE, [*TINY, "data.batch_size=64", "augment.where=device", "augment.ops=[{name: shift, max_px: 2}, {name: hflip}]"])
    a = assemble(r)
    t0 = time.perf_counter()
    got = phases(r, a, tmp_path, steps=6, warmup=2, on_step=lambda k, n: None)
    wall = time.perf_counter() - t0
    steps = got["per_step"]
    assert got["steps"] == 6 and got["plain_steps"] == 6 and len(steps) == 6
    for s in steps:
        assert set(s) == set(vd.SHARES["compute"]) | {"data", "copy", "rest"} and min(s.values()) >= -1e-4, s
        assert s["forward"] > 0 and s["backward"] > 0 and s["augment"] > 0  # device augmentation was timed
    share = vd.shares(got["split"])
    assert share["rest"] <= vd.REST_LIMIT, share  # no phase is missing
    assert sum(sum(s.values()) for s in steps) < wall  # the steps are inside the fit's wall time
    assert got["overhead"]["pairs"] == 6 and 0.5 < got["overhead"]["ratio"] < 2


# --------------------------------------------------------------------------- the verdict, constructed

RECIPE = {"data": {"placement": "host", "num_workers": 0}, "augment": {"ops": [{"name": "hflip"}], "where": "loader"},
          "trainer": {"precision": "32-true", "channels_last": True, "accelerator": "cpu"}}


def phases_of(**ms):
    base = {k: 0.0 for k in (*vd.SHARES["compute"], "data", "copy", "rest")}
    return {**base, **{k: v / 1e3 for k, v in ms.items()}}


def test_a_step_that_mostly_waits_for_the_loader_is_data_bound_with_the_changes_to_try():
    v = vd.verdict(vd.shares(phases_of(data=71, forward=10, backward=15, optimizer=2, rest=2)), RECIPE, "cpu")
    assert v["verdict"] == "data-bound" and v["largest"] == "data"
    assert v["text"].startswith("data-bound: 71% of each step waits for data; try `augment.where=device`")
    assert v["candidates"] == ["augment.where=device", "data.placement=device augment.where=device", "data.num_workers=2"]


def test_compute_copy_and_balanced_steps():
    compute = vd.verdict(vd.shares(phases_of(data=5, augment=10, forward=30, backward=45, optimizer=5, rest=5)), RECIPE, "cpu")
    assert compute["verdict"] == "compute-bound" and round(compute["share"], 2) == 0.90
    assert "trainer.precision=bf16-mixed" in compute["candidates"] and "trainer.channels_last=false" in compute["candidates"]
    copy = vd.verdict(vd.shares(phases_of(data=5, copy=60, forward=20, backward=15)), RECIPE, "cuda")
    assert copy["verdict"] == "copy-bound" and "non_blocking" in copy["text"]
    even = vd.verdict(vd.shares(phases_of(data=40, copy=20, forward=20, backward=20)), RECIPE, "cpu")
    assert even["verdict"] == "balanced" and even["largest"] == "data" and "the largest is data (40%)" in even["text"]
    # the changes offered differ from the recipe as written
    written = {**RECIPE, "augment": {"ops": [], "where": "device"}, "data": {"placement": "device", "num_workers": 0}}
    assert vd.verdict(vd.shares(phases_of(data=90, forward=10)), written, "cpu")["candidates"] == []


def test_paired_ratios_and_thread_scaling_come_from_alternating_blocks():
    from cnnlab.engine.profiler import Step

    # blocks of 2 steps: A (2 s an image) then B (1 s an image), three rounds
    steps = [Step(c, t, 1) for _ in range(3) for c, t in (("A", 2.0), ("A", 2.0), ("B", 1.0), ("B", 1.0))]
    assert vd.paired_ratio(steps, 2, "A", "B")["ratio"] == 2.0 and vd.paired_ratio(steps, 2, "A", "B")["pairs"] == 3
    per = vd.per_condition([Step(n, 1.0 / n, 1) for _ in range(3) for n in (1, 2, 4)], 1, [1, 2, 4])
    rows = vd.scaling(per)
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 4.0] and rows[1]["per_added_core"] == 1.0
    assert vd.flop_fraction(10**9, 0.5, 4.0)["fraction_of_peak"] == 0.5 and vd.flop_fraction(10**9, 0.1, 4.0)["above_peak"]
    rows = [{"set": "(as written)", "vs_recipe": 1.0}, {"set": "a=1", "vs_recipe": 0.09}, {"set": "b=2", "vs_recipe": 2.36}]
    assert vd.measured_advice(rows)["recommended"] == "b=2" and "`b=2` runs 2.36x" in vd.measured_advice(rows)["text"]
    assert vd.measured_advice(rows[:2])["recommended"] is None and "none is faster" in vd.measured_advice(rows[:2])["text"]


# --------------------------------------------------------------------------- end to end, and refusals

@pytest.mark.slow
def test_profile_the_smoke_recipe_through_the_cli(profiled, cli):
    res = profiled(SMOKE, "--steps", "3", "--warmup", "1", "--memory-budget", "64MiB", "--threads", "1,2",
                   "--try-alternatives", *[a for o in TINY for a in ("--set", o)])
    assert res.exit_code == 0, res.output
    [run] = cli.runs.iterdir()
    p = json.loads((run / "profile.json").read_text())
    assert sorted(f.name for f in run.iterdir()) == ["profile.json", "profile_memory.png", "profile_split.png", "recipe.yaml"]
    assert p["steps"]["steps"] == 3 and p["verdict"]["verdict"] in ("data-bound", "copy-bound", "compute-bound", "balanced")
    assert p["steps"]["timing"].startswith("time.perf_counter at each phase boundary")
    peak = p["memory"]["peak"]
    assert set(peak) == {"predicted_bytes", "measured_bytes", "method"} and 0.8 < peak["predicted_bytes"] / peak["measured_bytes"] < 1.2
    plan = p["memory"]["planner"]
    assert plan["budget_bytes"] == 64 * 2**20 and plan["budget_from"] == "--memory-budget"
    fits = plan["largest_batch"]
    assert plan["fixed_bytes"] + fits * plan["per_image_bytes"] <= 64 * 2**20 < plan["fixed_bytes"] + (fits + 1) * plan["per_image_bytes"]
    assert p["memory"]["saves"]["activation_checkpointing"]["saved_bytes"] > 0
    assert [t["threads"] for t in p["threads"]] == [1, 2] and p["flops"]["flops_per_step"] > 0
    said = " ".join(res.output.split())
    assert p["verdict"]["text"] in said and "largest batch for 0.06 GiB" in said
    alts = p["alternatives"]
    assert alts[0]["set"] == "(as written)" and alts[0]["vs_recipe"] == 1.0 and len(alts) == 1 + len(p["verdict"]["candidates"])
    assert all(a["images_per_s"] > 0 and a["rounds"] == 3 for a in alts) and p["verdict"]["measured"]["text"] in said


@pytest.mark.parametrize("args,message", [
    (["--memory-budget", "lots"], "--memory-budget lots: not a size; use e.g. 12GB, 512MiB"),
    (["--threads", "0"], "--threads '0': distinct thread counts from 1 to"),
    (["--steps", "0"], "--steps 0: at least 1 timed step"),
    (["--machine"], "--machine measures this machine, not a recipe"),
])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(profiled, cli, args, message):
    res = profiled(SMOKE, *args)
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not cli.runs.exists() or not list(cli.runs.iterdir())


def test_profile_machine_prints_the_limits_and_reads_the_cache(cli, monkeypatch, quick_machine):
    import cnnlab.tasks.profile as task

    monkeypatch.setattr(task, "machine", lambda *a, **kw: {**quick_machine, "cache_hit": True})
    res = cli("profile", "--machine")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "matmul peak cpu float32" in said and "GFLOP/s" in said and "cached" in said
    assert torch.get_num_threads() >= 1


def test_a_profile_stopped_by_a_signal_leaves_nothing(profiled, cli, monkeypatch):
    import os
    import signal

    import pytorch_lightning as pl

    import cnnlab.tasks.profile as task

    class Interrupt(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    build = task.build_trainer
    monkeypatch.setattr(task, "build_trainer", lambda spec, folder=None, callbacks=(), **kw: build(
        spec, folder, [*callbacks, Interrupt()], **kw))
    res = profiled(SMOKE, "--steps", "3", *[a for o in TINY for a in ("--set", o)])
    assert res.exit_code == 143, res.output
    assert "interrupted by SIGTERM: nothing was kept: the profile's folder" in " ".join(res.output.split())
    assert list(cli.runs.iterdir()) == []
