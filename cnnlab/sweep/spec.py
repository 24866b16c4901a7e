"""The `sweep:` and `launcher:` sections of a recipe (read by `cnnlab sweep` and `train --sweep`)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from cnnlab.errors import UserError
from cnnlab.spec import Problem, Spec
from cnnlab.sweep.grid import check_values, reserved

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class SweepSpec(Spec):
    """The cells of a sweep: named variants (each a list of overrides written as for --set) and/or a
    grid of recipe keys, crossed; every cell trains once per seed. The first cell is the baseline
    that differences and speeds are measured against."""

    seeds: list[Seed] = Field([0, 1], min_length=1)  # every cell trains once per seed (--seeds N: 0 to N-1)
    variants: dict[str, list[str]] | None = Field(None, min_length=1)  # name -> ["optim.lr=0.01", ...]; [] overrides nothing
    grid: dict[str, list[Any]] | None = Field(None, min_length=1)  # recipe key -> its values, e.g. {optim.lr: [0.05, 0.1]}

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    def cross_checks(self) -> list[Problem]:
        out: list[Problem] = []
        for name, overrides in (self.variants or {}).items():
            if not name.strip() or any(c in name for c in "/\\\0"):
                out.append((("variants", name), "a variant name is a non-empty label without '/' (it names run folders)"))
            for i, item in enumerate(overrides):
                key = item.partition("=")[0].strip()
                if reserved(key):
                    out.append((("variants", name, i), f"{key}: a variant cannot set seed (sweep.seeds does), sweep, "
                                                       "output or launcher"))
        for key, values in (self.grid or {}).items():
            try:
                check_values(key, values, "grid")
            except UserError as e:
                out.append((("grid", key), str(e).removeprefix("grid: ")))
        return out


class LauncherSpec(Spec):
    """Where a sweep's cells run: side by side in processes on this machine (local), or as jobs
    through submitit (Slurm where `sbatch` exists, else submitit's local executor). The Slurm keys
    are submitit's; only `cnnlab sweep` reads this section."""

    name: Literal["local", "submitit"] = "local"
    jobs: int | Literal["auto"] = "auto"  # cells at once; auto: see docs/sweeps.md (one per core on a CPU)
    threads: int | Literal["auto"] = "auto"  # torch threads per cell; auto: cores // jobs
    partition: str | None = None  # Slurm partition (submitit's slurm_partition)
    gpus_per_job: int = Field(0, ge=0)  # GPUs per cell's job (submitit's gpus_per_node)
    cpus_per_job: int | None = Field(None, ge=1)  # CPUs per cell's job; None: the threads per cell
    timeout_min: int = Field(60, ge=1)  # wall-clock limit per cell's job, minutes
    mem_gb: float | None = Field(None, gt=0)  # memory per cell's job (Slurm), GB
    slurm_args: dict[str, str] = {}  # any other sbatch option, e.g. {account: mylab, qos: high}

    @field_validator("jobs", "threads")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a number >= 1, or auto; got {v}")
        return v
