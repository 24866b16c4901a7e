"""Fuzzing the recipe loader: whatever file `cnnlab train` is handed, `recipe.load` returns a Recipe or
raises RecipeError with one-line problems; any other exception (a traceback for the user) fails.
Every property prints how many examples it ran (`pytest -s`)."""
import tempfile
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnlab import recipe as rc
from cnnlab.augment import OPS
from cnnlab.models import MODELS
from cnnlab.spec import PRECISIONS, Spec

EXAMPLES = 300  # per property: about 12 s of calls on 2 busy cores, plus the imports
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_or_refuse(path: Path, overrides: list[str] = ()) -> "rc.Recipe | rc.RecipeError":
    """The only two outcomes allowed; a RecipeError's problems are lines of readable length."""
    try:
        return rc.load(path, list(overrides))
    except rc.RecipeError as e:
        assert e.problems, "a RecipeError without problems"
        for p in e.problems:
            assert isinstance(p, str) and p and "\n" not in p and len(p) < 1500, p
        return e


class Counted:
    """Runs a hypothesis property over a scratch file and reports the examples it ran."""

    def __init__(self, name: str):
        self.name, self.n, self.outcomes = name, 0, {"Recipe": 0, "RecipeError": 0}
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "r.yaml"

    def load(self, data: bytes, overrides: list[str] = ()) -> "rc.Recipe | rc.RecipeError":
        self.n += 1
        self.path.write_bytes(data)
        out = load_or_refuse(self.path, overrides)
        self.outcomes[type(out).__name__] += 1
        assert sorted(p.name for p in Path(self.dir.name).iterdir()) == ["r.yaml"], "loading wrote a file"
        return out

    def done(self) -> None:
        self.dir.cleanup()
        print(f"\n{self.name}: {self.n} examples, {self.outcomes}")
        assert self.n >= EXAMPLES


# --------------------------------------------------------------------------- vocabulary from the specs


def spec_of(annotation) -> type[Spec] | None:
    return next((a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type) and issubclass(a, Spec)), None)


SECTIONS = {name: spec_of(f.annotation) for name, f in rc.Recipe.model_fields.items()}
KEYS = sorted({k for s in SECTIONS.values() if s for k in s.model_fields} | {"sweep", "sizes", "regimes"}
              | {k for n in MODELS for k in MODELS.signature(MODELS.get(n)).model_fields}
              | {k for n in OPS for k in OPS.signature(OPS.get(n)).model_fields})
NAMES = sorted(set(SECTIONS) | set(KEYS) | set(MODELS) | set(OPS) | {"name", "auto", "all", "cpu", "cuda", "ddp", *PRECISIONS})

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 300), st.floats(),
                    st.floats(0, 1), st.text(max_size=12), st.sampled_from(NAMES))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6), st.integers(-2, 3)), kids, max_size=4)),
    max_leaves=25)


def section(name: str):
    """A section's own keys (model: its builders' too; augment.ops: real ops), values of any shape."""
    keys = st.sampled_from(KEYS)
    body = st.dictionaries(keys, st.one_of(values, scalars), max_size=6)
    if name == "model":
        body = st.builds(lambda d, n: {**d, "name": n}, body, st.sampled_from([*MODELS, "vgg-smal", 3]))
    if name == "augment":
        op = st.builds(lambda d, n: {**d, "name": n}, st.dictionaries(keys, scalars, max_size=3), st.sampled_from([*OPS, "hflp"]))
        body = st.builds(lambda d, ops: {**d, "ops": ops}, body, st.lists(st.one_of(op, values), max_size=3))
    return body.map(lambda d: (name, d))


recipes = st.one_of(
    st.lists(st.one_of(*(section(n) for n in SECTIONS), st.tuples(st.sampled_from(NAMES), values)), max_size=6).map(dict),
    values)
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in KEYS[:40]]
                                                                          + ["seed", "model.widths.0", "augment.ops.0.p"]),
                               st.one_of(st.sampled_from(NAMES), st.text(max_size=10), st.integers().map(str))), max_size=3)


# --------------------------------------------------------------------------- properties


def test_random_bytes():
    c = Counted("random bytes")

    @FUZZ
    @given(st.binary(max_size=600))
    def prop(data):
        c.load(data)

    prop()
    c.done()


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_non_utf8_text_is_named_as_such():
    c = Counted("non-UTF-8 text")
    bad = st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"])

    @FUZZ
    @given(st.text(max_size=200), bad, st.integers(0, 200), st.sampled_from(["utf-8", "latin-1"]))
    def prop(text, junk, at, encoding):
        data = text.encode(encoding, errors="replace")
        data = data[:at] + junk + data[at:]
        assume(not decodes(data))  # a latin-1 byte before the junk can complete a UTF-8 sequence
        out = c.load(data)
        assert isinstance(out, rc.RecipeError) and "not UTF-8 text" in out.problems[0], out

    prop()
    c.done()


