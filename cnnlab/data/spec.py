"""The `data:` section of a recipe."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cnnlab.data.images import Decode
from cnnlab.data.sources import SOURCES
from cnnlab.spec import Problem, Spec, known


class DataSpec(Spec):
    """Where the images come from and how the splits are cut."""

    source: str = "fashion-mnist"  # a data source name: fashion-mnist, digits, imagefolder, cifar10, packed
    root: str | None = None  # folder holding the files (packed: the .cnnpack file); None = the source's default location
    classes: list[int] | None = None  # keep only these class ids, relabelled 0..k-1 in this order
    subset: int | None = Field(None, ge=1)  # training images per class (seeded draw); None = all
    test_subset: int | None = Field(None, ge=1)  # test images per class; None = all
    val_split: float = Field(0.1, ge=0.0, lt=1.0)  # fraction of training images held out
    image_size: int | None = Field(None, ge=4)  # resize to this square size (px); None = native
    batch_size: int = Field(256, ge=1)  # images per step, all processes together (each takes batch_size / processes)
    num_workers: int = Field(0, ge=0)  # DataLoader workers (0: in-memory batches, fastest here)
    bad_images: Literal["error", "skip"] = "error"  # imagefolder: an unreadable image file stops the run, or is left out and listed
    resize: Literal["shorter", "longer", "stretch"] | None = None  # imagefolder: shorter (default) side to image_size + centre crop; longer + pad; stretch
    channels: Literal[1, 3] | None = None  # imagefolder: 3 = RGB (default), 1 = luma
    cache_dir: str | None = ".cache/images"  # imagefolder: decoded tensors, beside .cache/features; None = decode every run
    placement: Literal["host", "device"] = "host"  # host: batches cut in (pinned) host memory and copied each step; device: the whole uint8 set on the accelerator once, when it fits

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return known(SOURCES, v)

    def decode(self) -> Decode:
        """How an image-file source decodes: straight to image_size, by the resize policy."""
        return Decode(size=self.image_size, resize=self.resize or "shorter", channels=self.channels or 3,
                      cache_dir=self.cache_dir)

    def cross_checks(self) -> list[Problem]:
        out: list[Problem] = []
        if self.source == "imagefolder" and self.image_size is None:
            out.append((("image_size",), "imagefolder needs an image_size (images are resized to a square)"))
        for key in ("resize", "channels"):
            if getattr(self, key) is not None and self.source != "imagefolder":
                out.append(((key,), f"applies to image files (source imagefolder); {self.source} images come at a fixed size and channel count"))
        if self.source == "packed" and self.root is None:
            out.append((("root",), "the packed source reads a .cnnpack file: set data.root to it (`cnnlab pack SRC OUT.cnnpack` writes one)"))
        if self.placement == "device" and self.num_workers > 0:
            out.append((("num_workers",), f"placement device cuts batches on the accelerator in this process; use num_workers 0 (got {self.num_workers})"))
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            out.append((("classes",), f"class ids must be distinct, got {self.classes}"))
        return out


def placement_checks(data: DataSpec, augment: Any) -> list[Problem]:
    """Across sections (key paths from the recipe's top): data on the device is augmented there."""
    if data.placement == "device" and augment.ops and augment.where == "loader":
        return [(("augment", "where"), "data.placement device keeps the images on the accelerator and augments "
                                       "them there: use augment.where device (loader augments per image on the host)")]
    return []
