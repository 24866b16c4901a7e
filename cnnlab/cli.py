"""The `cnnlab` command line: one short function per subcommand, user errors -> exit 2."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from cnnlab.errors import Diverged, Interrupted, UserError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ConvNets in practice: train, fine-tune, augment, test-time augment, benchmark convolutions.")

Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set optim.lr=0.05 (repeatable).")]


def _version(value: bool) -> None:
    if value:
        import cnnlab

        print(f"cnnlab {cnnlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print cnnlab's version and exit.")] = False) -> None:
    """ConvNets in practice: train, fine-tune, augment, test-time augment, benchmark convolutions."""


def _kinds(incomplete: str) -> list[str]:
    """Shell completion of `cnnlab list KIND`: the kinds, without importing torch."""
    names = ["algorithms", "backbones", "blocks", "models", "ops", "precisions", "recipes", "regimes", "sources", "views"]
    return [k for k in names if k.startswith(incomplete)]


def built_in(given: Path) -> None:
    """Say so when a recipe argument named a built-in recipe rather than a file here (a file in the
    working folder of that name always wins)."""
    from cnnlab import shipped

    used = shipped.resolve(given)
    if used != Path(given):
        from cnnlab.report.console import console

        console.print(f"recipe: the built-in {used.name} ({used}); cnnlab cp {used.stem} . copies it to edit",
                      highlight=False)


def user_errors(fn: Callable) -> Callable:
    """Report UserError (bad file, key or value) as `error: ...` with exit code 2, a run that
    diverged (non-finite loss or gradients) with exit code 3, and a run stopped by SIGINT or SIGTERM
    with 130 or 143; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cnnlab.report.console import error

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            error(str(e))
            raise typer.Exit(2) from None
        except Diverged as e:  # not the user's input: the run stopped, its last finite state saved
            error(str(e))
            raise typer.Exit(3) from None
        except Interrupted as e:  # SIGINT / SIGTERM: stopped after a whole step, its checkpoint written
            error(f"{e}" + (f"; continue with: {e.resume}" if e.resume else ""))
            raise typer.Exit(128 + e.signum) from None

    return wrapper


@app.command()
@user_errors
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML file.")] = None,
    set_: Overrides = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run folder from its checkpoints/last.ckpt.")] = None,
    print_recipe: Annotated[bool, typer.Option("--print-recipe", help="Print the resolved recipe and exit.")] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="Train each of the recipe's sweep.variants once per sweep.seeds; a table and loss curves in a sweep folder.")] = False,
) -> None:
    """Train a CNN from a recipe; writes a run folder with metrics, checkpoints, curves and results.json."""
    from cnnlab import recipe as rc

    if resume is not None:
        if recipe is not None:
            raise UserError("give either a RECIPE or --resume RUN_DIR (which uses RUN_DIR/recipe.yaml), not both")
        recipe = Path(resume) / "recipe.yaml"
        if not recipe.is_file():
            raise UserError(f"--resume: {resume} is not a run folder (no recipe.yaml)")
    if recipe is None:
        raise UserError("missing RECIPE: cnnlab train recipes/fashion_mnist.yaml")
    if sweep and resume is not None:
        raise UserError("--sweep starts new runs; --resume continues one: give one of them")
    r = rc.load(recipe, set_ or [], preflight=not print_recipe)
    if not print_recipe:
        built_in(recipe)
    if resume is not None:
        r.output.name = Path(resume).name
    if print_recipe:
        import yaml

        from cnnlab.report.console import console

        console.print(yaml.safe_dump(r.dump(), sort_keys=False), highlight=False, markup=False)
        return
    from cnnlab.engine.callbacks import quiet_lightning

    quiet_lightning()
    if sweep:  # the preset of `cnnlab sweep RECIPE`: the recipe's own sweep: section
        if r.sweep is None:
            raise UserError("--sweep: the recipe has no sweep: section (sweep: {seeds: [0, 1], variants: {name: [KEY=VALUE, ...]}} "
                            "or grid: {KEY: [V1, V2]}); cnnlab sweep RECIPE --grid 'KEY=[V1, V2]' needs none")
        _sweep(r, command="cnnlab train --sweep")
        return
    from cnnlab.report.data import data_summary
    from cnnlab.report.train import train_summary
    from cnnlab.tasks import train as task

    results = task.run(r, resume=resume, resume_overrides=set_ or [], on_data=data_summary)
    if results is not None:  # global rank 0 reports; the other processes of a parallel run stay quiet
        train_summary(results)