@pytest.mark.slow
def test_random_yaml_structures_and_overrides():
    c = Counted("YAML structures")

    @FUZZ
    @given(recipes, overrides)
    def prop(doc, over):
        c.load(yaml.safe_dump(doc).encode(), over)

    prop()
    c.done()


def test_random_yaml_text():
    """Token soup: flow and block syntax, anchors, aliases, merge keys, tags PyYAML chokes on."""
    c = Counted("YAML text")
    tokens = st.sampled_from(["{", "}", "[", "]", ": ", ", ", "- ", "\n", "  ", "&a ", "*a", "<<: ", "? ", "---\n", "#",
                              "!!int ", "!!float ", "!!bool ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!!str ",
                              "!!int", "!!float", "!!null ", "!!pairs ", "!!map ", "!!seq ", "!!python/tuple ", "!<x> ",
                              "2020-13-45", "0x", ".inf", ".nan", "~", "'", '"', "\t", "\x00", "\ufeff", "é",
                              *NAMES])

    @FUZZ
    @given(st.lists(tokens, max_size=40))
    def prop(parts):
        c.load("".join(parts).encode())

    prop()
    c.done()


# --------------------------------------------------------------------------- shapes no recipe has


@pytest.mark.parametrize("text,why", [
    ("[" * 5000 + "]" * 5000, "nested more than"),
    ("{a: " * 3000 + "1" + "}" * 3000, "nested more than"),
    ("".join(" " * i + "a:\n" for i in range(3000)) + " " * 3000 + "1\n", "nested more than"),
    ("- " * 3000 + "1\n", "nested more than"),
    ("model:\n  widths: " + "[" * 200 + "1" + "]" * 200 + "\n", "nested more than"),
    # a few lines of aliases that expand to 10^9 values
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
                                                        for i in range(8)) + "model: {widths: *i}\n", "more than 100,000 values"),
    # aliases nested inside aliases: shallow to write, 31 x 4 levels deep once expanded
    ("a: &a " + "[" * 30 + "1" + "]" * 30 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\nc: &c " + "[" * 30 + "*b" + "]" * 30
     + "\nd: " + "[" * 30 + "*c" + "]" * 30 + "\n", "nested more than"),
])
def test_pathological_nesting_and_size_are_recipe_errors(tmp_path, text, why):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    out = load_or_refuse(path)
    assert isinstance(out, rc.RecipeError) and why in out.problems[0], out


def _has_float(t) -> bool:
    return t is float or any(_has_float(a) for a in typing.get_args(t))


def _with(t, bad):
    """`bad` where a float goes: a two-item list for tuple/list fields (optim.betas, cutout.scale)."""
    return [bad, bad] if typing.get_origin(t) in (tuple, list) else bad


def float_keys():
    """(key path, annotation) of every float a recipe can hold: section keys and builder arguments."""
    def walk(spec, prefix):
        for k, f in spec.model_fields.items():
            if spec_of(f.annotation) is not None:
                yield from walk(spec_of(f.annotation), prefix + (k,))
            elif _has_float(f.annotation):
                yield prefix + (k,), f.annotation
    for name, spec in SECTIONS.items():
        if spec is not None:
            yield from walk(spec, (name,))
    for n in MODELS:
        for k, f in MODELS.signature(MODELS.get(n)).model_fields.items():
            if _has_float(f.annotation):
                yield ("model", n, k), f.annotation
    for n in OPS:
        for k, f in OPS.signature(OPS.get(n)).model_fields.items():
            if _has_float(f.annotation):
                yield ("augment", n, k), f.annotation


FLOAT_KEYS = list(float_keys())


def test_the_float_keys_are_found():
    found = {".".join(p) for p, _ in FLOAT_KEYS}
    assert {"optim.lr", "optim.betas", "trainer.limit_train_batches", "finetune.layer_decay", "model.vgg-small.dropout",
            "augment.hflip.p", "augment.cutout.scale"} <= found, found


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
def test_non_finite_floats_are_refused_for_every_float_key(tmp_path, bad):
    value = float(bad.replace(".", ""))
    for path, t in FLOAT_KEYS:
        if path[0] == "model":
            raw, where = {"model": {"name": path[1], path[2]: _with(t, value)}}, f"model.{path[2]}"
        elif path[0] == "augment":
            raw, where = {"augment": {"ops": [{"name": path[1], path[2]: _with(t, value)}]}}, f"augment.ops.0.{path[2]}"
        else:
            raw = cur = {}
            for k in path[:-1]:
                cur = cur.setdefault(k, {})
            cur[path[-1]], where = _with(t, value), ".".join(path)
        f = tmp_path / "r.yaml"
        f.write_text(yaml.safe_dump(raw))
        out = load_or_refuse(f)
        assert isinstance(out, rc.RecipeError), f"{where}: {bad} was accepted"
        assert any(p.startswith(where) and "finite number" in p for p in out.problems), (where, out.problems)


