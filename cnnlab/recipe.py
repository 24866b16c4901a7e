"""Recipes: YAML -> typed sections, validated up front, every problem reported at once.

A recipe is one field per section, and each section belongs to the feature it feeds
(`data:` -> cnnlab/data/spec.py, `model:` -> cnnlab/models/spec.py, ...): keys are exactly the
parameters of what they feed, and a section that feeds registered builders names them, so a
misspelled keyword is an error, never silently ignored. This module only composes the sections,
reads YAML (lines of every key, duplicate keys refused), applies --set overrides and turns every
problem into `key.path (line N): message`. Machine checks (a CUDA device, a writable output
folder) run only when the command about to run asks for them (`preflight=True`).
"""
from __future__ import annotations

import copy
import functools
import reprlib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from cnnlab import shipped
from cnnlab.augment.spec import AugmentSpec
from cnnlab.data.spec import DataSpec, placement_checks
from cnnlab.errors import UserError
from cnnlab.models.spec import ModelSpec
from cnnlab.precision.spec import Optim, recipe_checks
from cnnlab.registry import did_you_mean
from cnnlab.spec import OutputSpec, ScheduleSpec, Spec, TrainerSpec
from cnnlab.sweep.spec import LauncherSpec, SweepSpec
from cnnlab.transfer.spec import FinetuneSpec
from cnnlab.tta.spec import EvalSpec

Path_ = tuple[Any, ...]  # a key path from the top: ("optim", "lr"), ("augment", "ops", 0, "p")


class RecipeError(UserError):
    """A user error in a recipe or an override: a list of (key path, line, message)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {source}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class Recipe(Spec):
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    augment: AugmentSpec = AugmentSpec()
    optim: Optim = Optim()  # the core optimizer keys, and optim.weights (cnnlab/precision)
    schedule: ScheduleSpec = ScheduleSpec()
    trainer: TrainerSpec = TrainerSpec()
    output: OutputSpec = OutputSpec()
    finetune: FinetuneSpec | None = None  # only `cnnlab finetune` reads it
    eval: EvalSpec = EvalSpec()  # test-time augmentation after training, and eval-tta's defaults
    sweep: SweepSpec | None = None  # only `cnnlab sweep` and `train --sweep` read it: variants x grid x seeds
    launcher: LauncherSpec = LauncherSpec()  # only `cnnlab sweep` reads it: where and how many cells at once
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's (and so Lightning's) seed range

    def dump(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what `recipe.yaml` in a run folder holds)."""
        return self.model_dump(mode="json")


@functools.lru_cache(maxsize=None)
def _sections() -> dict[str, tuple[type[Spec], bool]]:
    """Section name -> (spec class, always present: absent means its defaults, not 'none')."""
    out = {}
    for name, field in Recipe.model_fields.items():
        spec = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                     if isinstance(a, type) and issubclass(a, Spec)), None)
        if spec is not None:
            out[name] = (spec, field.default is not None)
    return out


# --------------------------------------------------------------------------- YAML

MAX_DEPTH = 32  # nesting levels (aliases expanded); a recipe needs four
MAX_VALUES = 100_000  # keys and values (aliases expanded); a recipe has a few hundred