def _sweep(r, grid: list[str] = (), seeds: int | None = None, jobs: str | None = None, threads: str | None = None,
           launcher: str | None = None, resume: Path | None = None, command: str = "cnnlab sweep") -> None:
    """Run (or resume) a sweep and print its table; a stopped sweep prints the table of what finished."""
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.sweep import sweep_table, table_if_stopped, trial_line
    from cnnlab.tasks import sweep as task

    quiet_lightning()
    with table_if_stopped():
        if resume is not None:
            s = task.resume(resume, jobs, threads, launcher, on_trial=trial_line)
        else:
            s = task.run(r, grid, seeds, jobs, threads, launcher, on_trial=trial_line, command=command)
    sweep_table(s)


@app.command()
@user_errors
def sweep(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML file (its sweep: section, if any, holds variants, a grid and seeds).")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="KEY=[V1, V2, ...]: one YAML flow list of values for any recipe key (repeatable; grids cross).")] = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Run seeds 0 to N-1 (instead of sweep.seeds).")] = None,
    jobs: Annotated[Optional[str], typer.Option(help="Trials at once: a number or auto (one single-thread trial per core on a CPU).")] = None,
    threads: Annotated[Optional[str], typer.Option(help="Torch threads per trial: a number or auto (cores // jobs).")] = None,
    launcher: Annotated[Optional[str], typer.Option(help="local (processes on this machine) or submitit (Slurm where sbatch exists, else submitit's local executor).")] = None,
    set_: Overrides = None,
    resume: Annotated[Optional[Path], typer.Option(help="Run again only what did not finish in this sweep folder.")] = None,
) -> None:
    """Train every cell of a grid (any recipe key) x seeds, side by side or on a cluster; one table of means and paired differences."""
    from cnnlab import recipe as rc

    if resume is not None:
        if recipe is not None or grid or seeds or set_:
            raise UserError("--resume SWEEP_DIR continues a sweep with its own plan.json: give no RECIPE, --grid, --seeds or --set")
        _sweep(None, jobs=jobs, threads=threads, launcher=launcher, resume=resume)
        return
    if recipe is None:
        raise UserError("missing RECIPE: cnnlab sweep recipes/smoke.yaml --grid 'optim.lr=[0.05, 0.1, 0.2]' --seeds 3")
    r = rc.load(recipe, set_ or [], preflight=True)
    built_in(recipe)
    _sweep(r, grid or [], seeds, jobs, threads, launcher)


@app.command("eval")
@user_errors
def eval_(
    path: Annotated[Path, typer.Argument(help="A run folder (of train or finetune) or a .ckpt file.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the results; default RUN_DIR/eval.json, or NAME.eval.json beside a .ckpt.")] = None,
) -> None:
    """Re-evaluate a run folder's best (or a given) checkpoint on the test split, on this machine."""
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.eval import eval_summary
    from cnnlab.tasks import evaluate

    quiet_lightning()
    eval_summary(evaluate.run(path, out=out))


@app.command()
@user_errors
def compare(
    runs: Annotated[Optional[list[Path]], typer.Argument(metavar="RUN_OR_SWEEP", help="Run folders (of train or finetune), or folders of runs (a sweep): every run folder under it.")] = None,
    out: Annotated[Path, typer.Option(help="Where the folder compare-<time> (compare.json, compare.png) is made.")] = Path("runs"),
) -> None:
    """Finished runs side by side: the recipe keys that differ, test accuracy and loss, speed, and their curves on one plot."""
    from cnnlab.report.compare import compare_table
    from cnnlab.tasks import compare as task

    compare_table(task.run(list(runs or []), out))


