"""`cnnlab eval`: the re-evaluated checkpoint."""
from __future__ import annotations

from typing import Any

from cnnlab.report.console import console, kv_table


def eval_summary(r: dict[str, Any]) -> None:
    console.print(kv_table(f"checkpoint {r['checkpoint']}", [
        ("test accuracy", f"{r['test_acc']:.2%}"), ("test loss", f"{r['test_loss']:.4f}"),
        ("test images", str(r["images"])), ("device", f"{r['device']['type']}: {r['device']['name']}, {r['precision']}"),
        ("written", r["written"])]))
