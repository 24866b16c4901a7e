"""A sweep's trials side by side against one at a time, on this machine's cores: the same 9-trial
sweep (3 learning rates x 3 seeds of the smoke recipe) through the real CLI, `--jobs 1` (each trial
with every core's thread) then `--jobs N` (N = cores, one thread each), alternating, >= 5 pairs: the
median of the paired ratios of the commands' wall times. Then the equal-threads check: `--jobs 1
--threads 1` and `--jobs N --threads 1` give identical accuracies trial for trial.

    python benchmarks/sweep_parallel.py [--recipe recipes/smoke.yaml] [--pairs 5] [--set KEY=VALUE]... [--json out.json]

`--set trainer.max_epochs=40` makes each trial ~5x longer: the pool's fixed cost (each worker starts
a fresh interpreter and imports torch and Lightning) is then paid back.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["--grid", "optim.lr=[0.05, 0.1, 0.2]", "--seeds", "3"]


def sweep(recipe: str, out: Path, jobs: int, threads: str = "auto", sets: list[str] = ()) -> tuple[float, dict[str, float], dict]:
    """Wall time of one `cnnlab sweep` command (start to exit), its trials' accuracies, its summary."""
    cmd = [sys.executable, "-m", "cnnlab", "sweep", recipe, *GRID, "--jobs", str(jobs), "--threads", threads,
           "--set", f"output.dir={out}", "--set", "output.plots=false", *[a for x in sets for a in ("--set", x)]]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(res.stdout + res.stderr)
    [done] = sorted(out.glob("*/sweep.json"))[-1:]
    s = json.loads(done.read_text())
    return wall, {t["id"]: t["test_acc"] for t in s["trials"]}, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/smoke.yaml")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a recipe override for every trial")
    args = ap.parse_args()
    n = len(os.sched_getaffinity(0))
    one, many, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            a, _, _ = sweep(args.recipe, Path(tmp) / f"one-{i}", 1, sets=args.sets)
            b, _, s = sweep(args.recipe, Path(tmp) / f"many-{i}", n, sets=args.sets)
            one.append(a)
            many.append(b)
            ratios.append(b / a)
            print(f"  pair {i + 1}: --jobs 1 {a:6.1f} s, --jobs {n} {b:6.1f} s, ratio {b / a:.2f}", flush=True)
        _, acc1, s1 = sweep(args.recipe, Path(tmp) / "equal-1", 1, "1", args.sets)
        _, accn, sn = sweep(args.recipe, Path(tmp) / "equal-n", n, "1", args.sets)
    same = acc1 == accn
    trial = statistics.median(t["wall_time_s"] for t in s["trials"])
    print(f"\n  9 trials ({' '.join(args.sets) or 'the recipe as it is'}; a trial trains {trial:.1f} s at 1 thread), {n} cores: --jobs 1 (x {n} threads) median {statistics.median(one):.1f} s, "
          f"--jobs {n} (x 1 thread) median {statistics.median(many):.1f} s")
    print(f"  wall time --jobs {n} / --jobs 1: median of {args.pairs} paired ratios {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    print(f"  at 1 thread per trial, --jobs 1 and --jobs {n}: accuracies {'identical' if same else 'DIFFERENT'} "
          f"trial for trial ({len(acc1)} trials)")
    for r1, rn in zip(s1["rows"], sn["rows"]):
        print(f"    {r1['cell']:16s} {r1['test_acc']:.2%} ± {r1['test_acc_sd']:.2%}   {rn['test_acc']:.2%} ± {rn['test_acc_sd']:.2%}")
    if args.json:
        args.json.write_text(json.dumps({"cores": n, "jobs1_s": one, "jobsn_s": many, "ratios": ratios,
                                         "median_ratio": statistics.median(ratios), "identical": same,
                                         "accuracies": acc1}, indent=2))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