class _Refused(yaml.YAMLError):
    """Valid YAML that no recipe could be (too deep, too large, a key given twice), as problems."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _refuse(node_or_mark: Any, why: str) -> _Refused:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return _Refused([f"line {mark.line + 1}: {why}"])


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load` that also keeps the line of every key path, refuses a key given twice in one
    mapping (YAML would silently keep the later one), and bounds depth and size, so that no file
    can make loading recurse without end or expand a few lines of aliases into billions of values."""

    def __init__(self, text: str):
        super().__init__(text)
        self.lines: dict[Path_, int] = {}
        self.duplicates: list[tuple[int, str]] = []  # (line, problem)
        self._depth = 0
        self._paths: dict[int, Path_] = {}  # id(mapping node) -> its key path
        self._values = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _refuse(self.peek_event(), f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def map_lines(self, node: yaml.Node, path: Path_ = ()) -> None:
        """Key path -> 1-based line of that key (or sequence item), aliases followed."""
        self._values += 1
        if self._values > MAX_VALUES:
            raise _refuse(node, f"more than {MAX_VALUES:,} values (aliases expanded)")
        if len(path) > MAX_DEPTH:
            raise _refuse(node, f"nested more than {MAX_DEPTH} levels deep (aliases expanded)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._paths.setdefault(id(node), path)
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    self.map_lines(v, path + (k.value,))
                    self.lines[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.map_lines(v, path + (i,))

    def construct_object(self, node, deep=False):
        if not isinstance(node, yaml.ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as e:
            # PyYAML's scalar constructors raise whatever Python does on a bad value under an explicit tag
            # or an impossible date (!!int abc: ValueError, `!!float ` empty: IndexError, 2020-13-45: ValueError)
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}: {e}", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for k, _ in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of its own is YAML's override, not a repeat
                key = self.construct_object(k, deep=True)
                try:
                    seen = first.setdefault(key, k)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if seen is not k:
                    where, line = _fmt_path(self._paths.get(id(node), ()) + (key,)), k.start_mark.line + 1
                    self.duplicates.append((line, f"{where} (line {line}): given twice, also on line "
                                                  f"{seen.start_mark.line + 1}; keep one (YAML would silently keep the later)"))
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> tuple[Any, dict[Path_, int], yaml.Node | None]:
    """(data, key path -> line, root node or None for an empty document). Raises yaml.YAMLError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, None
        loader.map_lines(node)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    if loader.duplicates:
        raise _Refused([problem for _, problem in sorted(loader.duplicates)])
    return data, loader.lines, node


def _yaml_problems(e: yaml.YAMLError, text: str) -> list[str]:
    if isinstance(e, _Refused):
        return e.problems
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        at = f"line {mark.line + 1}: "
    elif isinstance(getattr(e, "position", None), int):  # a ReaderError: a character YAML does not allow
        at = f"line {text[:e.position].count(chr(10)) + 1}: "
    else:
        at = ""
    why = getattr(e, "problem", None) or str(e).splitlines()[0]
    return [f"{at}not valid YAML: {why}"]


# --------------------------------------------------------------------------- problems

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 60, 60, 3


def _show(value: Any) -> str:
    """repr, cut short: a value in a message is one line, however large it is."""
    return _short.repr(value)


def _present(raw: Any, loc: Path_) -> Path_:
    """The longest prefix of `loc` that exists in the raw data (drops pydantic's union tags)."""
    out: list[Any] = []
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and _has(cur, part):
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            if isinstance(cur, dict) and isinstance(part, str) and not out[-1:] == [part]:
                out.append(part)  # a missing required key: still name it
            break
        out.append(part)
    return tuple(out)


def _has(d: dict, key: Any) -> bool:
    try:
        return key in d
    except TypeError:
        return False


def _fmt_path(path: Path_) -> str:
    parts = [str(p) if len(str(p)) <= 40 else str(p)[:37] + "..." for p in path]
    return ".".join(parts).replace("\n", "\\n") or "<top level>"


def _describe(err: dict, allowed_keys: list[str]) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"unknown key{did_you_mean(key, allowed_keys)}; allowed: {', '.join(allowed_keys)}"
    if kind == "literal_error":
        choices = [c.strip(" '") for c in ctx.get("expected", "").replace(" or ", ", ").split(",")]
        return f"{_show(value)} is not allowed{did_you_mean(str(value), choices)}; choose from {', '.join(choices)}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind.startswith(("value_error", "assertion_error")):
        return msg
    return f"{msg[0].lower()}{msg[1:]}, got {_show(value)}"


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


def _add(found: dict[Path_, list[str]], path: Path_, msg: str) -> None:
    if msg not in found.setdefault(path, []):
        found[path].append(msg)


def _schema_problems(err: ValidationError, raw: dict, root: type[BaseModel], found: dict[Path_, list[str]]) -> None:
    for e in err.errors():
        _add(found, _present(raw, tuple(e["loc"])), _describe(e, _fields_at(root, tuple(e["loc"]))))


def _builder_problems(raw: dict, found: dict[Path_, list[str]]) -> None:
    """Keys that feed registered builders (model:, augment.ops), against each builder's signature."""
    for name, (spec, _) in _sections().items():
        section = raw.get(name)
        if not isinstance(section, dict):
            continue
        for loc, registry, part_name, kwargs in spec.builder_calls(section):
            path = (name, *loc)
            try:
                part = registry.get(part_name)
            except KeyError as e:
                if not found.get(path + ("name",)):  # a section's own name check may have said so already
                    _add(found, path + ("name",), str(e.args[0]))
                continue
            try:
                registry.check_kwargs(part, kwargs)
            except ValidationError as err:
                allowed = sorted(registry.signature(part).model_fields)
                for e in err.errors():
                    _add(found, _present(raw, path + tuple(e["loc"])), _describe(e, allowed))


def _section_checks(raw: dict, preflight: bool, found: dict[Path_, list[str]]) -> None:
    """Each section that validates on its own adds its cross checks (and its pre-flight checks of
    this machine), so they are reported alongside every other problem."""
    for name, (spec, always) in _sections().items():
        section = raw.get(name)
        if section is None and not always:
            continue
        try:
            s = spec.model_validate(section or {})
        except ValidationError:
            continue  # reported already
        for loc, msg in s.cross_checks() + (s.preflight() if preflight else []):
            _add(found, (name, *loc), msg)


def validate(raw: Any, source: str, lines: dict[Path_, int] | None = None, preflight: bool = False) -> Recipe:
    """Raw mapping -> Recipe, or RecipeError listing every problem (key path, line, message).
    `preflight`: also check that this machine can run it (for the command about to run)."""
    lines = lines or {}
    if not isinstance(raw, dict):
        got = "null" if raw is None else type(raw).__name__
        raise RecipeError(source, [f"<top level>: a recipe is a mapping of sections, got {got}"])
    found: dict[Path_, list[str]] = {}
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        _schema_problems(err, raw, Recipe, found)
    _builder_problems(raw, found)
    _section_checks(raw, preflight, found)
    if recipe is not None:  # across sections
        for loc, msg in recipe_checks(recipe.optim, recipe.trainer, recipe.finetune) + placement_checks(recipe.data, recipe.augment):
            _add(found, loc, msg)
        if recipe.sweep is not None and not found:
            _variant_problems(raw, recipe.sweep, preflight, found)
    if found:
        problems = []
        for path, msgs in sorted(found.items(), key=lambda kv: _line_key(_line_of(kv[0], lines))):
            where = _line_of(path, lines)
            at = f" (line {where})" if isinstance(where, int) else f" ({where})" if where else ""
            problems.append(f"{_fmt_path(path)}{at}: {'; or '.join(msgs)}")
        raise RecipeError(source, problems)
    return recipe  # type: ignore[return-value]


def _variant_problems(raw: dict, sweep: SweepSpec, preflight: bool, found: dict[Path_, list[str]]) -> None:
    """Each sweep variant is the recipe with its overrides: it must validate too, so that a typo
    in the last variant stops the sweep before the first run."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for name, overrides in (sweep.variants or {}).items():
        try:
            load(None, overrides + [f"seed={s}" for s in sweep.seeds[:1]], base=base, preflight=preflight)
        except RecipeError as e:
            for problem in e.problems:
                _add(found, ("sweep", "variants", name), problem.strip())


def _line_of(path: Path_, lines: dict[Path_, Any]) -> Any:
    """The line of `path`, or of its nearest ancestor that has one (e.g. a whole list set by --set)."""
    for n in range(len(path), 0, -1):
        try:
            if path[:n] in lines:
                return lines[path[:n]]
        except TypeError:  # an unhashable part: no line of its own
            continue
    return None


def _line_key(line: Any) -> tuple[int, int]:
    return (0, line) if isinstance(line, int) else (1, 0)


# --------------------------------------------------------------------------- loading


def apply_overrides(raw: dict, overrides: list[str], lines: dict[Path_, int]) -> list[str]:
    """Apply `a.b.c=value` overrides in place (values parsed as YAML); returns problems."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
            continue
        try:
            value = parse_yaml(text)[0] if text.strip() else None
        except _Refused as e:
            problems += [f"--set {key}: {p}" for p in e.problems]
            continue
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


def read(path: str | Path) -> tuple[dict | Any, dict[Path_, int]]:
    """A recipe file's data and key lines. Raises RecipeError for a file that is missing, unreadable,
    not UTF-8, not YAML, empty, or one no recipe could be (a key given twice, absurdly deep or large)."""
    source, p = str(path), shipped.resolve(path)
    try:
        if not p.is_file():
            raise RecipeError(source, [f"recipe file not found: {p}{shipped.hint(path)}"])
        data = p.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise RecipeError(source, [f"cannot read {p}: {getattr(e, 'strerror', None) or e}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RecipeError(source, [f"line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                                   "save the recipe as UTF-8"]) from None
    try:
        raw, lines, node = parse_yaml(text)
    except yaml.YAMLError as e:
        raise RecipeError(source, _yaml_problems(e, text)) from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value == "" and raw is None):  # or only `---`
        raise RecipeError(source, ["the file is empty (nothing but blanks or comments); a recipe is a mapping "
                                   "of sections, e.g. `optim: {lr: 0.1}` (`{}` for every default)"])
    return raw, lines


def load(path: str | Path | None, overrides: list[str] = (), base: dict | None = None,
         preflight: bool = False, source: str | None = None) -> Recipe:
    """Read a recipe file (or start from `base`), apply overrides, validate. Raises RecipeError.
    `preflight`: also check this machine can run it (CUDA, precision, output folder); for the
    command about to run, never for a recipe only printed or read back."""
    source = source or (str(path) if path is not None else "--set overrides")
    lines: dict[Path_, int] = {}
    if base is not None:
        raw = copy.deepcopy(base)
    elif path is None:
        raw = {}
    else:
        raw, lines = read(path)
    if isinstance(raw, dict):
        problems = apply_overrides(raw, list(overrides), lines)
        if problems:
            raise RecipeError(source, problems)
    recipe = validate(raw, source, lines, preflight=preflight)
    if recipe.output.name is None and path is not None:
        recipe.output.name = Path(path).stem
    return recipe