# --------------------------------------------------------------------------- what the Trainer accepts


@pytest.mark.parametrize("key,value", [
    ("limit_train_batches", 1.5), ("limit_train_batches", 0), ("limit_train_batches", -1), ("limit_val_batches", 1.0000001),
    ("limit_val_batches", -1), ("devices", 0), ("devices", -5), ("devices", -1), ("log_every_n_steps", 0),
    ("max_epochs", 0), ("max_epochs", -2), ("gradient_clip_val", -1.0), ("strategy", "fsdp"), ("strategy", "deepspeed"),
    ("precision", "16"), ("precision", 32), ("accelerator", "tpu"),
])
def test_values_the_trainer_rejects_are_recipe_errors(tmp_path, key, value):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"trainer": {key: value}}))
    out = load_or_refuse(f)
    assert isinstance(out, rc.RecipeError) and out.problems[0].startswith(f"trainer.{key} (line 2)"), out


def test_strategies_outside_the_tested_ones_are_refused_with_the_list(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("trainer:\n  strategy: fsdp\n")
    [p] = load_or_refuse(f).problems
    assert p == "trainer.strategy (line 2): 'fsdp' is a Lightning strategy cnnlab does not run; choose from auto, ddp, ddp_spawn"


TRAINER_VALUES = {
    "accelerator": st.sampled_from(["auto", "cpu", "gpu", "cuda", "mps", "tpu", "CPU"]),
    "devices": st.one_of(st.integers(-6, 6), st.sampled_from(["auto", "1", "all"]), st.floats(-2, 3)),
    "strategy": st.sampled_from(["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed", "single_device", "dpp", ""]),
    "precision": st.sampled_from([*PRECISIONS, "16", 32, "bf16", "64", "transformer-engine"]),
    "max_epochs": st.one_of(st.integers(-3, 5), st.floats(0, 3)),
    "gradient_clip_val": st.one_of(st.none(), st.floats(-1, 5), st.floats()),
    "deterministic": st.one_of(st.booleans(), st.sampled_from(["warn", "yes", 2])),
    "limit_train_batches": st.one_of(st.integers(-2, 5), st.floats(-1, 2.5), st.floats()),
    "limit_val_batches": st.one_of(st.integers(-2, 5), st.floats(-1, 2.5)),
    "log_every_n_steps": st.integers(-2, 5),
    "channels_last": st.booleans(),
}


def test_whatever_the_schema_and_preflight_accept_the_trainer_accepts(tmp_path):
    """Up to three trainer keys at random values: a section that passes validation and this machine's
    pre-flight must build a real Trainer (build_trainer, as `cnnlab train` does)."""
    from cnnlab.engine.trainer import build_trainer

    one = st.sampled_from(sorted(TRAINER_VALUES)).flatmap(lambda k: TRAINER_VALUES[k].map(lambda v: (k, v)))
    seen = {"accepted": 0, "refused": 0}
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype())

    @FUZZ
    @given(st.lists(one, max_size=3).map(dict))
    def prop(trainer):
        try:
            r = rc.validate({"trainer": trainer}, "fuzz", preflight=True)
        except rc.RecipeError:
            seen["refused"] += 1
            return
        seen["accepted"] += 1
        build_trainer(r.trainer, tmp_path / "run", progress=False)

    try:
        prop()
    finally:
        torch.use_deterministic_algorithms(before[0])  # a Trainer(deterministic=True) sets it process-wide
    print(f"\ntrainer sections: {seen}")
    assert torch.get_default_dtype() == before[1]
    assert seen["accepted"] >= EXAMPLES // 10 and seen["refused"] >= EXAMPLES // 10, seen


@pytest.mark.parametrize("data", [b"\xff\xfe\x00o", b"", b"# only a comment\n", b"[" * 5000, b"a: 1\na: 2\n",
                                  b"optim: {lr: .nan}\n", b"trainer: {limit_train_batches: 1.5}\n", b"seed: !!int abc\n",
                                  b"- just\n- a list\n", b"model: {name: vgg-small, widths: [8, .inf]}\n"])
def test_cnnlab_train_answers_any_bad_file_with_an_error_block_and_writes_nothing(cli, tmp_path, data):
    f = tmp_path / "r.yaml"
    f.write_bytes(data)
    res = cli("train", str(f), "--set", f"output.dir={cli.runs}")
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output, res.output
    assert not cli.runs.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "r.yaml"]
    assert list(cli.cwd.iterdir()) == []
