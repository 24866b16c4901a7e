"""Test-time augmentation's cost: images/s of each policy through cnnlab's batched, chunked
forwards, against what its extra forward passes alone would cost (single-view images/s / views).
The same network, images, batch size and device, side by side in one process; medians of repeats.

    python benchmarks/tta_throughput.py [--images 3000] [--repeats 3] [--recipe recipes/fashion_mnist.yaml]
Target: ten-crop images/s >= 0.8 x (single-view images/s / 10): batching views adds no overhead
beyond the extra passes.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from rich.console import Console
from rich.table import Table

from cnnlab import recipe as rc
from cnnlab.data import ImageDataModule
from cnnlab.engine.assemble import module_args
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine.module import Classifier
from cnnlab.engine.trainer import evaluator
from cnnlab.env import device_info
from cnnlab.models import build_model
from cnnlab.tta.run import evaluate, policies_for

POLICIES = ["hflip", "five-crop", "ten-crop", "ten-crop+scales"]


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/fashion_mnist.yaml")
    ap.add_argument("--images", type=int, default=3000, help="test images (the first N)")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the images (every policy each pass), at least 5")
    args = ap.parse_args()
    r = rc.load(args.recipe, ["data.test_subset=" + str(max(1, args.images // 10))])
    data = ImageDataModule(r.data, seed=r.seed)
    data.setup("test")
    torch.manual_seed(0)  # throughput does not depend on the weights: an untrained network of the recipe's shape
    net = build_model(r.model.name, data.in_channels, data.num_classes, **r.model.kwargs())
    module = Classifier(net, data.num_classes, data.mean, data.std, **module_args(r))
    loader = data.test_dataloader()
    policies = policies_for(POLICIES, r.eval, data.test.images[:1])
    runs: dict[str, list[float]] = {p.name: [] for p in policies}
    views: dict[str, int] = {}
    for _ in range(args.repeats):
        res = evaluate(module, loader, policies, r.eval, r.data.batch_size, evaluator("auto", "32-true", False))
        for p in res["policies"]:
            runs[p["policy"]].append(p["images_per_s"])
            views[p["policy"]] = p["views"]
    single = statistics.median(runs["identity"])

    def paired(name: str) -> float:
        """images/s x views / the single view's, the median over passes (every policy runs in each pass)."""
        return statistics.median(ips * views[name] / one for ips, one in zip(runs[name], runs["identity"]))

    t = Table(title=f"TTA throughput: {len(data.test.labels)} images, batch {r.data.batch_size}, {args.repeats} passes "
                    f"(medians; ratio: median of the passes' own ratios), {device_info(evaluator('auto', '32-true', False))['name']}",
              title_justify="left")
    for c in ("policy", "views", "images/s", "single ÷ views", "ratio"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for name, xs in runs.items():
        ips, ideal = statistics.median(xs), single / views[name]
        t.add_row(name, str(views[name]), f"{ips:,.0f}", f"{ideal:,.0f}", f"{paired(name):.2f}x")
    Console().print(t)
    ratio = paired("ten-crop")
    print(f"ten-crop images/s = {ratio:.2f} x (single-view images/s / 10) (target >= 0.80): "
          f"{'PASS' if ratio >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
