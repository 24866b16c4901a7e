"""Recipe sections: the `Spec` base every feature's section derives from, and the core training
sections (optim, schedule, trainer, output).

A section validates its own keys (pydantic, non-finite floats refused) and may add three checks,
each returning problems as (key path inside the section, message):
  builder_calls  keys that feed a registered builder (model:, augment.ops), checked against its signature
  cross_checks   keys each valid alone but not together, the same on every machine
  preflight      what this machine must offer (a CUDA device, a writable folder); only the command
                 about to run asks, never a recipe read back from a checkpoint
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cnnlab.registry import Registry, did_you_mean

Loc = tuple[str | int, ...]  # a key path, e.g. ("sweep", "sizes", 1)
Problem = tuple[Loc, str]
BuilderCall = tuple[Loc, Registry, Any, dict]  # (key path, registry, name, keyword arguments)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def builder_calls(cls, raw: dict) -> list[BuilderCall]:
        """Registered builders this section feeds, read from its raw mapping (which may not validate)."""
        return []

    def cross_checks(self) -> list[Problem]:
        return []

    def preflight(self) -> list[Problem]:
        return []


def known(registry: Registry, name: str) -> str:
    """`name` if `registry` has it; else its did-you-mean message, as a validation error."""
    try:
        registry.get(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return name


class DivergenceSpec(Spec):
    """A training loss that stays finite but has left any sensible range stops the run, as a
    non-finite one does (exit 3, the last state before it left the range saved)."""

    loss_above: float = Field(10.0, gt=1)  # times ln(classes): the loss of a uniform guess
    steps: int = Field(20, ge=1)  # consecutive training steps above it


class OptimSpec(Spec):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = True  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    weight_decay: float = Field(5e-4, ge=0)  # applied to conv/linear weights, not to norms or biases
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy target smoothing
    # on by default; null turns it off (for a command that drives the loss up on purpose)
    divergence: DivergenceSpec | None = Field(default_factory=DivergenceSpec)


class ScheduleSpec(Spec):
    """Learning rate as a fraction of `optim.lr`, stepped every batch."""

    name: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0)  # linear ramp from 0 to the peak (epochs, fractional ok)
    final_frac: float = Field(0.0, ge=0, le=1)  # onecycle/cosine: end lr as a fraction of the peak
    step_epochs: int = Field(10, ge=1)  # step: multiply by gamma every this many epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
CUDA_ONLY_PRECISIONS = ("16-mixed", "16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn")  # the Lightning strategies cnnlab's tests run
# pytorch_lightning's StrategyRegistry names, so that a recipe is checked without importing Lightning
# (6 s); tests/test_recipe.py compares this set with the installed Lightning's registry
LIGHTNING_STRATEGIES = frozenset({
    "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "ddp_fork",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "ddp_notebook",
    "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true", "ddp_spawn",
    "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true", "deepspeed", "deepspeed_stage_1",
    "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device", "single_tpu", "single_xla", "xla",
    "xla_debug"})


class TrainerSpec(Spec):
    """Arguments of `pytorch_lightning.Trainer`, under the same names (plus `channels_last`), limited
    to the values cnnlab runs: whatever passes here, the Trainer accepts."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"  # devices per node; >1 uses the strategy below
    num_nodes: int = Field(1, ge=1)  # machines, each running `devices` processes (torchrun / SLURM start them)
    strategy: str = "auto"  # auto | ddp | ddp_spawn
    precision: Literal[PRECISIONS] = "32-true"  # type: ignore[valid-type]
    max_epochs: int = Field(3, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)  # clip the global grad norm to this
    deterministic: bool = False  # deterministic kernels (resumed runs then match exactly)
    limit_train_batches: float | int = 1.0  # per epoch: a fraction (float, (0, 1]) or a count (int, >= 1)
    limit_val_batches: float | int = 1.0  # the same; 0 = no validation
    log_every_n_steps: int = Field(20, ge=1)
    channels_last: bool = True  # NHWC memory format for images and conv weights (faster oneDNN/cuDNN kernels)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a number of devices >= 1, or auto; got {v}")
        return v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v in STRATEGIES:
            return v
        if v in LIGHTNING_STRATEGIES:
            raise ValueError(f"'{v}' is a Lightning strategy cnnlab does not run; choose from {', '.join(STRATEGIES)}")
        raise ValueError(f"'{v}' is not a Lightning strategy{did_you_mean(v, list(STRATEGIES))}; "
                         f"choose from {', '.join(STRATEGIES)}")

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batches(cls, v: float | int, info: ValidationInfo) -> float | int:
        least = 0 if info.field_name == "limit_val_batches" else 1
        if isinstance(v, float) and not (0 < v <= 1 or v == least == 0):
            span = "[0, 1]" if least == 0 else "(0, 1]"
            raise ValueError(f"a float is a fraction of the epoch's batches, in {span}; got {v} (an int counts batches)")
        if isinstance(v, int) and v < least:
            raise ValueError(f"a number of batches must be >= {least}, got {v}")
        return v

    def trainer_args(self) -> dict[str, Any]:
        """The keys that are `pytorch_lightning.Trainer` arguments, by name (all but channels_last)."""
        return self.model_dump(exclude={"channels_last"})

    def cross_checks(self) -> list[Problem]:
        if self.accelerator == "cpu" and self.precision in CUDA_ONLY_PRECISIONS:
            return [(("precision",), _cpu_precision(self.precision))]
        return []

    def preflight(self) -> list[Problem]:
        """This machine has the accelerator, the device count and the precision asked for."""
        import torch

        has_cuda, has_mps = torch.cuda.is_available(), torch.backends.mps.is_available()
        out: list[Problem] = []
        if self.accelerator in ("gpu", "cuda") and not has_cuda:
            out.append((("accelerator",), f"'{self.accelerator}' needs a CUDA device and none is visible; use cpu or auto"))
        if self.accelerator == "mps" and not has_mps:
            out.append((("accelerator",), "'mps' needs an Apple GPU and none is visible; use cpu or auto"))
        if self.accelerator == "auto":
            if not has_cuda and not has_mps and self.precision in CUDA_ONLY_PRECISIONS:
                out.append((("precision",), _cpu_precision(self.precision)))
        on_cuda = has_cuda and self.accelerator in ("auto", "gpu", "cuda")
        if on_cuda and isinstance(self.devices, int) and self.devices > torch.cuda.device_count():
            out.append((("devices",), f"{self.devices} CUDA devices asked for, {torch.cuda.device_count()} visible"))
        if on_cuda and self.precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
            out.append((("precision",), f"'{self.precision}': this CUDA device has no native bfloat16 (only emulated, far slower); use 16-mixed or 32-true"))
        return out


