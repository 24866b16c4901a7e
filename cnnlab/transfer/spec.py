"""The `finetune:` section of a recipe (read by `cnnlab finetune` only)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from cnnlab.registry import did_you_mean
from cnnlab.spec import Problem, Spec, known
from cnnlab.transfer.backbones import BACKBONES
from cnnlab.transfer.probe import GRID
from cnnlab.transfer.regimes import REGIMES


class SweepSpec(Spec):
    """`cnnlab finetune --sweep`: every regime at every size, for the lecture's little/lots columns."""

    sizes: list[Annotated[int, Field(ge=1)] | Literal["all"]] = [10, 200]  # training images per class (data.subset), ascending; all = every image
    max_epochs: list[Annotated[int, Field(ge=1)]] = [30, 6]  # trainer.max_epochs at each size
    regimes: list[str] = ["linear", "top", "stages", "full", "lp-ft", "scratch"]  # what each size runs

    @field_validator("regimes")
    @classmethod
    def _known_regimes(cls, v: list[str]) -> list[str]:
        return [known(REGIMES, r) for r in v]

    def cross_checks(self) -> list[Problem]:
        out: list[Problem] = []
        if len(self.sizes) != len(self.max_epochs):
            out.append((("max_epochs",), f"one entry per size: {len(self.sizes)} sizes {self.sizes}, "
                                          f"{len(self.max_epochs)} epochs {self.max_epochs}"))
        counts = [float("inf") if n == "all" else n for n in self.sizes]
        if counts != sorted(set(counts)):
            out.append((("sizes",), f"must be distinct and ascending, got {self.sizes}"))
        return out


class FinetuneSpec(Spec):
    """Transfer learning: a pretrained backbone, a fresh linear head, and what to freeze."""

    backbone: str = "efficientnet-lite0"  # efficientnet-lite0 | cnnlab | torchvision:<name>
    weights: str | None = None  # weights file (cnnlab: run folder or .ckpt); None = the backbone's default
    regime: str = "auto"  # linear | top | stages | full | lp-ft | scratch | auto (see cnnlab/transfer/regimes.py)
    top_k: int = Field(1, ge=1)  # top: how many of the last stages train
    stages: list[int] | None = None  # stages: which stage taps the head reads (negative = from the end); None = all
    freeze_epochs: int = Field(0, ge=0)  # top/full: epochs that train the head alone before the stages join
    backbone_lr_mult: float = Field(0.1, gt=0)  # top/full: the top trained stage's lr, as a fraction of optim.lr
    layer_decay: float = Field(1.0, gt=0, le=1)  # top/full: each stage lower trains this much slower again
    similar: bool | None = None  # auto: is the data like the backbone's? None = measure it (linear probe per stage)
    similar_tolerance: float = Field(0.0, ge=0, le=1)  # auto: similar if the top stage's probe is this close to the best
    probe_per_class: int = Field(50, ge=2)  # auto: training images per class the stage probes see (at most)
    lots_from: int = Field(100, ge=1)  # auto: training images per class from which the data counts as 'lots'
    cache_dir: str | None = ".cache/features"  # frozen-backbone features (linear, stages, lp-ft's probe); None = no cache
    probe: Literal["solver", "sgd"] = "solver"  # heads on cached features: exact logistic regression (solver) or optim's loop (sgd)
    probe_C: list[Annotated[float, Field(gt=0)]] = list(GRID)  # solver: the inverse L2 strengths cross-validated (scikit-learn's C)
    probe_folds: int = Field(5, ge=2)  # solver: stratified folds (fewer when the rarest class has fewer images)
    sweep: SweepSpec = SweepSpec()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        return known(BACKBONES, v)

    @field_validator("stages")
    @classmethod
    def _distinct_stages(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"each stage at most once, got {v}" if v else "name at least one stage (null = all)")
        return v

    @field_validator("regime")
    @classmethod
    def _known_regime(cls, v: str) -> str:
        choices = [*REGIMES, "auto"]
        if v not in choices:
            raise ValueError(f"'{v}' is not a fine-tuning regime{did_you_mean(v, choices)}; choose from {', '.join(choices)}")
        return v

    def cross_checks(self) -> list[Problem]:
        out = [(("sweep", *loc), msg) for loc, msg in self.sweep.cross_checks()]
        if self.backbone == "cnnlab" and self.weights is None:
            out.append((("weights",), "backbone cnnlab needs a run folder or checkpoint of `cnnlab train`"))
        return out
