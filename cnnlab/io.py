"""Files a run writes and reads: atomic writes, run folders, the checkpoint finder, and the one
reader of metrics.csv."""
from __future__ import annotations

import csv
import errno
import itertools
import json
import os
import secrets
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

from cnnlab.errors import UserError


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename inside it survives a crash (where the OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised while handling (torch.save turns the OSError into a
    RuntimeError of its own), is a full disk or quota."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@contextmanager
def atomic(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """A file written under a temporary name unique to this writer (process and call), fsynced, then
    renamed over `path`: a reader, a second writer or a crash sees the old file or the whole new
    one, never part of one. If writing fails (a full disk, an interruption) the temporary is removed
    and `path` is left as it was; a full disk is a one-line error naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _disk_full(e):
            raise UserError(f"{path}: the disk is full; nothing was half-written, the previous file (if any) "
                            f"is kept") from None
        raise
    _sync_folder(path.parent)


def write_text(path: Path, text: str) -> None:
    """Written atomically and durably (`atomic`)."""
    with atomic(path, "w") as f:
        f.write(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_recipe(run_dir: Path, recipe_dict: dict) -> None:
    import yaml

    write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe_dict, sort_keys=False))


def save_tensors(path: Path, data: dict) -> None:
    """torch.save, atomically and durably (`atomic`): a cache file or checkpoint is whole or absent,
    even with two runs filling the same cache at once."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as f:
        torch.save(data, f)


class Refused(ValueError):
    """A file `load_tensors` will not load, with the reason in a user's terms (`str(e)`)."""


def load_tensors(path: str | Path) -> Any:
    """A torch file's content, loaded safely: plain tensors and containers only, never an object
    that would run code when unpickled. torch's own warnings (pickle protocols) are not shown, and a
    refusal is `Refused` with the reason in the user's terms, never torch's advice to load it
    unsafely: holds Python objects, truncated or damaged, empty, or not a torch file."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if head.startswith(b"\x80") or "Unsupported global" in str(e):  # a pickle, of more than tensors
            raise Refused("holds Python objects that a safe load refuses: cnnlab never runs code from a file") from None
        raise Refused("is not a torch file") from None
    except EOFError:
        raise Refused("is empty" if not head else "is truncated") from None
    except (RuntimeError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        if head.startswith(b"PK"):  # torch's zip format, cut short or damaged
            raise Refused("is truncated or damaged (not a whole torch file)") from None
        raise Refused(f"is not a torch file ({type(e).__name__})") from None


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """<out_dir>/<name>-<YYYYmmdd-HHMMSS>[-k], created empty (call it on global rank 0 only); a
    folder that cannot be made is a user error naming output.dir."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{name}-{stamp}"
    for k in itertools.count():
        path = base if k == 0 else Path(f"{base}-{k}")
        try:  # the mkdir is the claim: of any number of runs starting at once, one gets each name
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"output.dir: cannot make the run folder {path}: {e.strerror or e}") from None
    raise AssertionError("unreachable")


def find_checkpoint(path: str | Path, key: str | None = None) -> Path:
    """A run folder's checkpoints/best.ckpt (else last.ckpt), or a .ckpt file itself. `key` names
    the recipe key the path came from, for the error message."""
    p, at = Path(path), f"{key}: " if key else ""
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise UserError(f"{at}{p}: no checkpoints/best.ckpt or checkpoints/last.ckpt in this run folder")
    if not p.is_file():
        raise UserError(f"{at}file not found: {p} (expected a run folder or a checkpoint file)")
    return p


def last_checkpoint(run_dir: Path) -> Path:
    """checkpoints/last.ckpt of a run folder, the one a resumed run continues from."""
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise UserError(f"--resume: no checkpoints/last.ckpt in {run_dir}")
    return ckpt


def read_metrics(path: Path, before_epoch: int | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.csv (those logged before `before_epoch`, when given), values as floats
    (epoch and step as ints); empty cells are left out of a row."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k in ("epoch", "step") else float(v)) for k, v in row.items() if v}
                for row in csv.DictReader(f) if row.get("epoch")]
    return [r for r in rows if before_epoch is None or r["epoch"] < before_epoch]


def epoch_metrics(path: Path) -> dict[str, dict[int, float]]:
    """metric name -> {epoch: value}, epoch-level values only (per-step ones are left out)."""
    out: dict[str, dict[int, float]] = {}
    for r in read_metrics(path):
        for k, v in r.items():
            if k not in ("epoch", "step") and not k.endswith("_step"):
                out.setdefault(k.removesuffix("_epoch"), {})[r["epoch"]] = v
    return out


def best_metric(path: Path, key: str) -> float | None:
    """The largest value `key` reached in a metrics.csv (e.g. the best validation accuracy)."""
    values = [r[key] for r in read_metrics(path) if key in r]
    return max(values) if values else None


def epochs_logged(path: Path) -> int:
    """Training epochs a metrics.csv holds (across a resume, too)."""
    return len({r["epoch"] for r in read_metrics(path) if "train/loss" in r})
