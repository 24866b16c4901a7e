"""Exported models against PyTorch: a run exported (`cnnlab export`'s task) to ONNX and .pt2, then on
the first N test images of its data each file's top-1 agreement and largest |logit difference| against
the cnnlab module (`cnnlab eval`'s), and images/s of onnxruntime, the reloaded .pt2 and the exported
wrapper run eagerly, each against PyTorch eager as `cnnlab eval` runs it (the cnnlab module:
prepare + forward, channels_last): paired rounds (eager, then the other; >= 5 pairs), the median of
the per-pair ratios. Same images, batch size and thread count (torch and onnxruntime) for all.

    python benchmarks/export_speed.py [--run RUN_DIR ...] [--images 1000] [--pairs 7] [--batch 1 --batch 250] [--threads 1] [--timed 200]
Default run: the newest runs/fashion_mnist-*/ with checkpoints/best.ckpt (else recipes/fashion_mnist.yaml
trained for 1 epoch). Target: top-1 agreement 100%, |logit difference| within 1e-4 x the logit scale.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cnnlab.bench.timing import paired
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine.checkpoint import Loaded, load
from cnnlab.env import cpu_name, versions
from cnnlab.tasks import export as task

ROOT = Path(__file__).resolve().parents[1]
LATENCY_CALLS = 200  # calls per timed pass at most: at batch 1, 200 images (1,000 would take minutes a pass)


def demo_run() -> Path:
    """The newest `make demo` run folder with a best checkpoint; else one trained now (1 epoch)."""
    found = sorted((p for p in (ROOT / "runs").glob("fashion_mnist-*") if (p / "checkpoints" / "best.ckpt").is_file()),
                   key=lambda p: p.name)
    if found:
        return found[-1]
    from cnnlab import recipe as rc
    from cnnlab.engine.run import train

    r = rc.load(ROOT / "recipes" / "fashion_mnist.yaml", [f"output.dir={ROOT / 'runs'}", "trainer.max_epochs=1"])
    return Path(train(r, progress=False)["run_dir"])


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1  # torch's thread count, for a fair pair
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rate(fn, x: torch.Tensor, batch: int):
    """A callable: images/s of `fn` over all of `x` in batches of `batch` (one timed pass)."""
    chunks = list(x.split(batch))

    def one_pass() -> float:
        t0 = time.perf_counter()
        for b in chunks:
            fn(b)
        return len(x) / (time.perf_counter() - t0)

    return one_pass


def agreement(ref: torch.Tensor, got: torch.Tensor) -> dict:
    c = task.compare(ref, got, [len(ref)])
    return {"images": c.images, "top1_agreement": c.top1_agreement, "max_abs_diff": c.max_abs_diff,
            "logit_scale": c.logit_scale, "tolerance": c.tolerance, "near_ties": c.near_ties, "passed": c.passed}


def bench_run(run: Path, images: int, pairs: int, batches: list[int], folder: Path, threads: int,
              timed_images: int | None = None) -> dict:
    c: Loaded = load(run)
    t0 = time.perf_counter()
    written = {fmt: task.export(c, fmt, folder / f"{run.name}.{fmt}") for fmt in task.FORMATS}
    export_s = time.perf_counter() - t0
    x = c.data.test.images[:images]
    ref = task.reference_logits(c, x)
    torch.set_num_threads(threads)
    session = onnx_session(folder / f"{run.name}.onnx", threads)
    pt2 = torch.export.load(folder / f"{run.name}.pt2").module()
    eager, _ = task.deployable(c)

    def run_onnx(b):
        return torch.from_numpy(session.run(None, {"images": b.numpy()})[0])

    def run_pt2(b):
        with torch.no_grad():
            return pt2(b)

    def run_eager(b):
        with torch.no_grad():
            return eager(b)

    def run_module(b):  # PyTorch eager as `cnnlab eval` runs it: prepare (channels_last) + forward
        with torch.no_grad():
            return c.module(c.module.prepare(b))

    outputs = {"onnxruntime": torch.cat([run_onnx(b) for b in x.split(250)]),
               "pt2": torch.cat([run_pt2(b) for b in x.split(250)]),
               "eager (exported wrapper)": torch.cat([run_eager(b) for b in x.split(250)])}
    checks = {name: agreement(ref, got) for name, got in outputs.items()}
    speed = {}
    for batch in batches:
        timed = x[: max(batch, min(len(x), batch * LATENCY_CALLS, timed_images or len(x)))]  # batch 1: 200 calls
        base = rate(run_module, timed, batch)
        speed[batch] = {}
        for name, fn in (("onnxruntime", run_onnx), ("pt2", run_pt2), ("eager (exported wrapper)", run_eager)):
            print(f"  timing {name} at batch {batch} on {len(timed)} images", file=sys.stderr, flush=True)
            speed[batch][name] = {**paired(base, rate(fn, timed, batch), pairs=pairs), "images": len(timed)}
    n, ch, h, w = c.data.test.images.shape
    return {"run": str(run), "model": (c.recipe.dump().get("finetune") or {}).get("backbone") or c.recipe.model.name,
            "input": [ch, h, w], "notes": written["onnx"]["notes"], "export_s": export_s, "threads": threads,
            "bytes": {fmt: r["bytes"] for fmt, r in written.items()}, "checks": checks,
            "speed": {b: {k: {"ratio": v["ratio"], "iqr": v["iqr"], "eager_images_per_s": statistics.median(v["a"]), "timed_images": v["images"],
                              "images_per_s": statistics.median(v["b"])} for k, v in s.items()} for b, s in speed.items()}}


def table(r: dict) -> Table:
    t = Table(title=f"{r['model']} ({'x'.join(map(str, r['input']))}) from {Path(r['run']).name}: "
                    f"{r['checks']['onnxruntime']['images']} test images, {r['threads']} threads, {cpu_name()}",
              title_justify="left")
    for col in ("runtime", "batch", "timed images", "images/s", "eager images/s", "x eager (median of pairs, IQR)",
                "top-1 agreement", "max |Δ logit|"):  # eager: the cnnlab module (prepare + forward, channels_last)
        t.add_column(col, justify="right" if col != "runtime" else "left")
    for batch, s in r["speed"].items():
        for name, v in s.items():
            chk = r["checks"][name]
            t.add_row(name, str(batch), str(v["timed_images"]), f"{v['images_per_s']:,.0f}", f"{v['eager_images_per_s']:,.0f}",
                      f"{v['ratio']:.2f} ({v['iqr'][0]:.2f}-{v['iqr'][1]:.2f})",
                      f"{chk['top1_agreement']:.2%}", f"{chk['max_abs_diff']:.2g}")
    return t


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", type=Path, help="run folder or .ckpt (repeatable); default the demo run")
    ap.add_argument("--images", type=int, default=1000, help="test images (the first N of the run's test split)")
    ap.add_argument("--pairs", type=int, default=7, help="paired rounds per comparison, at least 5")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes timed (repeatable); default 1 and 250")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="threads of both torch and onnxruntime (on a shared machine 1 is the steadier)")
    ap.add_argument("--timed", type=int, help="images per timed pass at most (default: all, 200 calls at most)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    runs = args.run or [demo_run()]
    console, results = Console(width=140), []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            r = bench_run(run, args.images, args.pairs, args.batch or [1, 250], Path(tmp), args.threads, args.timed)
            results.append(r)
            console.print(table(r))
            for n in r["notes"]:
                console.print(f"  note: {n}")
            console.print(f"  export + check of both formats {r['export_s']:.1f} s; files: "
                          + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in r["bytes"].items()))
    out = {"results": results, "versions": versions(), "cpu": cpu_name(), "argv": sys.argv[1:]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    bad = [(r["run"], k) for r in results for k, c in r["checks"].items() if not c["passed"]]
    if bad:
        console.print(f"[red]checks failed:[/] {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
