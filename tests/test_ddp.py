"""Data-parallel training on CPU (gloo): 2 processes on this 2-core machine, through the real CLI
(Lightning's ddp launcher re-runs the command line, so these run `python -m cnnlab` in a subprocess)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.data.module import EpochShuffle, Shard
from conftest import RECIPES

SMOKE = str(RECIPES / "smoke.yaml")
# 9 classes x 31 test images: an odd count, which a padding sampler would have to repeat an image for
OVER = ["trainer.max_epochs=4", "data.classes=[0, 1, 2, 3, 4, 5, 6, 7, 8]", "data.test_subset=31", "output.plots=false"]


def cnnlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, timeout=300)


def train(out, *over: str) -> dict:
    sets = [a for o in [*OVER, f"output.dir={out}", *over] for a in ("--set", o)]
    res = cnnlab("train", SMOKE, *sets)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    [run] = list(out.iterdir())  # exactly one run folder, whatever the process count
    return json.loads((run / "results.json").read_text())


def train_on_two_nodes(out, *over: str) -> dict:
    """Two 'nodes' of one process each on this machine, started the way a cluster starts them
    (torchrun): the second node's process has LOCAL_RANK 0 too, and must still leave the run folder
    and the console to global rank 0."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [a for o in [*OVER, f"output.dir={out}", "trainer.num_nodes=2", *over] for a in ("--set", o)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(n), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "cnnlab", "train", SMOKE, *sets], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert "test accuracy" in outs[0] and "test accuracy" not in outs[1]
    [run] = list(out.iterdir())
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same run in one process, in this one (no launcher to start)."""
    from cnnlab import recipe as rc
    from cnnlab.tasks import train as task

    return task.run(rc.load(SMOKE, [*OVER, f"output.dir={tmp_path_factory.mktemp('single')}"]), progress=False)


# ddp on two nodes started by torchrun (Lightning's own ddp launcher: the finetune tests below),
# without a validation split: the test runs on the weights in memory, not on a checkpoint file;
# ddp_spawn, with Lightning's launcher, tests the best checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_processes_write_one_run_and_match_one_process(strategy, single, tmp_path):
    if strategy == "ddp":
        r = train_on_two_nodes(tmp_path, "trainer.devices=1", "trainer.strategy=ddp", "eval.tta=[hflip]",
                               "data.val_split=0")
    else:
        r = train(tmp_path, "trainer.devices=2", "trainer.strategy=ddp_spawn", "eval.tta=[hflip]")
    assert r["device"]["processes"] == 2 and r["global_batch"] == single["global_batch"] == 32
    assert r["epochs"] == 4 and r["train_images_per_s"] > 0  # measured in the workers, reported back
    assert len(r["per_class_acc"]) == 9 and r["images"]["test"] == 279
    # the same global batches, init and schedule; only BatchNorm's statistics (16 images a process
    # instead of 32) and the per-rank dropout/augmentation draws differ. The smoke recipe's
    # seed-to-seed spread is about 2.5 points sd of test accuracy (seeds 0-2: 68.7%, 69.7%, 73.3%;
    # 2 processes, ddp and ddp_spawn alike: 67.3%); 10 points is 4 sd
    assert abs(r["test_acc"] - single["test_acc"]) <= 0.10, (r["test_acc"], single["test_acc"])
    # every test image counted exactly once: a single process re-evaluating the same checkpoint agrees
    from cnnlab.tasks import evaluate

    e = evaluate.run(r["run_dir"], progress=False)
    assert e["test_acc"] == pytest.approx(r["test_acc"], abs=1e-6) and e["images"] == 279
    # ... with the same weights and BatchNorm statistics in every process (ddp's test shards the split
    # over its processes; after ddp_spawn the launching process tests on its own), and its row in metrics.csv
    assert e["test_loss"] == pytest.approx(r["test_loss"], rel=1e-5)
    from cnnlab.io import read_metrics

    [row] = [m for m in read_metrics(tmp_path / r["run_dir"] / "metrics.csv") if "test/acc" in m]
    assert row["test/acc"] == r["test_acc"] and row["epoch"] == 4
    # eval.tta ran once, on global rank 0, with the tested weights (ddp_spawn's too): its single view is the test
    single_view, flip = r["tta"]["policies"]
    assert single_view["acc"] == pytest.approx(r["test_acc"], abs=1e-6) and flip["policy"] == "hflip"
    assert single_view["images_per_s"] > 0 and (tmp_path / r["run_dir"] / "tta.json").is_file()


def test_two_processes_share_every_global_batch_exactly():
    one = list(EpochShuffle(103, seed=3, batch_size=10))
    ranks = [list(EpochShuffle(103, seed=3, batch_size=10, rank=r, processes=2)) for r in (0, 1)]
    assert len(one) == 100 and all(len(s) == 50 for s in ranks)  # whole global batches only
    for step in range(10):  # step k of both processes together is step k of one process
        assert sorted(ranks[0][5 * step: 5 * step + 5] + ranks[1][5 * step: 5 * step + 5]) == sorted(one[10 * step: 10 * step + 10])
    s = EpochShuffle(103, seed=3, batch_size=10, rank=1, processes=2)
    s.set_epoch(1)
    assert list(s) != ranks[1]  # a new order each epoch, a pure function of (seed, epoch)


def test_evaluation_shards_count_every_image_once():
    shards = [list(Shard(279, r, 2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(279))


def test_step_seeds_include_the_rank():
    from cnnlab.engine.optim import step_seed

    seeds = {(rank, step): step_seed(5, rank, step) for rank in range(4) for step in range(1000)}
    assert len(set(seeds.values())) == len(seeds)  # no two (rank, step) pairs share a seed
    assert step_seed(5, 0, 7) == 5 * 1_000_003 + 7  # rank 0 draws as a single process always did


@pytest.mark.slow
def test_a_loss_that_is_not_finite_on_one_process_stops_every_process_at_that_step(tmp_path):
    """Two processes started as a cluster starts them (one a node), the loss NaN on global rank 1
    alone at step 3: both stop there with exit 3 and no hang, and the checkpoint named exists."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [a for o in [f"output.dir={tmp_path}", "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp",
                        "trainer.max_epochs=1", "output.plots=false"] for a in ("--set", o)]
    helper = str(Path(__file__).parent / "helpers" / "nan_on_one_rank.py")
    procs = [subprocess.Popen([sys.executable, helper, "train", SMOKE, *sets], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                                   "NODE_RANK": str(n), "LOCAL_RANK": "0"}) for n in (0, 1)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [3, 3], outs
    said = " ".join(outs[0].split())
    assert "training diverged at step 3" in said and "in another process" in said, outs[0]
    [ckpt] = [Path(w) for w in re.findall(r"(\S+\.ckpt)", said)]
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] == 3
    assert "training diverged at step 3 (epoch 0): the loss was nan" in " ".join(outs[1].split())


