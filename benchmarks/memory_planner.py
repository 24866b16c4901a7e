"""The memory planner against the machine: predicted peak of one training step (cnnlab.profile's
counts: parameters, gradients, optimizer state, saved activations, transient gradients, kernel
scratch, the batch) vs the peak measured over a real step (CPU: the profiler's memory events; CUDA:
max_memory_allocated), per model and batch size; then what activation checkpointing of every stage
saves, measured vs predicted. The step is cnnlab's: Lightning's order (forward, zero_grad, backward,
step), the recipes' SGD (momentum 0.9, Nesterov, weight decay), cross-entropy, channels_last like
the Classifier (--contiguous for NCHW). Every measured number is the median of --repeat steps.

    python benchmarks/memory_planner.py [--device cpu|cuda] [--repeat 3] [--contiguous]
Targets: predicted / measured within 0.90-1.10; checkpointing's measured drop within 20% of the predicted.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F

from cnnlab.engine.optim import build_optimizer
from cnnlab.models import build_model
from cnnlab.models.checkpointing import checkpoint_stages, stage_names
from cnnlab.profile.memory import checkpoint_saving, measure_peak_cpu, measure_peak_cuda, per_layer, predict_peak, train_step
from cnnlab.spec import OptimSpec

CASES = [  # (model, input shape (C, H, W), batch sizes)
    ("vgg-small", (1, 28, 28), (32, 128)),
    ("torchvision:resnet18", (3, 64, 64), (8, 32)),
]
MB = 2**20


def measured(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, repeat: int) -> int:
    """Median peak bytes of one training step (after a warm-up step), a fresh optimizer each time."""
    peaks = []
    for _ in range(repeat):
        opt = build_optimizer(list(net.named_parameters()), OptimSpec())
        step = lambda: train_step(net, x, y, F.cross_entropy, opt)  # noqa: E731
        if device.type == "cuda":
            peaks.append(measure_peak_cuda(step, device)[0])
        else:
            peaks.append(measure_peak_cpu(step, net, opt, x, y)[0])
        for p in net.parameters():
            p.grad = None
    return int(statistics.median(peaks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    args = ap.parse_args()
    device = torch.device(args.device)
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, memory format {fmt}, "
          f"median of {args.repeat} steps; MiB")
    print(f"{'model':21} {'batch':>5} {'predicted':>9} {'measured':>8} {'ratio':>6} {'1st model':>9} {'acts/img':>8} | "
          f"{'ckpt pred':>9} {'measured':>8} {'ratio':>6} | {'drop pred':>9} {'(simple)':>8} {'measured':>8} {'ratio':>6}")
    for name, shape, batches in CASES:
        for bs in batches:
            torch.manual_seed(0)
            net = build_model(name, shape[0], 10).to(device, memory_format=fmt).train()
            x = torch.randn(bs, *shape, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (bs,), device=device)
            report = per_layer(net, x, y, F.cross_entropy, lambda ps: build_optimizer(ps, OptimSpec()))
            stages = stage_names(net)
            pred, pred_ckpt = predict_peak(report), predict_peak(report, checkpointed=stages)
            saving = checkpoint_saving(report, stages)
            plain = measured(net, x, y, device, args.repeat)
            ckpt = measured(checkpoint_stages(copy.deepcopy(net), name), x, y, device, args.repeat)
            drop = plain - ckpt
            print(f"{name:21} {bs:5d} {pred['total'] / MB:9.1f} {plain / MB:8.1f} {pred['total'] / plain:6.3f} "
                  f"{pred['upper_bound'] / plain:9.3f} {report.per_image_activation_bytes / MB:8.3f} | "
                  f"{pred_ckpt['total'] / MB:9.1f} {ckpt / MB:8.1f} {pred_ckpt['total'] / ckpt:6.3f} | "
                  f"{saving['walk'] / MB:9.1f} {saving['simple'] / MB:8.1f} {drop / MB:8.1f} {drop / saving['walk']:6.3f}")
    print("ratio = predicted / measured; 1st model = the sum of every part (upper_bound) / measured; "
          "drop ratio = measured / predicted (walk)")


if __name__ == "__main__":
    main()
