"""`cnnlab predict`: a run's checkpoint applied to image files, folders or glob patterns, a CSV row per
image with its top-K classes; folders named after the run's classes give labels, and then accuracy.

Every file takes the path the run's own images took (`reading`): a photo run's files go through its
decoder (straight-to-size JPEG draft, EXIF orientation, channels, resize mode); a run on a built-in
source (fashion-mnist, digits, cifar10, packed) reads files at their own size in the source's channels
and resizes them through that source's resize (`cnnlab.data.sources.resize`) when the run had a
data.image_size. Then the rebuilt module normalises them with the run's statistics, as `cnnlab eval`
does. Files stream in batches: one batch is decoded at a time, predicted, and its rows written."""
from __future__ import annotations

import csv
import glob
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from cnnlab.data.images import Decode, UnreadableImage, read_image, workers
from cnnlab.data.sources import IMAGE_SUFFIXES, resize
from cnnlab.data.spec import DataSpec
from cnnlab.engine.checkpoint import Loaded, load
from cnnlab.engine.signals import interruptible
from cnnlab.engine.trainer import evaluator
from cnnlab.env import device_info, versions
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import atomic
from cnnlab.tta.policy import Policy, parse
from cnnlab.tta.run import BASELINE, Predictor, policies_for

DEFAULT_TOP = 3  # classes per image when --top is not given (fewer when the run has fewer classes)
SHOWN = 10  # rows the result keeps for the table; the CSV holds them all
BAD_IMAGES = ("error", "skip")
GLOB_CHARS = set("*?[")


