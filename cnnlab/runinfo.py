"""Evidence that travels with results: run folders, versions, device, peak memory, throughput."""
from __future__ import annotations

import csv
import json
import platform
import resource
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml


def quiet_lightning() -> None:
    """Keep the console for cnnlab's own output: no Lightning banners, tips or known-harmless warnings."""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # the run folder already holds recipe.yaml; the CSV logger only replaces its own metrics.csv
    # (whose earlier rows a resume puts back), so its "will be deleted" warning misleads
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """<out_dir>/<name>-<YYYYmmdd-HHMMSS>[-k], created empty; a folder that cannot be made is a
    user error naming output.dir."""
    from cnnlab.errors import UserError

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"output.dir: cannot make the run folder {path}: {e.strerror or e}") from None
    return path


def find_checkpoint(path: str | Path, key: str | None = None) -> Path:
    """A run folder's checkpoints/best.ckpt (else last.ckpt), or a .ckpt file itself. `key` names
    the recipe key the path came from, for the error message."""
    from cnnlab.errors import UserError

    p, at = Path(path), f"{key}: " if key else ""
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise UserError(f"{at}{p}: no checkpoints/best.ckpt or checkpoints/last.ckpt in this run folder")
    if not p.is_file():
        raise UserError(f"{at}file not found: {p} (expected a run folder or a checkpoint file)")
    return p


def write_recipe(run_dir: Path, recipe_dict: dict) -> None:
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict, sort_keys=False))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_metrics(path: Path, before_epoch: int) -> list[dict[str, str]]:
    """Rows of a Lightning metrics.csv logged before `before_epoch` (kept across a resume)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("epoch") and int(row["epoch"]) < before_epoch]


def prepend_metrics(path: Path, rows: list[dict[str, str]]) -> None:
    """Lightning's CSV logger starts metrics.csv afresh; put the rows from before a resume back."""
    if not rows:
        return
    with open(path, newline="") as f:
        new = list(csv.DictReader(f))
    keys = sorted(set().union(*rows, *new) - {"epoch", "step"})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step", *keys])
        w.writeheader()
        w.writerows(rows + new)


def versions() -> dict[str, str]:
    import torchvision

    import cnnlab

    return {"cnnlab": cnnlab.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pytorch_lightning": pl.__version__}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {"type": device.type, "name": cpu_name(), "threads": torch.get_num_threads()}


def peak_memory_mib(device: torch.device | str) -> dict[str, float]:
    out = {"host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.device(device).type == "cuda":
        out["device_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class Throughput(pl.Callback):
    """Training images per second, timed over training batches only (no validation, no set-up)."""

    def __init__(self) -> None:
        self.images, self.seconds, self._t0, self._last = 0, 0.0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0 = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        # validation runs before this hook: count up to the last training batch only
        self.seconds += self._last - self._t0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0
