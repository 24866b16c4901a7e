"""Augmentation throughput, side by side in one process: shift + hflip + crop + colour jitter on
real Fashion-MNIST batches of 512, as cnnlab's batched device-mode ops vs the same ops as
torchvision transforms.v2 per sample in a 2-worker DataLoader vs a plain copy of the same bytes.

    python benchmarks/augment_throughput.py [--batches 40] [--repeats 5]
Target: device mode >= 25x the loader's images/s.
"""
from __future__ import annotations

import argparse

from cnnlab import recipe as rc
from cnnlab.augment import build_pipeline
from cnnlab.bench.augment import bench
from cnnlab.data import ImageDataModule
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.report.augment import bench_table

OPS = "[{name: shift, max_px: 2}, {name: hflip}, {name: crop, padding: 2}, {name: color_jitter, brightness: 0.3, contrast: 0.3}]"


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40, help="batches of 512 per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    r = rc.load("recipes/augment_fmnist.yaml", [f"augment.ops={OPS}", "data.subset=null"])
    data = ImageDataModule(r.data, seed=r.seed)
    data.setup("fit")
    b = bench(r, data, build_pipeline(r.augment.ops, data.train.images), batch_size=512, batches=args.batches,
              repeats=args.repeats)
    bench_table(b)
    print(f"device/loader = {b['device_over_loader']:.1f}x (target >= 25x); "
          f"device/copy = {b['device_over_copy']:.2f}x of the memory-copy ceiling")


if __name__ == "__main__":
    main()