@app.command()
@user_errors
def augment(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file with an augment: section.")],
    set_: Overrides = None,
    bench: Annotated[bool, typer.Option("--bench", help="Measure images/s: device vs loader mode vs a plain copy.")] = False,
    ablate: Annotated[bool, typer.Option("--ablate", help="Train with no augmentation, each op alone, and all ops.")] = False,
    rows: Annotated[int, typer.Option(min=1, max=10, help="Images (rows) in the preview grid.")] = 6,
    batch_size: Annotated[int, typer.Option(min=1, help="--bench: images per augmented batch.")] = 512,
    seeds: Annotated[int, typer.Option(min=1, help="--ablate: training runs per variant (seeds seed, seed+1, ...).")] = 1,
) -> None:
    """Preview the recipe's augmentation (augment_grid.png), benchmark it, and ablate it."""
    from cnnlab import recipe as rc

    r = rc.load(recipe, set_ or [], preflight=True)
    built_in(recipe)
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.augment import augment_summary
    from cnnlab.report.sweep import table_if_stopped, trial_line
    from cnnlab.tasks import augment as task

    quiet_lightning()
    with table_if_stopped():  # the ablation's table of the runs finished, then the one line
        res = task.run(r, rows=rows, bench_batch_size=batch_size if bench else None,
                       ablate_seeds=seeds if ablate else None, on_trial=trial_line)
    augment_summary(res)


@app.command()
@user_errors
def finetune(
    recipes: Annotated[Optional[list[Path]], typer.Argument(help="Recipe YAML file(s) with a finetune: section.")] = None,
    regime: Annotated[Optional[str], typer.Option(help="Override finetune.regime: linear, top, stages, full, scratch, auto.")] = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="Every regime at every finetune.sweep size; with several recipes, one row each of the similar/different x little/lots table.")] = False,
    set_: Overrides = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a stopped finetune run folder from its checkpoints/last.ckpt.")] = None,
) -> None:
    """Transfer learning: a pretrained backbone, a fresh linear head, and a regime that says what trains."""
    from cnnlab import recipe as rc

    if resume is not None:
        if recipes or sweep or regime:
            raise UserError("--resume RUN_DIR continues a run with its own recipe.yaml and regime: give no RECIPE, "
                            "--regime or --sweep with it")
        recipes = [Path(resume) / "recipe.yaml"]
        if not recipes[0].is_file():
            raise UserError(f"--resume: {resume} is not a run folder (no recipe.yaml)")
    if not recipes:
        raise UserError("missing RECIPE: cnnlab finetune recipes/transfer_similar.yaml (or --resume RUN_DIR)")
    over = list(set_ or []) + ([f"finetune.regime={regime}"] if regime else [])
    loaded = [(Path(p).stem, rc.load(p, over, preflight=True)) for p in recipes]
    for p in recipes:
        built_in(p)
    if len(loaded) > 1 and not sweep:
        raise UserError("several recipes make one table: add --sweep, or give one recipe")
    from cnnlab.engine.callbacks import quiet_lightning

    from cnnlab.report.data import data_summary
    from cnnlab.report.finetune import finetune_summary, sweep_summary
    from cnnlab.tasks import finetune as task

    quiet_lightning()
    if sweep:
        sweep_summary(task.sweep(loaded))
        return
    r = loaded[0][1]
    if resume is not None:
        r.output.name = Path(resume).name
    results = task.run(r, on_data=data_summary, resume=resume, resume_overrides=set_ or [])
    if results is not None:  # global rank 0 reports; the other processes of a parallel run stay quiet
        finetune_summary(results)


@app.command("eval-tta")
@user_errors
def eval_tta(
    path: Annotated[Path, typer.Argument(help="A run folder (of train or finetune) or a .ckpt file.")],
    views: Annotated[Optional[str], typer.Option("--views", help="Policies, comma-separated; views joined by '+': hflip,ten-crop+scales. Default: the recipe's eval.tta, else a standard set.")] = None,
    agg: Annotated[Optional[str], typer.Option(help="How an image's views combine: mean-prob, mean-logit, max.")] = None,
    set_: Overrides = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for tta.json and tta.png; default the run folder, or NAME.tta.* beside a .ckpt.")] = None,
) -> None:
    """Evaluate with test-time augmentation (flips, crops, shifts, scales), each policy against the single view."""
    from cnnlab.engine.callbacks import quiet_lightning

    over = list(set_ or [])
    if views is not None:
        over.append(f"eval.tta=[{', '.join(repr(v.strip()) for v in views.split(','))}]")
    if agg is not None:
        over.append(f"eval.agg={agg}")
    from cnnlab.report.tta import tta_table
    from cnnlab.tasks import eval_tta as task

    quiet_lightning()
    tta_table(task.run(path, over, out=out))


