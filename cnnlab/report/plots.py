"""PNG plots: matplotlib without a display, files written whole."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out_png: Path) -> None:
    """Lay out, write under a temporary name and rename (a reader never sees half a PNG), close."""
    fig.tight_layout()
    tmp = Path(out_png).with_name(Path(out_png).name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(out_png)
    pyplot().close(fig)
