"""`cnnlab list` and `cnnlab cp`: a table per kind of part (or JSON for scripts)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console


def _param(p: dict[str, Any]) -> str:
    return f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")


def list_table(kind: str, rows: list[dict[str, Any]], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps({"kind": kind, "entries": rows}, indent=2, default=str))
        return
    t = Table(title=f"{kind} ({len(rows)})", title_justify="left", show_lines=False)
    if kind == "precisions":
        devices = list(rows[0]["runs"]) if rows else ["cpu"]
        t.add_column("trainer.precision")
        for d in devices:
            t.add_column(f"runs on {d}")
        for r in rows:
            t.add_row(r["name"], *(r["runs"][d] for d in devices))
    elif kind == "recipes":
        t.add_column("recipe")
        t.add_column("what it is")
        for r in rows:
            t.add_row(r["name"], r["description"])
    else:
        for col in ("name", "parameters (recipe keys)", "description"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], "\n".join(_param(p) for p in r["parameters"]) or "-", r["description"])
    console.print(t)


def kinds_table(kinds: dict[str, int]) -> None:
    t = Table(title="cnnlab list KIND [PATTERN]", title_justify="left")
    t.add_column("kind")
    t.add_column("entries", justify="right")
    for k, n in kinds.items():
        t.add_row(k, str(n))
    console.print(t)


def copied(path: Path) -> None:
    console.print(f"copied to {path}; edit it, then: cnnlab train {path}", highlight=False)