@app.command("bench-conv")
@user_errors
def bench_conv(
    shape: Annotated[Optional[str], typer.Option(help="One layer N,C,H,W,K,k (default: a sweep of kernel sizes 1-11 at 64x64).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Time every conv layer of a registered or torchvision:<name> model instead.")] = None,
    input: Annotated[str, typer.Option("--input", help="--model's input N,C,H,W.")] = "1,3,224,224",
    stacking: Annotated[bool, typer.Option("--stacking", help="Also compare one 7x7, three 3x3 and a bottleneck at equal channels.")] = False,
    train: Annotated[bool, typer.Option("--train", help="With --stacking: train vgg-7x7, vgg-3x3x3 and vgg-bottleneck (cnnlab train).")] = False,
    recipe: Annotated[Optional[Path], typer.Option(help="--train's recipe (default: the shipped stacking.yaml).")] = None,
    set_: Overrides = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats per algorithm (median), after warm-up.")] = 5,
    device: Annotated[str, typer.Option(help="cpu, or cuda when a GPU is present.")] = "cpu",
    tf32: Annotated[bool, typer.Option("--tf32", help="On a GPU: let cuDNN and matmuls use TF32 alike (default: neither, so every algorithm computes float32).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the run folder bench-conv-<time>.")] = Path("runs"),
) -> None:
    """Time convolution algorithms (direct, im2col, FFT, Winograd) side by side, with their error and memory."""
    from cnnlab.report.bench_conv import bench_conv_table
    from cnnlab.tasks import bench_conv as task

    bench_conv_table(task.run(shape, stacking, repeats, device, str(out), model=model, input=input, train=train,
                                     recipe=recipe, overrides=set_ or [], allow_tf32=tf32))


