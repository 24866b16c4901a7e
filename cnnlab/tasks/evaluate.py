"""`cnnlab eval`: re-evaluate a run folder's (or a checkpoint file's) weights on the test split.
Any run folder cnnlab writes: `train` runs, `finetune` runs of every regime and a sweep's sub-runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.engine.assemble import per_class_acc
from cnnlab.engine.checkpoint import load
from cnnlab.engine.trainer import evaluator
from cnnlab.env import device_info, versions
from cnnlab.io import write_json


def run(path: Path, progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Test a checkpoint's network on the test split its run used; writes eval.json to `out`, or
    to `eval_path`'s place. Returns the results (and where they were written)."""
    c = load(path)
    t = evaluator(c.accelerator, c.precision, progress)
    tested = t.test(c.module, datamodule=c.data, verbose=False)[0]
    results = {
        "checkpoint": str(c.ckpt_path),
        "test_acc": tested["test/acc"],
        "test_loss": tested["test/loss"],
        "per_class_acc": per_class_acc(tested, c.data.test.classes),
        "images": len(c.data.test.labels),
        "precision": c.precision,
        "trained_with": {"accelerator": c.recipe.trainer.accelerator, "precision": c.recipe.trainer.precision},
        "device": device_info(t),
        "versions": versions(),
    }
    out = Path(out) if out is not None else eval_path(Path(path), c.ckpt_path)
    write_json(out, results)
    return {**results, "written": str(out)}


def eval_path(given: Path, ckpt_path: Path) -> Path:
    """Where eval.json goes: into the run folder given, or beside the checkpoint file given
    (`best.ckpt` -> `best.eval.json`)."""
    return given / "eval.json" if given.is_dir() else ckpt_path.with_name(f"{ckpt_path.stem}.eval.json")
