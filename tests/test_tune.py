"""`cnnlab tune`: the range test's suggestion as a --set line that validates, the batch-size finder
stopping before its memory budget, the suggestion rule on a constructed curve, the refusals."""
import json
import math

import pytest

from conftest import RECIPES

SMOKE = str(RECIPES / "smoke.yaml")
TINY = ["data.subset=20", "data.test_subset=5"]


def sets(cli, over):
    return [a for o in [*over, f"output.dir={cli.runs}"] for a in ("--set", o)]


def test_the_steepest_fall_against_log_lr_before_the_minimum():
    from cnnlab.tasks.tune import steepest

    lrs = [10 ** (-6 + 7 * i / 99) for i in range(100)]  # 1e-6 .. 10
    # flat, a fall centred at 1e-2 (log10 = -2), the minimum near 1e-1, then a climb
    losses = [2.3 - 1.5 / (1 + math.exp(-(math.log10(lr) + 2) * 3)) + (3 * (math.log10(lr) + 1) ** 2 if lr > 0.1 else 0)
              for lr in lrs]
    got = steepest(lrs, losses)
    assert got is not None and abs(math.log10(got) + 2) < 0.1
    assert steepest(lrs[:12], losses[:12]) is None  # too few points after the start-up
    assert steepest(lrs, [1.0 + i * 0.01 for i in range(100)]) is None  # never falls


@pytest.mark.slow
def test_tune_lr_suggests_a_rate_as_a_set_line_that_validates(cli):
    from cnnlab import recipe as rc

    res = cli("tune", SMOKE, "--lr", "--steps", "30", "--min-lr", "1e-3", "--max-lr", "3", *sets(cli, TINY))
    assert res.exit_code == 0, res.output
    [run] = cli.runs.iterdir()
    t = json.loads((run / "tune.json").read_text())
    line = t["set"]
    assert line in res.output and line.startswith("--set optim.lr=") and (run / "lr_find.png").is_file()
    assert rc.load(SMOKE, [line.removeprefix("--set ")]).optim.lr == pytest.approx(t["suggestion"], rel=1e-2)
    assert 1e-3 <= t["suggestion"] <= 3 and len(t["lrs"]) == len(t["losses"]) >= 13


@pytest.mark.slow
def test_tune_batch_size_stops_before_a_small_budget(cli):
    res = cli("tune", SMOKE, "--batch-size", "--memory-budget", "20MiB", *sets(cli, TINY))
    assert res.exit_code == 0, res.output
    [run] = cli.runs.iterdir()
    t = json.loads((run / "tune.json").read_text())
    budget = 20 * 2**20
    assert t["budget_bytes"] == budget and t["stopped_by_budget"], t
    refused = t["stopped_by_budget"][0]
    assert t["fixed_bytes"] + t["largest"] * t["per_image_bytes"] <= budget < t["fixed_bytes"] + refused * t["per_image_bytes"]
    assert refused == 2 * t["largest"] and t["measured_bytes"] > 0 and f"--set data.batch_size={t['largest']}" in res.output


@pytest.mark.parametrize("args,message", [
    ([], "give one of --lr (learning-rate range test) or --batch-size"),
    (["--lr", "--batch-size"], "give one of --lr"),
    (["--lr", "--memory-budget", "1GB"], "--memory-budget bounds --batch-size's trials"),
    (["--lr", "--steps", "3"], "--steps 3: the range test needs at least 10 steps"),
    (["--batch-size", "--memory-budget", "x"], "--memory-budget x: not a size"),
    (["--lr", "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp_spawn", "--set", "trainer.accelerator=cpu"],
     "The tuner's trials run in one process"),
])
def test_bad_tune_flags_are_one_line(cli, args, message):
    res = cli("tune", SMOKE, *args)
    assert res.exit_code == 2 and message in " ".join(res.output.split()) and len(res.output.strip().splitlines()) <= 2, res.output
    assert not cli.runs.exists()
