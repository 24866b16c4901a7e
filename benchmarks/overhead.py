"""cnnlab's training overhead: one epoch through `cnnlab` (Lightning Trainer, progress bar, CSV log,
checkpoint) vs a hand-written PyTorch loop doing the same work: same images, model, batch size,
optimizer, schedule, normalisation and memory format. Pairs of runs in one process (plain loop, then
cnnlab), and the median of the pairs' ratios with their spread: this machine's speed drifts by a
third within minutes, so two medians taken apart would compare two machines.

    python benchmarks/overhead.py [--per-class 1500] [--pairs 5]
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
from cnnlab.bench.timing import paired
from cnnlab.engine.assemble import assemble
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine.optim import build_optimizer, lr_factor
from cnnlab.engine.run import train
from cnnlab.models import build_model


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


def cnnlab_epoch(r: rc.Recipe, whole: list[float]) -> float:
    """One epoch through cnnlab's engine: seconds in `trainer.fit` (Trainer start, progress bar,
    logging and checkpoint included); the whole run's seconds (data load and test too) go to `whole`."""
    t0 = time.perf_counter()
    res = train(r, progress=True)
    whole.append(time.perf_counter() - t0)
    return res["wall_time_s"]


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist.yaml")
    ap.add_argument("--per-class", type=int, default=1500, help="training images per class")
    ap.add_argument("--pairs", type=int, default=5, help="(plain, cnnlab) pairs, at least 5")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="cnnlab-bench-")
    r = rc.load(args.recipe, [f"data.subset={args.per_class}", "data.val_split=0", "data.test_subset=10",
                              "trainer.max_epochs=1", "trainer.accelerator=cpu", f"output.dir={out}",
                              "output.plots=false"])
    data = assemble(r).data
    whole: list[float] = []
    # the first pair warms up: oneDNN kernel selection, allocator
    p = paired(lambda: plain_epoch(r, data), lambda: cnnlab_epoch(r, whole), pairs=args.pairs, warmup=1)
    n = len(data.train.labels) // r.data.batch_size * r.data.batch_size
    fmt = lambda xs: ", ".join(f"{t:.2f}" for t in xs)  # noqa: E731
    print(f"\none epoch, {n} images, batch {r.data.batch_size}, {r.model.name}, {p['pairs']} pairs (plain, then cnnlab), "
          f"{torch.get_num_threads()} threads")
    print(f"  plain PyTorch loop : median {statistics.median(p['a']):7.2f} s   runs: {fmt(p['a'])}")
    print(f"  cnnlab trainer.fit : median {statistics.median(p['b']):7.2f} s   runs: {fmt(p['b'])}")
    print(f"  ratio cnnlab/plain : {p['ratio']:.3f}x, median of the pairs' ratios (IQR {p['iqr'][0]:.3f}-{p['iqr'][1]:.3f}, "
          f"range {p['min']:.3f}-{p['max']:.3f}; ratios: {fmt(p['ratios'])})")
    lo, hi = p["iqr"]
    verdict = ("met: the middle half of the pairs is at or under it" if hi <= 1.05 else
               "missed: the middle half of the pairs is over it" if lo > 1.05 else
               "not resolved: the middle half of the pairs straddles it (more --pairs narrow it)")
    print(f"  target <= 1.05x: {verdict} (Trainer start, logging, checkpoint included)")
    print(f"  whole `cnnlab train` (data load, fit, test, run folder): median {statistics.median(whole[1:]):.2f} s")


if __name__ == "__main__":
    main()
