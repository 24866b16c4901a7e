"""Every CUDA path of cnnlab in one run (`make gpu-check`), about five minutes on one GPU:

- the smoke recipe at 32-true, 16-mixed, bf16-mixed and bf16-true, and with 16-bit weights
  (stochastic rounding) and device placement;
- `eval` and `eval-tta` of the 32-true run;
- `bench-conv`'s default sweep with cuDNN as `direct`, TF32 off and on;
- `bench-data`, with pageable and pinned host-to-device copies;
- `finetune --regime linear` of recipes/transfer_different.yaml (EfficientNet-Lite0, no source run);
- recipes/fashion_mnist_fast.yaml, timed (GPU only): cnnlab's first GPU result.

ACCELERATOR=cpu runs the same checks on the CPU at smoke size, leaving out what needs CUDA, in
seconds: a test runs that lane, so the script is known to work before a GPU is lent. Each check is
timed and recorded whatever happens to the others; gpu-check.json goes into $OUT when that is set
(the device tool's output folder), else into runs/. Exit 1 when any check failed.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
KEEP = ("test_acc", "test_loss", "train_images_per_s", "wall_time_s", "epochs", "precision", "peak_memory",
        "placement", "weights", "device", "regime", "best_val_acc")


def summary(r: dict[str, Any] | None) -> dict[str, Any]:
    return {k: r[k] for k in KEEP if r and k in r}


class Checks:
    """Runs checks one after another, each timed, its result or its error recorded."""

    def __init__(self, accelerator: str, runs: Path):
        self.accelerator, self.runs, self.rows = accelerator, runs, []

    def run(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        print(f"[gpu-check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            out = fn()
            row = {"check": name, "ok": True, "seconds": time.perf_counter() - t0, "result": out}
        except BaseException as e:  # noqa: BLE001 - one failed check must not lose the others
            if isinstance(e, KeyboardInterrupt):
                raise
            out = None
            row = {"check": name, "ok": False, "seconds": time.perf_counter() - t0,
                   "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
        print(f"[gpu-check] {name}: {'ok' if row['ok'] else 'FAILED ' + row['error']} ({row['seconds']:.1f} s)", flush=True)
        self.rows.append(row)
        return out

    def skip(self, name: str, why: str) -> None:
        self.rows.append({"check": name, "ok": None, "skipped": why})


def main(accelerator: str | None = None, out: Path | None = None) -> int:
    accelerator = accelerator or os.environ.get("ACCELERATOR", "cuda")
    import torch

    from cnnlab import recipe as rc
    from cnnlab.env import versions
    from cnnlab.tasks import bench_conv, bench_data, eval_tta, evaluate, finetune, profile, sweep, train

    gpu = accelerator == "cuda"
    if gpu and not torch.cuda.is_available():
        print("error: ACCELERATOR=cuda and no CUDA device is visible (ACCELERATOR=cpu runs the CPU lane)", file=sys.stderr)
        return 2
    runs = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))  # run folders: scratch, not brought back
    c = Checks(accelerator, runs)
    # smoke-sized on the CPU lane: seconds, not minutes
    small = [] if gpu else ["trainer.max_epochs=1", "data.subset=16", "data.test_subset=10"]
    base = [f"trainer.accelerator={accelerator}", f"output.dir={runs}", "output.plots=false", *small]

    def train_smoke(*over: str) -> dict[str, Any]:
        return train.run(rc.load(RECIPES / "smoke.yaml", [*base, *over]), progress=False)

    precisions = ["32-true", "16-mixed", "bf16-mixed", "bf16-true"] if gpu else ["32-true", "bf16-true"]
    smoke = {}
    for p in precisions:
        smoke[p] = c.run(f"smoke {p}", lambda p=p: train_smoke(f"trainer.precision={p}"))
    if not gpu:
        c.skip("smoke 16-mixed", "needs CUDA")
    got = smoke.get("32-true")
    if got:
        c.run("eval", lambda: {**summary(evaluate.run(Path(got["run_dir"]), progress=False)),
                               "trained_test_acc": got["test_acc"]})
        c.run("eval-tta", lambda: {p["policy"]: {k: p[k] for k in ("views", "acc", "nll", "images_per_s")}
                                   for p in eval_tta.run(Path(got["run_dir"]), ["eval.tta=['hflip', 'ten-crop']"],
                                                         out=runs / "tta", progress=False)["policies"]})
    c.run("smoke, 16-bit weights with stochastic rounding",
          lambda: summary(train_smoke("optim.weights={dtype: bf16, rounding: stochastic}")))
    c.run("smoke, data.placement device", lambda: summary(train_smoke("data.placement=device")))
    for tf32 in (False, True) if gpu else (False,):
        shape = {} if gpu else {"shape": "2,8,16,16,8,3", "repeats": 1}
        c.run(f"bench-conv tf32={tf32}", lambda tf32=tf32, shape=shape: _conv(bench_conv.run(
            device="cuda" if gpu else "cpu", out_dir=str(runs), allow_tf32=tf32, progress=False, **shape)))
    data_recipe = rc.load(RECIPES / ("fashion_mnist.yaml" if gpu else "smoke.yaml"), base)
    c.run("bench-data", lambda: _data(bench_data.run(data_recipe, limit=10000 if gpu else 64, repeats=3 if gpu else 1,
                                                     workers=None if gpu else 0, out_dir=str(runs))))
    ft = [] if gpu else ["data.subset=4", "data.test_subset=4", "trainer.max_epochs=1", "data.image_size=32"]
    c.run("finetune --regime linear (transfer_different)", lambda: summary(finetune.run(
        rc.load(RECIPES / "transfer_different.yaml", [*base, *ft]), "linear", progress=False)))
    # jobs auto: one trial at a time on a GPU (the trials would share it), one per core on the CPU lane
    c.run("sweep, 2 learning rates (jobs auto)", lambda: _sweep(sweep.run(
        rc.load(RECIPES / "smoke.yaml", base), grid=["optim.lr=[0.05, 0.2]"], progress=False)))
    if gpu:
        c.run("fashion_mnist_fast (timed)", lambda: summary(train.run(
            rc.load(RECIPES / "fashion_mnist_fast.yaml", base), progress=False)))
    else:
        c.skip("fashion_mnist_fast (timed)", "GPU only")
    c.run("profile smoke (split, verdict, peak memory predicted and measured)", lambda: _profile(profile.run(
        rc.load(RECIPES / "smoke.yaml", [*base, "data.batch_size=64" if not gpu else "data.batch_size=256"]),
        steps=5 if gpu else 3, warmup=2 if gpu else 1, machine_quick=not gpu)))
    if gpu:
        c.run("profile --machine", lambda: _machine(profile.machine(Path(tempfile.mkdtemp(prefix="cnnlab-disk-")))))
    else:
        c.skip("profile --machine", "GPU only (the CPU lane's profile measured it the quick way)")
    report = {"accelerator": accelerator, "when": datetime.now().isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if gpu else "cpu", "versions": versions(),
              "checks": c.rows, "failed": [r["check"] for r in c.rows if r["ok"] is False]}
    dest = Path(out) if out else Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[gpu-check] {len(c.rows)} checks, {len(report['failed'])} failed: {dest / 'gpu-check.json'}")
    return 1 if report["failed"] else 0


def _sweep(s: dict[str, Any]) -> dict[str, Any]:
    return {"jobs": s["jobs"], "threads": s["threads"], "why": s["jobs_why"], "device": s["device"],
            "cells": {r["cell"]: r.get("test_acc") for r in s["rows"]},
            "failed": [t["id"] for t in s["trials"] if t["status"] != "done"]}


def _conv(r: dict[str, Any]) -> dict[str, Any]:
    return {"tf32": r["tf32"], "device": r["device"], "rows": r["rows"]}


def _profile(r: dict[str, Any]) -> dict[str, Any]:
    m = r["memory"]
    return {"device": r["device"], "split_ms": {k: v * 1e3 for k, v in r["steps"]["split"].items()},
            "verdict": r["verdict"]["text"], "overhead": r["steps"]["overhead"]["ratio"], "flops": r["flops"],
            "peaks": m["peaks"], "saves": m["saves"], "planner": m.get("planner")}


def _machine(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("matmul", "memcpy", "h2d", "disk", "precisions", "seconds")} | {
        "gpus": m["facts"].get("gpus"), "cpu": m["facts"].get("cpu")}


def _data(r: dict[str, Any]) -> dict[str, Any]:
    return {"images": r["images"], "h2d": r["h2d"], "targets": r["targets"],
            "rows": [{"method": x["method"], "images_per_s": x["images_per_s"]} for x in r["rows"]]}


if __name__ == "__main__":
    sys.exit(main())
