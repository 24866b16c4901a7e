"""Recipes: YAML -> typed specs, validated up front, every problem reported at once.

Keys are exactly the parameters of what they feed: `optim: {name: sgd, lr: 0.2}` -> `OptimSpec`,
`model: {name: vgg-small, widths: [32, 64]}` -> `vgg_small(widths=...)`. Registered builders are
checked against their own signatures, so a misspelled keyword is an error, never silently ignored.
"""
from __future__ import annotations

import copy
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from cnnlab.errors import UserError
from cnnlab.registry import Registry, did_you_mean

Path_ = tuple[str | int, ...]


class RecipeError(UserError):
    """A user error in a recipe or an override: a list of (key path, line, message)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {source}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Spec):
    """Where the images come from and how the splits are cut."""

    source: str = "fashion-mnist"  # a data source name: fashion-mnist, digits, imagefolder, cifar10
    root: str | None = None  # folder holding the files; None = the source's default location
    classes: list[int] | None = None  # keep only these class ids, relabelled 0..k-1 in this order
    subset: int | None = Field(None, ge=1)  # training images per class (seeded draw); None = all
    test_subset: int | None = Field(None, ge=1)  # test images per class; None = all
    val_split: float = Field(0.1, ge=0.0, lt=1.0)  # fraction of training images held out
    image_size: int | None = Field(None, ge=4)  # resize to this square size (px); None = native
    batch_size: int = Field(256, ge=1)  # images per step, per device
    num_workers: int = Field(0, ge=0)  # DataLoader workers (0: in-memory batches, fastest here)
    bad_images: Literal["error", "skip"] = "error"  # imagefolder: an unreadable image file stops the run, or is left out and listed

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from cnnlab.data.sources import SOURCES

        return _known(SOURCES, v)


class ModelSpec(BaseModel):
    """`name` picks a registered model; every other key is that builder's keyword argument."""

    model_config = ConfigDict(extra="allow")
    name: str = "vgg-small"

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from cnnlab.models import MODELS

        return _known(MODELS, v)

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AugmentSpec(Spec):
    """Training-time augmentation: a list of ops, each `{name: op, <op parameters>}`."""

    where: Literal["device", "loader"] = "device"  # device: batched on the training device
    ops: list[dict[str, Any]] = []


class OptimSpec(Spec):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = True  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    weight_decay: float = Field(5e-4, ge=0)  # applied to conv/linear weights, not to norms or biases
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy target smoothing


class ScheduleSpec(Spec):
    """Learning rate as a fraction of `optim.lr`, stepped every batch."""

    name: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0)  # linear ramp from 0 to the peak (epochs, fractional ok)
    final_frac: float = Field(0.0, ge=0, le=1)  # onecycle/cosine: end lr as a fraction of the peak
    step_epochs: int = Field(10, ge=1)  # step: multiply by gamma every this many epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
CUDA_ONLY_PRECISIONS = ("16-mixed", "16-true")


class TrainerSpec(Spec):
    """Arguments of `pytorch_lightning.Trainer`, under the same names (plus `channels_last`)."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"  # devices per node; >1 uses the strategy below
    strategy: str = "auto"  # a Lightning strategy name: auto, ddp, ddp_spawn, fsdp, ...
    precision: Literal[PRECISIONS] = "32-true"  # type: ignore[valid-type]
    max_epochs: int = Field(3, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)  # clip the global grad norm to this
    deterministic: bool = False  # deterministic kernels (resumed runs then match exactly)
    limit_train_batches: float | int = Field(1.0, gt=0)  # fraction (float) or count (int) per epoch
    limit_val_batches: float | int = Field(1.0, ge=0)
    log_every_n_steps: int = Field(20, ge=1)
    channels_last: bool = True  # NHWC memory format for images and conv weights (faster oneDNN/cuDNN kernels)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from pytorch_lightning.strategies import StrategyRegistry

        choices = ["auto", *sorted(StrategyRegistry.available_strategies())]
        if v not in choices:
            raise ValueError(
                f"'{v}' is not a Lightning strategy{did_you_mean(v, choices)}; choose from "
                + ", ".join(choices)
            )
        return v


class OutputSpec(Spec):
    dir: str = "runs"  # run folders go to <dir>/<name>-<timestamp>/
    name: str | None = None  # None = the recipe file's name
    plots: bool = True  # write curves.png


class SweepSpec(Spec):
    """`cnnlab finetune --sweep`: every regime at every size, for the lecture's little/lots columns."""

    sizes: list[Annotated[int, Field(ge=1)] | Literal["all"]] = [10, 200]  # training images per class (data.subset), ascending; all = every image
    max_epochs: list[Annotated[int, Field(ge=1)]] = [30, 6]  # trainer.max_epochs at each size
    regimes: list[str] = ["linear", "top", "stages", "full", "scratch"]  # what each size runs

    @field_validator("regimes")
    @classmethod
    def _known_regimes(cls, v: list[str]) -> list[str]:
        from cnnlab.transfer import REGIMES

        return [_known(REGIMES, r) for r in v]


