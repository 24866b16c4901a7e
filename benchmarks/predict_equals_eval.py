"""`cnnlab predict` on image files against `cnnlab eval` on the same images, for a run at its native
size and a resized one: each run's test split is exported as PNG files into class-named folders,
predicted from the files alone, and compared image by image with eval's top-1 (the rebuilt module on
the data module's test loader, as eval's Trainer.test sees it) and with eval's accuracy
(`cnnlab.tasks.evaluate`). Then predict's throughput (decode, predict, write) on the whole
Fashion-MNIST test set, 10,000 PNG files, median of repeats.

    python benchmarks/predict_equals_eval.py [--repeats 3] [--skip-lite0] [--threads 1]
Runs made here: recipes/smoke.yaml (vgg-small, 28 px, 300 test images) and an EfficientNet-Lite0
fine-tune at 64 px (recipes/transfer_different.yaml, regime linear: Fashion-MNIST classes 5-9, 1,000
test images upscaled 28 -> 64 px by the source's resize). Target: every image agrees, accuracy equal.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from cnnlab import recipe as rc
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine.checkpoint import load
from cnnlab.env import device_info
from cnnlab.engine.trainer import evaluator
from cnnlab.tasks import evaluate, finetune, predict, train

ROOT = Path(__file__).resolve().parents[1]


def export(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path) -> None:
    """uint8 (N, C, H, W) images as <folder>/<class>/<index>.png (lossless: the same pixels come back)."""
    for i, (x, y) in enumerate(zip(images, labels)):
        d = folder / classes[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        a = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
        Image.fromarray(a).save(d / f"{i:05d}.png")


def eval_top1(c, loader) -> torch.Tensor:
    """eval's top-1 of every image: the rebuilt module's prepare + forward, batch by batch."""
    c.module.eval()
    with torch.inference_mode():
        return torch.cat([c.module(c.module.prepare(x)).argmax(-1) for x, _ in loader])


def compare(name: str, run: Path, work: Path) -> dict:
    """predict on the run's test split as files vs eval on the split, image by image."""
    c = load(run)
    test = c.data.test
    folder = work / "test"
    export(test.images, test.labels, test.classes, folder)
    expected = eval_top1(c, c.data.test_dataloader())
    ev = evaluate.run(run, progress=False, out=work / "eval.json")
    r = predict.run(run, [str(folder)], out=work / "predictions.csv")
    with open(work / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    agree = sum(row["class"] == test.classes[int(expected[int(Path(row["path"]).stem)])] for row in rows)
    return {"run": name, "shape": "x".join(map(str, r["shape"])), "reading": r["reading"], "images": len(rows),
            "agree": agree, "predict_acc": r["acc"], "eval_acc": ev["test_acc"], "correct": r["correct"],
            "eval_correct": round(ev["test_acc"] * len(test.labels)), "images_per_s": r["images_per_s"]}


def smoke_run(out: Path) -> Path:
    r = rc.load(ROOT / "recipes" / "smoke.yaml", [f"output.dir={out}", "output.plots=false"])
    return Path(train.run(r, progress=False)["run_dir"])


def lite0_run(out: Path) -> Path:
    r = rc.load(ROOT / "recipes" / "transfer_different.yaml", [f"output.dir={out}", "finetune.regime=linear",
                                                                "finetune.cache_dir=null", "output.plots=false"])
    return Path(finetune.run(r, progress=False)["run_dir"])


def throughput(run: Path, work: Path, repeats: int) -> dict:
    """predict's images/s on the 10,000 Fashion-MNIST test images as PNG files, with agreement against
    the module on the same images in memory."""
    from cnnlab.data.sources import SOURCES

    test = SOURCES.get("fashion-mnist")(None, "test")
    folder = work / "fmnist-test"
    export(test.images, test.labels, test.classes, folder)
    c = load(run)
    speeds, in_memory = [], []
    for i in range(repeats):  # interleaved: files through predict, then the same images in memory
        r = predict.run(run, [str(folder)], out=work / f"all-{i}.csv")
        speeds.append(r["images_per_s"])
        t0 = time.perf_counter()
        expected = eval_top1(c, zip(test.images.split(256), test.labels.split(256)))
        in_memory.append(len(expected) / (time.perf_counter() - t0))
    with open(work / "all-0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    agree = sum(row["class"] == test.classes[int(expected[int(Path(row["path"]).stem)])] for row in rows)
    return {"images": len(rows), "agree": agree, "images_per_s": statistics.median(speeds), "all": speeds,
            "in_memory": statistics.median(in_memory),
            "acc": r["acc"], "device": device_info(evaluator("auto", "32-true", False))["name"],
            "threads": torch.get_num_threads()}


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="predict passes over the 10,000 files (median)")
    ap.add_argument("--skip-lite0", action="store_true", help="only the smoke run (no EfficientNet-Lite0 fine-tune)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a shared, busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        runs = [("smoke (vgg-small)", smoke_run(tmp / "runs"))]
        if not args.skip_lite0:
            runs.append(("EfficientNet-Lite0, 64 px", lite0_run(tmp / "runs")))
        console.print(f"runs made in {time.perf_counter() - t0:.0f} s", highlight=False)
        t = Table(title="predict from PNG files vs eval on the same images", title_justify="left")
        for col in ("run", "input", "images", "top-1 agree", "predict acc", "eval acc", "images/s"):
            t.add_column(col, justify="left" if col in ("run",) else "right")
        for i, (name, run) in enumerate(runs):
            r = compare(name, run, tmp / f"cmp{i}")
            t.add_row(r["run"], r["shape"], str(r["images"]), f"{r['agree']}/{r['images']}",
                      f"{r['predict_acc']:.2%} ({r['correct']})", f"{r['eval_acc']:.2%} ({r['eval_correct']})",
                      f"{r['images_per_s']:,.0f}")
        console.print(t)
        th = throughput(runs[0][1], tmp / "all", args.repeats)
        console.print(f"throughput ({runs[0][0]}): {th['images']:,} PNG files, batch 256, "
                      f"{th['images_per_s']:,.0f} images/s (median of {len(th['all'])}: "
                      f"{', '.join(f'{s:,.0f}' for s in th['all'])}; the module on the same images in memory, "
                      f"batches of 256: {th['in_memory']:,.0f} images/s), top-1 agrees with the in-memory module on "
                      f"{th['agree']:,}/{th['images']:,}, accuracy {th['acc']:.2%}; {th['device']}, "
                      f"{th['threads']} threads", highlight=False)


if __name__ == "__main__":
    main()
