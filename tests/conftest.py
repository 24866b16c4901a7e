import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `cnnlab ARGS...` in-process with output.dir redirected to a temp folder."""
    from cnnlab.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    invoke.runs = tmp_path / "runs"
    return invoke


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
