"""Data-parallel training on a CPU's own cores: one process (PyTorch's intra-op threads over every
core) against one single-thread process per core (Lightning's ddp on gloo, which sets each process's
threads to cores / processes). The same recipe, images and global batch, alternating runs through
the real CLI, medians of the training images/s each run reports.

    python benchmarks/cpu_data_parallel.py [--recipe recipes/fashion_mnist_fast.yaml] [--batches 80] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(recipe: str, out: Path, batches: int, processes: int) -> float:
    mode = ["trainer.devices=1", "trainer.strategy=auto"] if processes == 1 else [
        f"trainer.devices={processes}", "trainer.strategy=ddp"]
    sets = [f"output.dir={out}", "trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
            "trainer.accelerator=cpu", "eval.tta=[]", "output.plots=false", "data.test_subset=10", *mode]
    cmd = [sys.executable, "-m", "cnnlab", "train", recipe] + [a for s in sets for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stdout + res.stderr)
    [results] = sorted(out.glob("*/results.json"))[-1:]
    return json.loads(results.read_text())["train_images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist_fast.yaml")
    ap.add_argument("--batches", type=int, default=80, help="training steps per run")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    runs: dict[int, list[float]] = {1: [], cores: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for n in runs:
                runs[n].append(run(args.recipe, Path(tmp) / f"{n}-{i}", args.batches, n))
    one = statistics.median(runs[1])
    for n, xs in runs.items():
        label = "1 process, intra-op threads" if n == 1 else f"{n} processes (ddp), 1 thread each"
        print(f"  {label:34s}: {statistics.median(xs):8,.0f} training images/s   runs: "
              + ", ".join(f"{x:,.0f}" for x in xs))
    print(f"  ratio {cores} processes / 1 process  : {statistics.median(runs[cores]) / one:.2f}x")


if __name__ == "__main__":
    main()
