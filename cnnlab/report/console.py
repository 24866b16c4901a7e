"""The console every renderer prints to, error lines, key-value tables and transient progress."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # a log file or a pipe: wide tables stay on one line per row
    console.width = max(console.width, 120)


def error(message: str) -> None:
    """One error line on stderr; the message is text, not markup (a `[pretrained]` in it stays)."""
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t


@contextmanager
def counted_progress(total: int, description: str, *columns: Any) -> Iterator[Callable[[int], None]]:
    """A transient progress bar of `total` units with `columns` after the bar; its value advances it
    by n units. Silent when the console is not a terminal (nothing to redraw in a log)."""
    from rich.progress import BarColumn, Progress

    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress("{task.description}", BarColumn(), *columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def byte_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar of bytes written; its value advances it by n bytes."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    with counted_progress(total, "writing", DownloadColumn(), TransferSpeedColumn()) as advance:
        yield advance


@contextmanager
def status() -> Iterator[Callable[[str], None]]:
    """A transient status line (spinner); its value sets the text."""
    if not console.is_terminal:
        yield lambda text: None
        return
    with console.status("starting") as s:
        yield lambda text: s.update(text)


def at_chance(r: dict[str, Any]) -> None:
    """The warning line of a run whose test accuracy is no better than a uniform guess."""
    c = r.get("chance")
    if c and c["at_chance"]:
        console.print(f"[yellow]warning:[/] test accuracy {r['test_acc']:.2%} is at chance level (a uniform guess scores "
                      f"{c['guess_acc']:.2%}): the model learned nothing usable; look at the loss in metrics.csv "
                      f"(a learning rate too high collapses a model onto one class)", highlight=False)
