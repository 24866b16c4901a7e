"""The README and the manual in docs/: the site builds with `mkdocs build --strict` (a broken link
fails), and every command they show runs as written: a real command with real flags, recipe paths
that exist, and `--set` keys that validate."""
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"[<>$]|\.\.\.|\bk=v\b|RECIPE|RUN_DIR|\bSRC\b|\bOUT\b|\bFILE\b|NAME|N,C,H,W")


def commands(text: str) -> list[str]:
    """`cnnlab ...` commands the text shows: lines of shell code blocks (continuations joined; in
    output blocks only `$ cnnlab ...` lines) and inline code spans."""
    out = []
    for lang, block in re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if lang not in ("sh", "bash", "console", "") and not line.startswith("$ "):
                continue  # program output, not a command
            m = re.search(r"(?:^|^\$ |\s|^)(?:\S*/)?cnnlab ([a-z]\S*.*)$", line.removeprefix("$ "))
            if m and re.match(r"(?:\S*/)?cnnlab |\S+ .*/cnnlab ", line.removeprefix("$ ")):
                out.append("cnnlab " + m.group(1))
    out += ["cnnlab " + c.replace("\\|", "|") for c in re.findall(r"`cnnlab ([a-z][^`]*)`", text)]
    return out


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in commands(p.read_text())]


def cli_commands() -> dict[str, set[str]]:
    import typer.main

    from cnnlab.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} for name, cmd in group.commands.items()}


def test_the_manual_builds_strictly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "transfer" / "index.html").is_file()


def test_the_reader_finds_the_commands():
    found = all_commands()
    assert len(found) > 40  # the README alone shows more than ten
    assert ("README.md", "cnnlab train recipes/fashion_mnist.yaml --set trainer.max_epochs=2 --set optim.lr=0.1") in found


def test_every_command_shown_is_a_real_command_with_real_flags():
    known = cli_commands()
    bad = []
    for page, line in all_commands():
        words = line.split()
        if len(words) < 2 or words[1] not in known:
            bad.append(f"{page}: {line!r}: no command {words[1] if len(words) > 1 else ''!r}")
            continue
        flags = {w.split("=")[0] for w in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?:=\S+)?", line)}
        bad += [f"{page}: {line!r}: {words[1]} has no {f}" for f in sorted(flags - known[words[1]])]
    assert bad == []


def test_every_recipe_named_exists():
    missing = sorted({(p.name, r) for p in PAGES for r in re.findall(r"recipes/[\w.-]+\.ya?ml", p.read_text())
                      if not (ROOT / r).is_file()})
    assert missing == []


def set_overrides(line: str) -> list[str]:
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set" and not PLACEHOLDER.search(words[i + 1])]


@pytest.mark.parametrize("page,line", [c for c in all_commands() if set_overrides(c[1])])
def test_every_set_key_shown_validates(page, line):
    from cnnlab import recipe as rc

    named = re.findall(r"recipes/[\w.-]+\.ya?ml", line)
    # no recipe on the line (eval-tta, bench-conv --train): the keys must fit the smoke recipe
    rc.load(ROOT / (named[0] if named else "recipes/smoke.yaml"), set_overrides(line))