@contextmanager
def _no_progress(total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


# --------------------------------------------------------------------------- the flags and the files


def check_flags(tta: str | None, top: int | None, batch_size: int, bad_images: str | None) -> None:
    """The flags that need no checkpoint, checked before anything is read (one line naming the flag)."""
    if top is not None and top < 1:
        raise UserError(f"--top {top}: must be at least 1 (classes per image, most probable first)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1 (image files decoded at a time)")
    if bad_images is not None and bad_images not in BAD_IMAGES:
        raise UserError(f"--bad-images {bad_images}: choose from {', '.join(BAD_IMAGES)}")
    if tta is not None:
        try:
            parse(tta)
        except (KeyError, ValueError) as e:
            raise UserError(f"--tta {tta}: {e.args[0] if e.args else e}") from None


def _image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively, by suffix): each folder's files by name, then its
    subfolders by name; hidden files and folders left out. (os.walk: a tenth of rglob's time on
    10,000 files.)"""
    found = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here, n) for n in sorted(names)
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return found


def find_images(given: list[str]) -> list[Path]:
    """The files IMAGES names, in order, each once: a file as it is (whatever its suffix: it was named),
    a folder's image files recursively, a glob pattern's matches (folders among them searched too).
    A name that matches nothing, or a folder or pattern without image files, is a UserError naming it."""
    if not given:
        raise UserError("missing IMAGES: give image files, folders or glob patterns: cnnlab predict RUN photos/")
    files: list[Path] = []
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    for g in given:
        p = Path(g)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = _image_files(p)
            if not found:
                raise UserError(f"IMAGES: no image files in the folder {p} (searched recursively for {suffixes})")
            files += found
        elif GLOB_CHARS & set(g):
            found = []
            for m in sorted(glob.glob(g, recursive=True)):
                m = Path(m)
                if m.is_dir():
                    found += _image_files(m)
                elif m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(m)
            if not found:
                raise UserError(f"IMAGES: the pattern {g} matches no image files ({suffixes})")
            files += found
        else:
            raise UserError(f"IMAGES: {g}: no such file or folder")
    return list(dict.fromkeys(files))


def label_of(path: Path, classes: list[str]) -> int | None:
    """The class of the nearest folder above `path` (in the path as given) named after one of the run's
    classes, or None. A class name with a '/' (Fashion-MNIST's 't-shirt/top') is matched by the folders
    it spells (t-shirt/top/) or by one folder with '_' for the '/' (t-shirt_top/)."""
    parts = path.parts[:-1]
    spans = sorted(((c.split("/"), i) for i, c in enumerate(classes)), key=lambda s: -len(s[0]))  # longest first
    alias = {c.replace("/", "_"): i for i, c in enumerate(classes) if "/" in c}
    for end in range(len(parts), 0, -1):
        for words, i in spans:
            if len(words) <= end and list(parts[end - len(words):end]) == words:
                return i
        if parts[end - 1] in alias:
            return alias[parts[end - 1]]
    return None


# --------------------------------------------------------------------------- the run's data path


@dataclass(frozen=True)
class Reading:
    """How one image file becomes the run's uint8 (C, H, W): decoded (`decode`, the image decoder of
    cnnlab.data.images), then resized through `sizes` in turn (cnnlab.data.sources.resize, as the
    source's images were), and at last to the run's own size if it is not there yet."""

    decode: Decode
    sizes: tuple[int, ...]
    shape: tuple[int, int, int]  # (C, H, W) the network was trained on
    how: str  # in words, for the summary


def reading(data: DataSpec, shape: tuple[int, int, int]) -> Reading:
    """The path the run's images took, for files: an imagefolder run's own decoding (its image_size,
    resize policy and channels; JPEG draft, EXIF orientation), or a built-in source's channels at the
    file's own size, resized as that source's images were (a pack made from image files: its decoding)."""
    C, H, W = shape
    if H != W:
        raise ValueError(f"cnnlab runs train on square images, got {H}x{W}")
    if data.source == "imagefolder":
        d = replace(data.decode(), cache_dir=None)  # files named here are not the run's: no cache entries
        return Reading(d, (), shape, f"{data.source}'s decoder: {d.size} px ({d.resize}), {d.channels} channel(s)")
    decode, sizes = Decode(size=None, channels=C), []
    if data.source == "packed":
        from cnnlab.pack import read_header

        h = read_header(Path(data.root))
        made = h.get("decode") or {}
        if h.get("source") == "imagefolder":  # the pack holds image files decoded at pack time
            decode = Decode(size=made.get("image_size"), resize=made.get("resize") or "shorter",
                            channels=made.get("channels") or 3)
        elif made.get("image_size"):
            sizes.append(made["image_size"])
    if data.image_size is not None:
        sizes.append(data.image_size)
    how = f"{data.source}: {C} channel(s) at the file's size" + (
        f", resized to {' then '.join(map(str, sizes))} px like the source's images" if sizes else "")
    return Reading(decode, tuple(sizes), shape, how)


def read_file(path: Path, r: Reading) -> Tensor | str:
    """The file as the run's uint8 (C, H, W), or why it cannot be read."""
    try:
        x, _ = read_image(path, r.decode)
    except UnreadableImage as e:
        return str(e)
    except OSError as e:  # gone or unreadable between listing and reading
        return f"cannot be read ({e.strerror or e})"
    for s in r.sizes:
        x = resize(x.unsqueeze(0), s)[0]
    if x.shape[-2:] != r.shape[-2:]:  # a file of another size than the source's: to the run's size, the same way
        x = resize(x.unsqueeze(0), r.shape[-1])[0]
    if x.shape != r.shape:
        raise ValueError(f"{path}: decoded to {tuple(x.shape)}, not the run's {r.shape}")
    return x


class FileBatches(IterableDataset):
    """Batches of decoded files: (uint8 (B, C, H, W), int64 (B,) positions in the file list). One batch
    is decoded at a time (in parallel threads); an unreadable file is a UserError (`bad_images`
    error) or recorded in `skipped` and left out (skip). `advance(n)` is told of every file taken."""

    def __init__(self, files: list[Path], r: Reading, batch_size: int, bad_images: str,
                 advance: Callable[[int], None] = lambda n: None):
        self.files, self.r, self.batch_size, self.bad_images, self.advance = files, r, batch_size, bad_images, advance
        self.skipped: list[dict[str, str]] = []

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        with ThreadPoolExecutor(max_workers=workers()) as pool:
            for start in range(0, len(self.files), self.batch_size):
                chunk = self.files[start:start + self.batch_size]
                xs, idx = [], []
                for i, got in enumerate(pool.map(lambda f: read_file(f, self.r), chunk), start):
                    if isinstance(got, str):
                        if self.bad_images == "error":
                            raise UserError(f"IMAGES: cannot read {self.files[i]}: {got}; fix or remove it, or "
                                            f"pass --bad-images skip to leave unreadable images out")
                        self.skipped.append({"file": str(self.files[i]), "reason": got})
                        continue
                    xs.append(got)
                    idx.append(i)
                self.advance(len(chunk))
                if xs:
                    yield torch.stack(xs), torch.tensor(idx, dtype=torch.int64)


# --------------------------------------------------------------------------- prediction


def header(k: int, with_label: bool) -> list[str]:
    """path, class, prob, class_2, prob_2, ..., class_K, prob_K[, label]."""
    cols = ["path", "class", "prob"] + [f"{w}_{j}" for j in range(2, k + 1) for w in ("class", "prob")]
    return cols + (["label"] if with_label else [])


class Rows(pl.Callback):
    """Writes each predicted batch's CSV rows as it comes (`writer`, set once the file is open; nothing
    kept but the first SHOWN rows and the counts): path, the top-K classes with their probabilities,
    and the label when a folder gives any file one."""

    def __init__(self, files: list[Path], labels: list[int | None], classes: list[str], policy: str, k: int):
        self.files, self.labels, self.classes, self.policy, self.k = files, labels, classes, policy, k
        self.with_label = any(lab is not None for lab in labels)
        self.columns = header(k, self.with_label)
        self.writer: Any = None
        self.predicted = self.labelled = self.correct = 0
        self.shown: list[dict[str, Any]] = []

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        scores, idx = outputs  # ({policy: (B, K) log-probabilities}, (B,) positions in the file list)
        prob, cls = scores[self.policy].double().exp().topk(self.k, dim=-1)  # sorted, most probable first
        for i, p, c in zip(idx.tolist(), prob.tolist(), cls.tolist()):
            label = self.labels[i]
            row = [str(self.files[i])] + [v for j in range(self.k) for v in (self.classes[c[j]], f"{p[j]:.6g}")]
            if self.with_label:
                row.append(self.classes[label] if label is not None else "")
            self.writer.writerow(row)
            self.predicted += 1
            if label is not None:
                self.labelled += 1
                self.correct += int(c[0] == label)
            if len(self.shown) < SHOWN:
                self.shown.append({"path": str(self.files[i]), "top": [(self.classes[c[j]], p[j]) for j in range(self.k)],
                                   "label": self.classes[label] if label is not None else None})


def predictions_path(given: Path, ckpt_path: Path) -> Path:
    """Where the CSV goes: into the run folder given, or beside the checkpoint file given
    (`best.ckpt` -> `best.predictions.csv`), as `cnnlab eval`'s eval.json."""
    return given / "predictions.csv" if given.is_dir() else ckpt_path.with_name(f"{ckpt_path.stem}.predictions.csv")


def choose_top(top: int | None, n_classes: int) -> int:
    """--top, or DEFAULT_TOP (all classes when the run has fewer); more than the run's classes is refused."""
    if top is None:
        return min(DEFAULT_TOP, n_classes)
    if top > n_classes:
        raise UserError(f"--top {top}: the run has {n_classes} classes; choose 1..{n_classes}")
    return top


def labels_for(files: list[Path], classes: list[str]) -> list[int | None]:
    """Each file's label (`label_of`), found once per folder: the label is the folder's."""
    by_folder: dict[Path, int | None] = {}
    for f in files:
        if f.parent not in by_folder:
            by_folder[f.parent] = label_of(f, classes)
    return [by_folder[f.parent] for f in files]


def tta_policy(tta: str | None, c: Loaded, shape: tuple[int, int, int]) -> Policy:
    """--tta's policy with the run's eval.views parameters (the single view without --tta), run once on
    an image of the run's shape, so a view that does not fit it is refused before any work."""
    try:
        return policies_for([tta] if tta else [], c.recipe.eval, torch.zeros(1, *shape, dtype=torch.uint8))[-1]
    except (KeyError, ValueError) as e:
        raise UserError(f"--tta {tta}: {e.args[0] if e.args else e}") from None


def run(path: Path, images: list[str], *, tta: str | None = None, top: int | None = None, out: Path | None = None,
        batch_size: int = 256, bad_images: str | None = None,
        progress: Callable[[int], ContextManager[Callable[[int], None]]] = _no_progress) -> dict[str, Any]:
    """Predict every image file `images` names with the checkpoint of `path` (a run folder or .ckpt):
    a CSV at `out` (default: `predictions_path`), written atomically (an error or a stop leaves
    nothing). `progress(total files)` is a context whose value is told how many files were just read.
    Returns the summary: counts, accuracy on the labelled files, skipped files, the first rows."""
    check_flags(tta, top, batch_size, bad_images)
    files = find_images(list(images))
    c = load(Path(path))
    classes = list(c.data.test.classes)
    k = choose_top(top, len(classes))
    shape = tuple(c.data.test.shape[1:])
    r = reading(c.recipe.data, shape)
    policy = tta_policy(tta, c, shape)
    labels = labels_for(files, classes)
    out = Path(out) if out is not None else predictions_path(Path(path), c.ckpt_path)
    if not out.parent.is_dir():
        raise UserError(f"--out: the folder {out.parent} does not exist")
    policy_bad = bad_images or c.recipe.data.bad_images
    predictor = Predictor(c.module, [policy], c.recipe.eval.agg, c.recipe.eval.chunk or c.recipe.data.batch_size)
    t = evaluator(c.accelerator, c.precision, progress=False)
    rows = Rows(files, labels, classes, policy.name, k)
    batches = FileBatches(files, r, batch_size, policy_bad)
    t.callbacks.append(rows)
    t0 = time.perf_counter()
    try:
        with interruptible("predicting"), atomic(out, "w", newline="") as f, progress(len(files)) as advance:
            rows.writer, batches.advance = csv.writer(f), advance
            rows.writer.writerow(rows.columns)
            t.predict(predictor, dataloaders=DataLoader(batches, batch_size=None), return_predictions=False)
            if rows.predicted == 0:
                raise UserError(f"IMAGES: none of the {len(files)} files could be read (e.g. "
                                f"{batches.skipped[0]['file']}: {batches.skipped[0]['reason']}); nothing written")
    except Interrupted as e:
        raise e.kept(f"nothing was written at {out}") from None
    seconds = time.perf_counter() - t0
    return {
        "checkpoint": str(c.ckpt_path), "written": str(out), "files": len(files), "images": rows.predicted,
        "skipped": batches.skipped, "bad_images": policy_bad, "classes": len(classes), "top": k,
        "top_note": f"the default: {DEFAULT_TOP}, or every class when fewer" if top is None else "--top",
        "tta": None if policy.name == BASELINE else policy.name, "views": policy.views,
        "agg": c.recipe.eval.agg, "labelled": rows.labelled, "correct": rows.correct,
        "acc": rows.correct / rows.labelled if rows.labelled else None, "reading": r.how,
        "shape": list(shape), "batch_size": batch_size, "seconds": seconds,
        "images_per_s": rows.predicted / seconds if seconds > 0 else None,
        "forward_s": predictor.seconds[policy.name], "rows": rows.shown, "columns": rows.columns,
        "precision": c.precision, "device": device_info(t), "versions": versions(),
    }
