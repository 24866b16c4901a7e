"""`cnnlab bench-conv`: the convolution algorithms timed side by side on a sweep of layer shapes (or
one shape, or every convolution of a model), and the stacking comparison (optionally trained);
bench_conv.json and bench_conv.png in a run folder."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from cnnlab.bench.conv import SWEEP, bench_model, bench_shape
from cnnlab.bench.stacking import compare
from cnnlab.engine.assemble import require_one_process
from cnnlab.engine.run import train
from cnnlab.env import versions
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json
from cnnlab.models import MODELS, build_model
from cnnlab.models.stacked import BLOCKS
from cnnlab.recipe import Recipe, load as load_recipe
from cnnlab.shipped import recipe as shipped_recipe



def parse_ints(text: str, n: int, flag: str, meaning: str, example: str) -> tuple[int, ...]:
    """'a,b,...' -> n positive ints, or a UserError naming the flag and value."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != n or min(parts) < 1:
        raise UserError(f"{flag} {text!r}: expected {n} positive integers {meaning}, e.g. {example}")
    return parts


def parse_shape(text: str) -> tuple[int, int, int, int, int, int]:
    return parse_ints(text, 6, "--shape", "N,C,H,W,K,k (batch, in channels, height, width, out channels, kernel size)",
                      "8,16,64,64,16,7")  # type: ignore[return-value]


def parse_input(text: str) -> tuple[int, int, int, int]:
    return parse_ints(text, 4, "--input", "N,C,H,W (batch, channels, height, width)", "1,3,224,224")  # type: ignore[return-value]


def model_net(name: str, shape: tuple[int, int, int, int]) -> torch.nn.Module:
    """A registered or torchvision:<name> model with random weights, for `shape`'s channels, that
    trains on a batch of `shape` (the net's forward+backward is timed in training mode)."""
    try:
        MODELS.get(name)
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    net = build_model(name, shape[1], 10)
    try:
        with torch.no_grad():
            net.train()(torch.randn(*shape))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"--input {','.join(map(str, shape))}: {name} cannot run on it ({first})") from None
    return net


def stacking_recipes(recipe: Path | None, overrides: list[str]) -> list[tuple[str, Recipe]]:
    """One `cnnlab train` recipe per block type: `recipe` (default recipes/stacking.yaml) with
    model.name set to vgg-<block>; all validated before anything runs."""
    path = recipe or shipped_recipe("stacking.yaml")
    out = []
    for block in BLOCKS:
        r = load_recipe(path, [*overrides, f"model.name=vgg-{block}"], preflight=True)
        require_one_process(r, "bench-conv --train")
        out.append((block, r))
    return out


def train_blocks(recipes: list[tuple[str, Recipe]], folder: Path, progress: bool,
                 rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`cnnlab train` of each vgg-<block> into `folder`; accuracy, size and speed side by side (each
    row appended to `rows` as its run finishes)."""
    rows = [] if rows is None else rows
    for block, r in recipes:
        r.output.dir, r.output.name = str(folder), f"train-{block}"
        res = train(r, progress=progress)
        rows.append({"block": block, "model": r.model.name, "test_acc": res["test_acc"], "test_loss": res["test_loss"],
                     "parameters": res["parameters"], "epochs": res["epochs"], "wall_time_s": res["wall_time_s"],
                     "train_images_per_s": res.get("train_images_per_s"), "run_dir": res["run_dir"]})
    return rows


def check_device(device: str) -> None:
    """cpu, cuda, or cuda:N of a device that is here; anything else is one line before any work."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UserError(f"--device {device}: not a device; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    index = device.removeprefix("cuda").removeprefix(":")
    n = torch.cuda.device_count()
    if index and (not index.isdigit() or int(index) >= n):
        raise UserError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")


@contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 allowed or not for cuDNN's convolutions and for matmuls alike while the bench runs, then
    the settings as they were. By default cuDNN may use TF32 while matmuls may not, which would give
    `direct` (cuDNN) ~1e-3 error and a speed edge over im2col, FFT and Winograd (matmuls)."""
    was = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = was


def run(shape: str | None = None, stacking: bool = False, repeats: int = 5, device: str = "cpu",
        out_dir: str = "runs", model: str | None = None, input: str = "1,3,224,224", train: bool = False,
        recipe: Path | None = None, overrides: list[str] = (), progress: bool = True,
        allow_tf32: bool = False) -> dict[str, Any]:
    """Everything is checked (device, shapes, model, recipes) before the run folder is made."""
    check_device(device)
    if shape and model:
        raise UserError("--shape and --model: give one (a layer shape, or a model whose layers are timed)")
    if train and not stacking:
        raise UserError("--train trains the stacking variants: add --stacking")
    if (recipe or overrides) and not train:
        raise UserError("--recipe and --set configure --train's runs: add --stacking --train")
    in_shape = parse_input(input) if model else None
    net = model_net(model, in_shape) if model else None
    shapes = [] if model else [parse_shape(shape)] if shape else SWEEP
    trained = stacking_recipes(recipe, list(overrides)) if train else []
    folder = new_run_dir(out_dir, "bench-conv")
    results: dict[str, Any] = {"run_dir": str(folder), "device": device, "repeats": repeats,
                               "tf32": allow_tf32 if device != "cpu" else None,  # a CUDA setting only
                               "rows": [], "torch_threads": torch.get_num_threads(), "versions": versions()}
    try:
        with interruptible("benchmarking convolutions"), tf32(allow_tf32):
            for s in shapes:
                results["rows"] += bench_shape(s, repeats=repeats, device=device)
            if net is not None:
                results["model"] = {"name": model, **bench_model(net, in_shape, repeats=repeats, device=device)}
            if stacking:
                results["stacking"] = compare(repeats=repeats, device=device)
            if trained:
                train_blocks(trained, folder, progress, results.setdefault("stacking_train", []))
    except Interrupted as e:  # what was measured or trained so far, marked
        results["interrupted"] = e.record()
        write_json(folder / "bench_conv.json", results)
        kept = (f"{len(results.get('stacking_train', []))} of {len(trained)} stacking runs" if "stacking_train" in results
                else f"{len(results['rows'])} timed rows")
        raise e.kept(f"{kept} kept in {folder / 'bench_conv.json'} (marked interrupted)")
    write_json(folder / "bench_conv.json", results)
    from cnnlab.report.bench_conv import plot_bench_conv

    plot_bench_conv(results, folder / "bench_conv.png")
    return results
