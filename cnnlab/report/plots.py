"""PNG plots: matplotlib without a display, files written whole."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out_png: Path) -> None:
    """Lay out, write atomically and durably (a reader never sees half a PNG), close."""
    from cnnlab.io import atomic

    fig.tight_layout()
    try:
        with atomic(out_png) as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        pyplot().close(fig)
