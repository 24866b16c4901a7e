"""`cnnlab predict`: a progress bar of image files, the first rows of the CSV, and the summary."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.markup import escape
from rich.table import Table

from cnnlab.report.console import console, counted_progress, kv_table

SKIPPED_SHOWN = 10  # unreadable files listed by name; the rest counted (all of them are in the result)


@contextmanager
def image_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar of image files read and predicted; its value advances it by n files.
    Silent when the console is not a terminal (nothing to redraw in a log)."""
    from rich.progress import MofNCompleteColumn, TimeRemainingColumn

    with counted_progress(total, "predicting", MofNCompleteColumn(), TimeRemainingColumn()) as advance:
        yield advance


def predictions_table(r: dict[str, Any]) -> Table:
    """The first rows of the CSV: each image's most probable classes, and its label when a folder gave one."""
    shown = r["rows"]
    t = Table(title=f"predictions (the first {len(shown)} of {r['images']:,} rows of {r['written']})",
              title_justify="left")
    t.add_column("path", overflow="fold")
    for j in range(1, r["top"] + 1):
        t.add_column("class" if j == 1 else f"class_{j}", no_wrap=True)
        t.add_column("prob" if j == 1 else f"prob_{j}", justify="right", no_wrap=True)
    labelled = "label" in r["columns"]
    if labelled:
        t.add_column("label", no_wrap=True)
    for row in shown:
        cells = [escape(row["path"])] + [v for c, p in row["top"] for v in (escape(c), f"{p:.3f}")]
        if labelled:
            lab = row["label"]
            mark = "" if lab is None else " [green]✓[/]" if lab == row["top"][0][0] else " [red]✗[/]"
            cells.append("" if lab is None else escape(lab) + mark)
        t.add_row(*cells)
    return t


def predict_summary(r: dict[str, Any]) -> None:
    """The table of the first rows, then what was read, the accuracy (when folders gave labels),
    throughput, skipped files and where the CSV went."""
    console.print(predictions_table(r))
    views = f"{r['tta']} ({r['views']} views, {r['agg']})" if r["tta"] else "none (the single view)"
    top = f"{r['top']} of {r['classes']} classes ({r['top_note']})"
    rows = [("images", f"{r['images']:,} predicted of {r['files']:,} files"),
            ("read as", f"{r['reading']} -> {'x'.join(map(str, r['shape']))}, normalised with the run's statistics"),
            ("test-time augmentation", views), ("top", top)]
    if r["acc"] is not None:
        rows.append(("accuracy", f"{r['acc']:.2%} ({r['correct']:,} of {r['labelled']:,} files in class-named folders)"))
    else:
        rows.append(("accuracy", "not measured: no file is in a folder named after one of the run's classes"))
    if r["images_per_s"]:
        rows.append(("images/s", f"{r['images_per_s']:,.0f} (decode, predict and write; batches of {r['batch_size']})"))
    rows.append(("device", f"{r['device']['type']}: {r['device']['name']}, {r['precision']}"))
    if r["skipped"]:
        rows.append(("skipped", f"{len(r['skipped'])} unreadable file(s), left out (bad images: skip)"))
    rows.append(("written", r["written"]))
    console.print(kv_table(f"checkpoint {r['checkpoint']}", [(k, escape(v)) for k, v in rows]))
    for s in r["skipped"][:SKIPPED_SHOWN]:
        console.print(f"skipped {escape(s['file'])}: {escape(s['reason'])}", highlight=False)
    if len(r["skipped"]) > SKIPPED_SHOWN:
        console.print(f"... and {len(r['skipped']) - SKIPPED_SHOWN} more skipped", highlight=False)
