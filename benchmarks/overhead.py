"""cnnlab's training overhead: one epoch through `cnnlab` (Lightning Trainer, progress bar, CSV log,
checkpoint) vs a hand-written PyTorch loop doing the same work: same images, model, batch size,
optimizer, schedule, normalisation and memory format. Alternating runs in one process; medians.

    python benchmarks/overhead.py [--per-class 1500] [--repeats 3]
Target: cnnlab time <= 1.05x the plain loop's.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from cnnlab import recipe as rc
from cnnlab import runinfo
from cnnlab.lit import build_optimizer, lr_factor
from cnnlab.models import build_model
from cnnlab.tasks import train as train_task


def plain_epoch(r: rc.Recipe, data) -> float:
    """The loop a careful user would write by hand; returns seconds for one epoch."""
    torch.manual_seed(r.seed)
    net = build_model(r.model.name, data.in_channels, data.num_classes, **r.model.kwargs())
    net = net.to(memory_format=torch.channels_last).train()
    opt = build_optimizer(list(net.named_parameters()), r.optim)
    bs = r.data.batch_size
    x_all, y_all = data.train.images, data.train.labels
    steps = len(y_all) // bs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, steps, r.schedule))
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    t0 = time.perf_counter()
    perm = torch.randperm(len(y_all))
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        x = ((x_all[idx].float().div_(255) - mean) / std).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y_all[idx], label_smoothing=r.optim.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def cnnlab_epoch(r: rc.Recipe) -> tuple[float, float]:
    """One epoch through cnnlab's own task: (seconds in `trainer.fit`, i.e. Trainer start, progress
    bar, logging and checkpoint included; seconds for the whole command incl. data load and test)."""
    t0 = time.perf_counter()
    res = train_task.run(r, progress=True)
    return res["wall_time_s"], time.perf_counter() - t0


def main() -> None:
    runinfo.quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist.yaml")
    ap.add_argument("--per-class", type=int, default=1500, help="training images per class")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="cnnlab-bench-")
    r = rc.load(args.recipe, [f"data.subset={args.per_class}", "data.val_split=0", "data.test_subset=10",
                              "trainer.max_epochs=1", "trainer.accelerator=cpu", f"output.dir={out}",
                              "output.plots=false"])
    data = train_task.assemble(r).data
    plain_epoch(r, data)  # warm-up: oneDNN kernel selection, allocator
    plain, lab, whole = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch(r, data))
        fit, total = cnnlab_epoch(r)
        lab.append(fit)
        whole.append(total)
    n = len(data.train.labels) // r.data.batch_size * r.data.batch_size
    p, c = statistics.median(plain), statistics.median(lab)
    print(f"\none epoch, {n} images, batch {r.data.batch_size}, {r.model.name}, {args.repeats} alternating repeats"
          f" (medians), {torch.get_num_threads()} threads")
    print(f"  plain PyTorch loop : {p:7.2f} s  {n / p:8.0f} images/s   runs: {', '.join(f'{t:.2f}' for t in plain)}")
    print(f"  cnnlab trainer.fit : {c:7.2f} s  {n / c:8.0f} images/s   runs: {', '.join(f'{t:.2f}' for t in lab)}")
    print(f"  ratio cnnlab/plain : {c / p:.3f}x  (target <= 1.05x; Trainer start, logging, checkpoint included)")
    print(f"  whole `cnnlab train` (data load, fit, test, run folder): {statistics.median(whole):.2f} s")


if __name__ == "__main__":
    main()