def _cpu_precision(precision: str) -> str:
    ok = [p for p in PRECISIONS if p not in CUDA_ONLY_PRECISIONS]
    return f"'{precision}' needs a CUDA device; on cpu choose from {', '.join(ok)}"


TRACKERS = ("csv", "tensorboard", "mlflow")
# each tracker beyond metrics.csv, and the packages that can run it (any one of them): TensorBoardLogger
# writes with tensorboard or tensorboardX; the track extra installs both trackers
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def missing_trackers(names: list[str]) -> list[str]:
    """The trackers among `names` whose package is not installed. Asked of importlib's finders, never
    by importing the package: mlflow alone takes seconds to import, and recipe checks stay fast."""
    return [n for n in names if n in TRACKER_PACKAGES and not any(_installed(p) for p in TRACKER_PACKAGES[n])]


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec: not usable either
        return False


def tracker_problem(missing: list[str]) -> str:
    """One line for the trackers that cannot run here, naming the extra that installs them."""
    names = " and ".join(repr(n) for n in missing)
    needs = "needs" if len(missing) == 1 else "need"
    why = " (TensorBoardLogger writes with tensorboard or tensorboardX)" if missing == ["tensorboard"] else ""
    return f"{names} {needs} the track extra{why}: pip install 'cnnlab[track]'"


class OutputSpec(Spec):
    dir: str = "runs"  # run folders go to <dir>/<name>-<timestamp>/
    name: str | None = None  # a folder name; None = the recipe file's name
    plots: bool = True  # write curves.png
    # experiment trackers beside metrics.csv, which always stays (cnnlab reads it): csv | tensorboard | mlflow
    loggers: list[Literal[TRACKERS]] = Field(default_factory=lambda: ["csv"])  # type: ignore[valid-type]
    mlflow_uri: str | None = None  # None = the SQLite store <dir>/mlflow.db (artifacts in <dir>/mlartifacts)
    mlflow_experiment: str | None = None  # None = `name`, else "cnnlab"

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, v: list[str]) -> list[str]:
        twice = sorted({n for n in v if v.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(repr, twice))} given twice; list each tracker once: "
                             f"[{', '.join(dict.fromkeys(v))}]")
        if "csv" not in v:
            raise ValueError("csv must stay in the list (cnnlab's run folder reads metrics.csv); add trackers "
                             f"beside it, e.g. [{', '.join(['csv', *v])}]")
        return v

    @field_validator("mlflow_uri", "mlflow_experiment")
    @classmethod
    def _not_blank(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not v.strip():
            what = ("an MLflow tracking URI (sqlite:///path/mlflow.db, http://host:5000)" if info.field_name == "mlflow_uri"
                    else "an MLflow experiment name")
            raise ValueError(f"{what}, or null for the default; got {v!r}")
        return v

    @field_validator("dir")
    @classmethod
    def _path(cls, v: str) -> str:
        if "\0" in v:
            raise ValueError("a folder path cannot hold a NUL character")
        return v

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str | None) -> str | None:
        if v is not None and (v in ("", ".", "..") or any(c in v for c in "/\\\0")):
            raise ValueError(f"a folder name (no '/'), got {v!r}")
        return v

    def preflight(self) -> list[Problem]:
        """Run folders can be made under `dir` (its nearest existing ancestor is a writable folder), and
        the trackers asked for are installed. Nothing is created here."""
        missing = missing_trackers(self.loggers)
        return self._dir_problems() + ([(("loggers",), tracker_problem(missing))] if missing else [])

    def _dir_problems(self) -> list[Problem]:
        here = Path(self.dir)
        try:
            while not here.exists() and here != here.parent:
                here = here.parent
            if not here.is_dir():
                return [(("dir",), f"cannot make run folders in {self.dir}: {here} is a file, not a folder")]
            if not os.access(here, os.W_OK | os.X_OK):
                return [(("dir",), f"cannot make run folders in {self.dir}: {here} is not writable")]
        except OSError as e:
            return [(("dir",), f"cannot make run folders in {self.dir}: {e.strerror or e}")]
        return []


class Training(Protocol):
    """What training reads of a recipe (`cnnlab.recipe.Recipe` is one): the core sections, the seed,
    and the whole recipe as plain data for checkpoints."""

    optim: OptimSpec
    schedule: ScheduleSpec
    trainer: TrainerSpec
    seed: int

    def dump(self) -> dict[str, Any]: ...