class FinetuneSpec(Spec):
    """Transfer learning: a pretrained backbone, a fresh linear head, and what to freeze."""

    backbone: str = "efficientnet-lite0"  # efficientnet-lite0 | cnnlab | torchvision:<name>
    weights: str | None = None  # weights file (cnnlab: run folder or .ckpt); None = the backbone's default
    regime: str = "auto"  # linear | top | stages | full | scratch | auto (see cnnlab/transfer/regimes.py)
    top_k: int = Field(1, ge=1)  # top: how many of the last stages train
    stages: list[int] | None = None  # stages: which stage taps the head reads (negative = from the end); None = all
    freeze_epochs: int = Field(0, ge=0)  # top/full: epochs that train the head alone before the stages join
    backbone_lr_mult: float = Field(0.1, gt=0)  # top/full: the top trained stage's lr, as a fraction of optim.lr
    layer_decay: float = Field(1.0, gt=0, le=1)  # top/full: each stage lower trains this much slower again
    similar: bool | None = None  # auto: is the data like the backbone's? None = measure it (linear probe per stage)
    similar_tolerance: float = Field(0.0, ge=0, le=1)  # auto: similar if the top stage's probe is this close to the best
    probe_per_class: int = Field(50, ge=2)  # auto: training images per class the stage probes see (at most)
    lots_from: int = Field(100, ge=1)  # auto: training images per class from which the data counts as 'lots'
    cache_dir: str | None = ".cache/features"  # frozen-backbone features (linear, stages); None = no cache
    sweep: SweepSpec = SweepSpec()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from cnnlab.transfer import BACKBONES

        return _known(BACKBONES, v)

    @field_validator("stages")
    @classmethod
    def _distinct_stages(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"each stage at most once, got {v}" if v else "name at least one stage (null = all)")
        return v

    @field_validator("regime")
    @classmethod
    def _known_regime(cls, v: str) -> str:
        from cnnlab.transfer import REGIMES

        choices = [*REGIMES, "auto"]
        if v not in choices:
            raise ValueError(f"'{v}' is not a fine-tuning regime{did_you_mean(v, choices)}; choose from {', '.join(choices)}")
        return v


class Recipe(Spec):
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    augment: AugmentSpec = AugmentSpec()
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    trainer: TrainerSpec = TrainerSpec()
    output: OutputSpec = OutputSpec()
    finetune: FinetuneSpec | None = None  # only `cnnlab finetune` reads it
    seed: int = 0

    def dump(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what `recipe.yaml` in a run folder holds)."""
        return self.model_dump(mode="json")


def _known(registry: Registry, name: str) -> str:
    try:
        registry.get(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return name


# --------------------------------------------------------------------------- builder kwargs


@functools.lru_cache(maxsize=None)
def signature_model(fn: Callable, skip: frozenset[str]) -> type[BaseModel]:
    """A pydantic model of `fn`'s keyword parameters (minus `skip`), so recipe keys are checked
    against the function they feed: types, constraints (`Annotated[int, Field(ge=0)]`), names."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(
        f"{fn.__name__}_kwargs", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )


def check_kwargs(fn: Callable, kwargs: dict[str, Any], skip: frozenset[str]) -> dict[str, Any]:
    """Validated keyword arguments for `fn`; raises pydantic's ValidationError."""
    model = signature_model(fn, skip)
    return dict(model.model_validate(kwargs))


# --------------------------------------------------------------------------- loading


def _line_map(node: yaml.Node, prefix: Path_ = ()) -> dict[Path_, int]:
    """Key path -> 1-based YAML line of that key (or sequence item)."""
    lines: dict[Path_, int] = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            lines.update(_line_map(v, path))
            lines[path] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_line_map(v, prefix + (i,)))
    return lines


def _present(raw: Any, loc: Path_) -> Path_:
    """The longest prefix of `loc` that exists in the raw data (drops pydantic's union tags)."""
    out: list[str | int] = []
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            if isinstance(cur, dict) and isinstance(part, str) and not out[-1:] == [part]:
                out.append(part)  # a missing required key: still name it
            break
        out.append(part)
    return tuple(out)


