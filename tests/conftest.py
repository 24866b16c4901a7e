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


class SmokeRun:
    """A finished run folder and what the CLI printed while training it."""

    def __init__(self, path: Path, output: str):
        self.path, self.output = path, output


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The suite's one run of recipes/smoke.yaml through the CLI (8 epochs, ~2 s), with flip + shift
    augmentation and `eval.tta: [hflip]`: every test that needs a trained run folder to read,
    evaluate or fine-tune from shares it (they may add eval outputs to it, never change what it holds)."""
    from cnnlab.cli import app

    out = tmp_path_factory.mktemp("smoke")
    res = CliRunner().invoke(app, ["train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={out}",
                                   "--set", "eval.tta=[hflip]",
                                   "--set", "augment.ops=[{name: hflip}, {name: shift, max_px: 2}]"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [run] = list(out.iterdir())
    return SmokeRun(run, res.output)