@app.command()
@user_errors
def pack(
    src: Annotated[Optional[str], typer.Argument(help="A data source (fashion-mnist, digits, imagefolder, cifar10, packed) or a recipe YAML (its data: section).")] = None,
    out: Annotated[Optional[Path], typer.Argument(help="The .cnnpack file to write (with --shards, the index of the shard files).")] = None,
    split: Annotated[str, typer.Option(help="Splits to pack, comma-separated.")] = "train,test",
    root: Annotated[Optional[str], typer.Option(help="data.root: the source's folder.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="data.image_size: images packed at this square size (px).")] = None,
    resize: Annotated[Optional[str], typer.Option(help="data.resize (image files): shorter (centre crop), longer (pad) or stretch.")] = None,
    channels: Annotated[Optional[int], typer.Option(help="data.channels (image files): 3 or 1.")] = None,
    shards: Annotated[int, typer.Option(help="Write N shard files of contiguous rows and an index file OUT.")] = 1,
    set_: Overrides = None,
    verify: Annotated[Optional[Path], typer.Option("--verify", help="Check a .cnnpack file's header, size and checksum instead of packing.")] = None,
) -> None:
    """Pack a data source into one contiguous, memory-mapped file (train: data.source packed, data.root OUT)."""
    from cnnlab.report.console import byte_progress
    from cnnlab.report.pack import pack_summary
    from cnnlab.tasks import pack as task

    if verify is not None:
        if src is not None or out is not None:
            raise UserError("--verify FILE checks a pack; give no SRC or OUT with it")
        pack_summary(task.verify(verify))
        return
    if src is None or out is None:
        raise UserError("missing SRC and OUT: cnnlab pack fashion-mnist data/fmnist.cnnpack (or --verify FILE)")
    spec = task.data_spec(src, {"root": root, "image_size": image_size, "resize": resize, "channels": channels},
                          list(set_ or []))
    pack_summary(task.run(spec, out, task.parse_splits(split), shards, progress=byte_progress))


@app.command("bench-data")
@user_errors
def bench_data(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML whose data: section gives the training images (default: the shipped fashion_mnist.yaml).")] = Path("fashion_mnist.yaml"),
    set_: Overrides = None,
    export_folder: Annotated[Optional[Path], typer.Option(help="Write (or reuse) the images as PNG files here and keep them; default a folder in the run folder, removed after.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N training images.")] = None,
    repeats: Annotated[int, typer.Option(help="Rounds of one pass per method, interleaved; medians, and ratios as the median of the rounds' ratios.")] = 5,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers of the PNG path (default: one per core).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the pack (and PNG folder) made in the run folder.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the run folder bench-data-<time>.")] = Path("runs"),
) -> None:
    """Images/s of PNG files vs a packed file (cold, warm) vs in-memory tensors vs memcpy; host->device copies on a GPU."""
    from cnnlab import recipe as rc
    from cnnlab.report.bench_data import bench_data_table
    from cnnlab.report.console import status
    from cnnlab.tasks import bench_data as task

    r = rc.load(recipe, set_ or [])
    built_in(recipe)
    with status() as on_step:
        res = task.run(r, export_folder, limit, repeats, workers, str(out), keep, on_step=on_step)
    bench_data_table(res)


@app.command()
@user_errors
def profile(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML file whose training steps are profiled.")] = None,
    set_: Overrides = None,
    steps: Annotated[int, typer.Option(help="Timed steps with the phase boundaries (as many again without, for the overhead).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 5,
    memory_budget: Annotated[Optional[str], typer.Option(help="The largest batch that fits this much (12GB, 512MiB); default the free memory.")] = None,
    threads: Annotated[Optional[str], typer.Option(help="Step throughput at these thread counts, e.g. 1,2.")] = None,
    try_alternatives: Annotated[bool, typer.Option("--try-alternatives", help="Time each change the verdict suggests beside the recipe.")] = False,
    machine: Annotated[bool, typer.Option("--machine", help="This machine's limits (devices, precisions, matmul peaks, copies, disk), measured once and cached.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="--machine: measure again instead of reading the cache.")] = False,
) -> None:
    """What limits a training run: its step split into phases with a verdict, FLOPs, memory per layer and the peak."""
    from cnnlab.report.console import status

    if machine:
        if recipe is not None or set_:
            raise UserError("--machine measures this machine, not a recipe: give no RECIPE or --set with it")
        from cnnlab.report.profile import machine_table
        from cnnlab.tasks import profile as task

        with status() as on_step:
            m = task.machine(task.default_data_folder(), refresh=refresh, progress=on_step)
        machine_table(m)
        return
    if recipe is None:
        raise UserError("missing RECIPE: cnnlab profile recipes/fashion_mnist.yaml (or --machine)")
    from cnnlab.tasks import profile as task

    task.check_flags(steps, warmup, memory_budget, threads)  # before the recipe's heavy imports
    from cnnlab import recipe as rc

    r = rc.load(recipe, set_ or [], preflight=True)
    built_in(recipe)
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.profile import profile_summary

    quiet_lightning()
    with status() as on_step:
        res = task.run(r, steps=steps, warmup=warmup, memory_budget=memory_budget, thread_counts=threads,
                       try_alternatives=try_alternatives, on_step=on_step)
    profile_summary(res)


@app.command()
@user_errors
def tune(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (or a built-in recipe's name).")],
    lr: Annotated[bool, typer.Option("--lr", help="Learning-rate range test (Lightning's lr_find): a suggested optim.lr.")] = False,
    batch_size: Annotated[bool, typer.Option("--batch-size", help="The largest data.batch_size that runs within --memory-budget (Lightning's scale_batch_size).")] = False,
    set_: Overrides = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="--batch-size: stop before this much (12GB, 512MiB); default the free memory.")] = None,
    steps: Annotated[int, typer.Option(help="--lr: steps of the range test.")] = 100,
    min_lr: Annotated[float, typer.Option(help="--lr: the range's start.")] = 1e-6,
    max_lr: Annotated[float, typer.Option(help="--lr: the range's end.")] = 10.0,
) -> None:
    """Find a learning rate or the largest batch size for a recipe, with Lightning's Tuner."""
    from cnnlab.tasks import tune as task

    task.check_flags(lr, batch_size, memory_budget, steps)
    from cnnlab import recipe as rc

    r = rc.load(recipe, set_ or [], preflight=True)
    built_in(recipe)
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.tune import tune_summary

    quiet_lightning()
    tune_summary(task.run(r, lr=lr, batch_size=batch_size, memory_budget=memory_budget, steps=steps,
                          min_lr=min_lr, max_lr=max_lr))


@app.command("list")
@user_errors
def list_(
    kind: Annotated[Optional[str], typer.Argument(help="models, backbones, ops, views, algorithms, sources, regimes, blocks, precisions or recipes.", autocompletion=_kinds)] = None,
    pattern: Annotated[Optional[str], typer.Argument(help="Only names matching this (a glob, or a part of the name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Every named part cnnlab has (read from its registries), the precisions this machine runs, the built-in recipes."""
    from cnnlab.report.catalog import kinds_table, list_table
    from cnnlab.tasks import catalog

    if kind is None:
        kinds_table({k: len(catalog.entries(k)) for k in catalog.kinds()})
        return
    list_table(kind, catalog.entries(kind, pattern), as_json)


@app.command()
@user_errors
def cp(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe's name (cnnlab list recipes).")],
    dest: Annotated[Path, typer.Argument(help="The file to write, or a folder to put it in.")] = Path("."),
) -> None:
    """Copy a built-in recipe out of the package, to edit."""
    from cnnlab.report.catalog import copied
    from cnnlab.tasks import catalog

    copied(catalog.copy_recipe(recipe, dest))


@app.command()
@user_errors
def predict(
    path: Annotated[Path, typer.Argument(help="A run folder (of train or finetune) or a .ckpt file.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns ('photos/**/*.jpg'); folders named after the run's classes give labels.")],
    tta: Annotated[Optional[str], typer.Option(help="A test-time augmentation policy, as eval-tta's: hflip, ten-crop+scales; views combined by the run's eval.agg.")] = None,
    top: Annotated[Optional[int], typer.Option(help="Classes per image, most probable first (default 3, or every class when the run has fewer).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The CSV to write; default RUN_DIR/predictions.csv, or NAME.predictions.csv beside a .ckpt.")] = None,
    batch_size: Annotated[int, typer.Option(help="Image files decoded and predicted at a time (memory: this many decoded images).")] = 256,
    bad_images: Annotated[Optional[str], typer.Option(help="An unreadable image file: error (stop, nothing written) or skip (left out, listed); default the run's data.bad_images.")] = None,
) -> None:
    """Classify image files with a run's checkpoint: a CSV of each image's top classes, accuracy when folders name the classes."""
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.predict import image_progress, predict_summary
    from cnnlab.tasks import predict as task

    quiet_lightning()
    predict_summary(task.run(path, images, tta=tta, top=top, out=out, batch_size=batch_size, bad_images=bad_images,
                             progress=image_progress))


@app.command()
@user_errors
def export(
    path: Annotated[Path, typer.Argument(help="A run folder (of train or finetune) or a .ckpt file.")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="onnx (runs in onnxruntime; needs cnnlab[export]) or pt2 (torch.export).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The file to write; default RUN_DIR/model.onnx (.pt2), or NAME.onnx beside a .ckpt. Its metadata: FILE.json beside it.")] = None,
    static_batch: Annotated[Optional[int], typer.Option("--static-batch", help="Fix the batch dimension at N images (default: dynamic).")] = None,
) -> None:
    """Export a run's network with its normalisation folded in (uint8 images in, logits out), checked against PyTorch on test images."""
    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.report.console import error
    from cnnlab.report.export import export_summary
    from cnnlab.tasks import export as task

    quiet_lightning()
    try:
        res = task.run(path, fmt, out=out, static_batch=static_batch)
    except task.CheckFailed as e:  # not the user's input: the file does not compute what the run's network does
        error(str(e))
        raise typer.Exit(3) from None
    export_summary(res)


def main() -> None:
    app(prog_name="cnnlab")