def _fmt_path(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(err: dict, allowed_keys: list[str]) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"unknown key{did_you_mean(key, allowed_keys)}; allowed: {', '.join(allowed_keys)}"
    if kind == "literal_error":
        choices = [c.strip(" '") for c in ctx.get("expected", "").replace(" or ", ", ").split(",")]
        return f"{value!r} is not allowed{did_you_mean(str(value), choices)}; choose from {', '.join(choices)}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.startswith(("value_error", "assertion_error")):
        return msg
    return f"{msg[0].lower()}{msg[1:]}, got {value!r}"


def _fields_at(model: type[BaseModel], loc: Path_) -> list[str]:
    """Allowed keys of the spec that `loc`'s parent points into."""
    cur: Any = model
    for part in loc[:-1]:
        field = cur.model_fields.get(part) if isinstance(part, str) and hasattr(cur, "model_fields") else None
        if field is None:
            return []
        cur = field.annotation
        cur = next((a for a in typing.get_args(cur) if hasattr(a, "model_fields")), cur)  # `Spec | None`
    return list(getattr(cur, "model_fields", {}))


def _problems(err: ValidationError, raw: dict, root: type[BaseModel]) -> dict[Path_, list[str]]:
    found: dict[Path_, list[str]] = {}
    for e in err.errors():
        path = _present(raw, tuple(e["loc"]))
        msg = _describe(e, _fields_at(root, tuple(e["loc"])))
        if msg not in found.setdefault(path, []):
            found[path].append(msg)
    return found


def _kwarg_problems(raw: dict) -> dict[Path_, list[str]]:
    """Check `model:` and `augment.ops[i]` keys against the registered builders' signatures."""
    from cnnlab.augment import OPS, op_skip
    from cnnlab.models import MODELS, MODEL_SKIP

    found: dict[Path_, list[str]] = {}
    calls: list[tuple[Path_, Registry, Callable[[Callable], frozenset[str]], Any]] = []
    model = raw.get("model")
    if isinstance(model, dict):
        calls.append((("model",), MODELS, lambda fn: MODEL_SKIP, model))
    ops = (raw.get("augment") or {}).get("ops") if isinstance(raw.get("augment"), dict) else None
    if isinstance(ops, list):
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or "name" not in op:
                found[("augment", "ops", i)] = ["each op must be a mapping with a 'name' key, e.g. {name: hflip}"]
                continue
            calls.append((("augment", "ops", i), OPS, op_skip, op))
    for path, registry, skip_of, d in calls:
        try:
            fn = registry.get(d.get("name", "vgg-small"))
        except (KeyError, TypeError) as e:
            if path[0] != "model":  # the model name is already reported by ModelSpec
                found.setdefault(path + ("name",), []).append(str(e.args[0]))
            continue
        skip = skip_of(fn)
        kwargs = {k: v for k, v in d.items() if k != "name"}
        try:
            check_kwargs(fn, kwargs, skip)
        except ValidationError as err:
            allowed = sorted(signature_model(fn, skip).model_fields)
            for e in err.errors():
                loc = path + tuple(e["loc"])
                found.setdefault(_present(raw, loc), []).append(_describe(e, allowed))
    return found


def validate(raw: Any, source: str, lines: dict[Path_, int] | None = None) -> Recipe:
    """Raw mapping -> Recipe, or RecipeError listing every problem (key path, line, message)."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise RecipeError(source, [f"<top level>: a recipe is a mapping of sections, got {type(raw).__name__}"])
    found: dict[Path_, list[str]] = {}
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        found.update(_problems(err, raw, Recipe))
    for path, msgs in _kwarg_problems(raw).items():
        found.setdefault(path, []).extend(m for m in msgs if m not in found.get(path, []))
    for path, msg in _cross_checks(raw):
        found.setdefault(path, []).append(msg)
    if found:
        problems = []
        for path, msgs in sorted(found.items(), key=lambda kv: _line_key(_line_of(kv[0], lines))):
            where = _line_of(path, lines)
            at = f" (line {where})" if isinstance(where, int) else f" ({where})" if where else ""
            problems.append(f"{_fmt_path(path)}{at}: {'; or '.join(msgs)}")
        raise RecipeError(source, problems)
    return recipe  # type: ignore[return-value]


def _line_of(path: Path_, lines: dict[Path_, Any]) -> Any:
    """The line of `path`, or of its nearest ancestor that has one (e.g. a whole list set by --set)."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _line_key(line: Any) -> tuple[int, int]:
    return (0, line) if isinstance(line, int) else (1, 0)


def _section(raw: dict, name: str, spec: type[Spec]) -> Any:
    """One section validated on its own (None if it has problems, which are reported already)."""
    try:
        return spec.model_validate(raw.get(name) or {})
    except ValidationError:
        return None


def _cross_checks(raw: dict) -> list[tuple[Path_, str]]:
    """Combinations each valid alone but not together, on this machine; per valid section, so they
    are reported alongside any other problem."""
    import torch

    out: list[tuple[Path_, str]] = []
    t = _section(raw, "trainer", TrainerSpec)
    if t is not None:
        has_cuda = torch.cuda.is_available()
        if t.accelerator in ("gpu", "cuda") and not has_cuda:
            out.append((("trainer", "accelerator"),
                        f"'{t.accelerator}' needs a CUDA device and none is visible; use cpu or auto"))
        on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not has_cuda
                                            and not torch.backends.mps.is_available())
        if on_cpu and t.precision in CUDA_ONLY_PRECISIONS:
            ok = [p for p in PRECISIONS if p not in CUDA_ONLY_PRECISIONS]
            out.append((("trainer", "precision"),
                        f"'{t.precision}' needs a CUDA device; on cpu choose from {', '.join(ok)}"))
    d = _section(raw, "data", DataSpec)
    if d is not None:
        if d.source == "imagefolder" and d.image_size is None:
            out.append((("data", "image_size"), "imagefolder needs an image_size (images are resized to a square)"))
        if d.classes is not None and len(set(d.classes)) != len(d.classes):
            out.append((("data", "classes"), f"class ids must be distinct, got {d.classes}"))
    f = _section(raw, "finetune", FinetuneSpec) if isinstance(raw.get("finetune"), dict) else None
    if f is not None:
        s = f.sweep
        if len(s.sizes) != len(s.max_epochs):
            out.append((("finetune", "sweep", "max_epochs"),
                        f"one entry per size: {len(s.sizes)} sizes {s.sizes}, {len(s.max_epochs)} epochs {s.max_epochs}"))
        counts = [float("inf") if n == "all" else n for n in s.sizes]
        if counts != sorted(set(counts)):
            out.append((("finetune", "sweep", "sizes"), f"must be distinct and ascending, got {s.sizes}"))
        if f.backbone == "cnnlab" and f.weights is None:
            out.append((("finetune", "weights"), "backbone cnnlab needs a run folder or checkpoint of `cnnlab train`"))
    return out