def test_a_global_batch_that_does_not_split_evenly_is_refused_before_anything_is_written(cli):
    res = cli("train", SMOKE, "--set", "trainer.devices=3", "--set", "trainer.strategy=ddp")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "data.batch_size: 32 images do not split evenly over 3 processes" in " ".join(res.output.split())
    assert list(cli.cwd.iterdir()) == []


# --------------------------------------------------------------------------- finetune


def finetune(recipe, out, *over: str) -> tuple[dict, subprocess.CompletedProcess]:
    sets = [a for o in [f"output.dir={out}", *over] for a in ("--set", o)]
    res = cnnlab("finetune", str(recipe), *sets)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    [run] = list(out.iterdir())  # exactly one run folder, whatever the process count
    return json.loads((run / "results.json").read_text()), res


@pytest.fixture(scope="module")
def ft_recipe(single, tmp_path_factory):
    """Full fine-tuning of the one-process smoke run above (classes 0-8) on classes 7-9, 40 training
    images each (30 + 10 held out), 30 test images each."""
    path = tmp_path_factory.mktemp("ft-recipe") / "ft.yaml"
    path.write_text(f"""data: {{source: fashion-mnist, classes: [7, 8, 9], subset: 40, test_subset: 30, val_split: 0.25, batch_size: 16}}
finetune: {{backbone: cnnlab, weights: {single["run_dir"]}, regime: full}}
optim: {{name: adamw, lr: 0.01}}
trainer: {{accelerator: cpu, max_epochs: 2}}
output: {{plots: false}}
""")
    return path


@pytest.fixture(scope="module")
def ft_single(ft_recipe, tmp_path_factory):
    """The same fine-tune in this process (one process, no launcher to start)."""
    from cnnlab import recipe as rc
    from cnnlab.tasks import finetune as task

    return task.run(rc.load(ft_recipe, [f"output.dir={tmp_path_factory.mktemp('ft-single')}"]), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_finetune_under_two_processes_writes_one_run_and_matches_one_process(strategy, ft_recipe, ft_single, tmp_path):
    r, res = finetune(ft_recipe, tmp_path, "trainer.devices=2", f"trainer.strategy={strategy}")
    assert r["device"]["processes"] == 2 and r["regime"] == "full" and r["epochs"] == 2
    assert r["peak_lr"] == ft_single["peak_lr"]  # the same discriminative learning rates, stage by stage
    assert r["train_images_per_s"] > 0 and ft_single["train_images_per_s"] > 0  # measured in the processes that trained
    assert r["images"] == ft_single["images"] == {"train": 90, "val": 30, "test": 90}
    assert res.stdout.count("test accuracy") == 1  # one report, from global rank 0
    # the same global batches, init and schedule; BatchNorm sees 8 images a process instead of 16.
    # 90 test images: one image is 1.1 points, and 3 classes from 30 images each move by several
    assert abs(r["test_acc"] - ft_single["test_acc"]) <= 0.15, (r["test_acc"], ft_single["test_acc"])
    from cnnlab.tasks import evaluate

    e = evaluate.run(r["run_dir"], progress=False)  # the checkpoint holds the network the run tested
    assert e["test_acc"] == pytest.approx(r["test_acc"], abs=1e-6) and e["images"] == 90


@pytest.mark.slow
@pytest.mark.parametrize("over,why", [(["finetune.regime=auto"], "auto runs in one process"),
                                      (["finetune.regime=linear"], "linear trains a head on stored frozen features")])
def test_finetune_regimes_solved_in_one_process_refuse_several(over, why, ft_recipe, cli):
    res = cli("finetune", str(ft_recipe), "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", *[
        a for o in over for a in ("--set", o)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert why in " ".join(res.output.split())
    assert list(cli.cwd.iterdir()) == []
