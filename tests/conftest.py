import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
os.environ.setdefault("PYTHONWARNINGS", "ignore")


def _fashion_mnist_root() -> None:
    """Tests may change the working folder: point the data at an absolute path once."""
    if "CNNLAB_FASHION_MNIST" not in os.environ:
        for d in (Path("/usr/share/datasets/fashion-mnist"), ROOT / "data" / "fashion-mnist"):
            if (d / "train-images-idx3-ubyte.gz").is_file():
                os.environ["CNNLAB_FASHION_MNIST"] = str(d)
                return


_fashion_mnist_root()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `cnnlab ARGS...` in-process from an empty working folder (tmp_path/cwd), so a default
    output.dir (`runs`) lands there too; `invoke.runs` is a folder to pass as output.dir."""
    from cnnlab.cli import app

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    invoke.runs = tmp_path / "runs"
    invoke.cwd = cwd
    return invoke


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