def apply_overrides(raw: dict, overrides: list[str], lines: dict[Path_, int]) -> list[str]:
    """Apply `a.b.c=value` overrides in place (values parsed as YAML); returns problems."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        cur: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = cur.get(part) if isinstance(cur, dict) else (cur[part] if isinstance(cur, list) and isinstance(part, int) and part < len(cur) else None)
            if nxt is None and isinstance(cur, dict):
                nxt = cur[part] = {}
            if not isinstance(nxt, (dict, list)):
                problems.append(f"--set {key}: '{_fmt_path(tuple(parts[: i + 1]))}' is not a section")
                break
            cur = nxt
        else:
            last = parts[-1]
            if isinstance(cur, list) and isinstance(last, int) and last < len(cur):
                cur[last] = value
            elif isinstance(cur, dict):
                cur[last] = value
            else:
                problems.append(f"--set {key}: no such list item")
                continue
            key_path = tuple(parts)
            for stale in [p for p in lines if p[: len(key_path)] == key_path]:
                del lines[stale]  # the file's lines for what the override replaced (e.g. a list's items)
            lines[key_path] = "--set"  # type: ignore[assignment]
    return problems


def load(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Recipe:
    """Read a recipe file (or start from `base`), apply overrides, validate. Raises RecipeError."""
    source = str(path) if path is not None else "--set overrides"
    lines: dict[Path_, int] = {}
    if base is not None:
        raw = copy.deepcopy(base)
    elif path is None:
        raw = {}
    else:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(source, [f"recipe file not found: {p}"])
        text = p.read_text()
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            raise RecipeError(source, [f"{at}not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
        raw = {} if raw is None else raw
        if node is not None:
            lines = _line_map(node)
    if isinstance(raw, dict):
        problems = apply_overrides(raw, list(overrides), lines)
        if problems:
            raise RecipeError(source, problems)
    recipe = validate(raw, source, lines)
    if recipe.output.name is None and path is not None:
        recipe.output.name = Path(path).stem
    return recipe
