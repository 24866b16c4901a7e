"""The data report at the start of a run."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from cnnlab.report.console import console


def data_summary(d: dict[str, Any]) -> None:
    """The data report at the start of a run: one line, and for image files a table per class."""
    n = {k: sum(v.values()) for k, v in d["splits"].items()}
    files = d.get("files")
    how = (f"; {files['decoded']} files {'from the cache' if files['cached'] else 'decoded'} in {d['load_s']:.1f} s, "
           f"originals {files['smallest'][0]}x{files['smallest'][1]} to {files['largest'][0]}x{files['largest'][1]} px, "
           f"resize {files['resize']}") if files else f"; loaded in {d['load_s']:.1f} s"
    console.print(f"data: {d['source']}, {'x'.join(map(str, d['shape']))}, train {n['train']} / val {n['val']} / "
                  f"test {n['test']}{how}", highlight=False)
    if files:
        t = Table(title="images per class", title_justify="left")
        for col in ("class", "train", "val", "test"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for c in d["splits"]["train"]:
            t.add_row(c, *(str(d["splits"][s][c]) for s in ("train", "val", "test")))
        console.print(t)
    if d["skipped"]:
        console.print(f"skipped {len(d['skipped'])} unreadable file(s), e.g. {d['skipped'][0]['file']}: "
                      f"{d['skipped'][0]['reason']}", style="yellow", highlight=False)
    for w in d["warnings"]:
        console.print(f"warning: {w}", style="yellow", highlight=False)
