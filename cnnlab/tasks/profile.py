"""`cnnlab profile RECIPE`: real training steps of the recipe through the engine's Trainer, timed
phase by phase, with a verdict on what limits them and the changes worth trying (measured before
they are advised), the step's FLOPs against this machine's measured peak, memory per layer with the
peak predicted and measured, the largest batch that fits a budget, and thread scaling; and
`cnnlab profile --machine`, this machine's limits (measured once, cached)."""
from __future__ import annotations

import copy
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from cnnlab.engine.assemble import Assembled, assemble, require_one_process
from cnnlab.engine.callbacks import RunFolder
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.profiler import PHASED, StepProfiler
from cnnlab.engine.signals import interruptible
from cnnlab.engine.trainer import build_trainer
from cnnlab.env import versions
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json
from cnnlab.models.checkpointing import checkpoint_stages, stage_names
from cnnlab.profile import memory as mem
from cnnlab.profile import verdict as vd
from cnnlab.recipe import Recipe, load

PLAIN = "plain"


def check_flags(steps: int, warmup: int, memory_budget: str | None, threads: str | None) -> tuple[int | None, list[int] | None]:
    """Every flag checked before any work: (budget bytes or None, thread counts or None)."""
    if steps < 1:
        raise UserError(f"--steps {steps}: at least 1 timed step")
    if warmup < 0:
        raise UserError(f"--warmup {warmup}: 0 or more warm-up steps")
    budget = mem.parse_bytes(memory_budget) if memory_budget is not None else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = vd.parse_threads(threads, cores) if threads is not None else None
    return budget, counts


def _fit(recipe: Recipe, a: Assembled, scratch: Path, profiler: StepProfiler) -> None:
    """The recipe's Trainer (the one factory `cnnlab train` uses: its precision, strategy, callbacks,
    stops) for `profiler.total` steps without validation, writing into `scratch`."""
    scratch.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(recipe.trainer, RunFolder(scratch), [profiler], has_val=False, progress=False,
                            max_steps=profiler.total)
    trainer.fit(a.module, datamodule=a.data)


def phases(recipe: Recipe, a: Assembled, scratch: Path, steps: int, warmup: int,
           on_step: Callable[[int, int], None]) -> dict[str, Any]:
    """`steps` phased steps (rounded up to whole blocks) and as many plain ones, in alternating blocks
    after `warmup`: the split
    (medians per phase) and the instrumentation's overhead (median of the paired block ratios)."""
    block = max(1, steps // 5)  # at least 5 pairs of blocks when there are 5 steps
    rounds = -(-steps // block)
    prof = StepProfiler(warmup, block, [PHASED, PLAIN], rounds, on_step=on_step)
    _fit(recipe, a, scratch / "phases", prof)
    phased = [s.phases for s in prof.steps if s.phases is not None]
    if not phased:
        raise UserError("profile: the fit ended before a timed step (fewer training batches than --warmup?)")
    split = vd.mean_phases(phased)
    plain = [s for s in prof.steps if s.condition == PLAIN]
    images = [s.images for s in prof.steps if s.phases is not None]
    return {"split": split, "steps": len(phased), "plain_steps": len(plain), "block": block,
            "images_per_step": max(images), "per_step": phased,
            "overhead": vd.paired_ratio(prof.steps, block, PHASED, PLAIN),
            "timing": "time.perf_counter at each phase boundary, the device synchronised first "
                      "(torch.cuda.synchronize on a GPU; CPU work is synchronous)"}


def flops(a: Assembled, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (FlopCounterMode; the optimizer's
    elementwise update is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(a.module.net)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return int(counter.get_total_flops())


def _batch(recipe: Recipe, a: Assembled, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` training images as the network sees them (scaled, normalised, its format)."""
    n = min(n, len(a.data.train.labels))
    x = a.data.train.images[:n]
    with torch.no_grad():
        x = a.module.prepare(x.to(a.module.device))
    return x, a.data.train.labels[:n].to(x.device)


def memory(recipe: Recipe, a: Assembled, budget: int | None, device: torch.device) -> dict[str, Any]:
    """Per layer (exact, saved-tensor hooks), the peak predicted and measured at the recipe's batch
    size and half of it, the largest batch for the budget, and what bf16-mixed and activation
    checkpointing save, each measured."""
    smoothing = recipe.optim.label_smoothing

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, label_smoothing=smoothing)

    def factory(net: torch.nn.Module) -> Callable[[Any], torch.optim.Optimizer]:
        return lambda params: build_optimizer(list(net.named_parameters()), recipe.optim)

    def measured(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool = False) -> tuple[int, str]:
        opt = factory(net)(net.parameters())

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = net(x)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            return mem.measure_peak_cuda(step, device)
        return mem.measure_peak_cpu(step, net, opt, x, y)

    bs = recipe.data.batch_size
    sizes = sorted({max(1, bs // 2), bs})
    reports, peaks = {}, {}
    for n in sizes:
        x, y = _batch(recipe, a, n)
        net = copy.deepcopy(a.module.net).train()
        reports[n] = mem.per_layer(net, x, y, loss_fn, factory(net))
        net = copy.deepcopy(a.module.net).train()
        measured_bytes, method = measured(net, x, y)
        peaks[n] = {"predicted_bytes": mem.predict_peak(reports[n])["total"], "measured_bytes": measured_bytes,
                    "method": method}
    report = reports[bs] if bs in reports else reports[sizes[-1]]
    x, y = _batch(recipe, a, bs)
    out: dict[str, Any] = {
        "batch_size": report.batch_size, "layers": [r.__dict__ for r in report.rows], "totals": report.totals,
        "per_image_activation_bytes": report.per_image_activation_bytes,
        "predicted": mem.predict_peak(report), "peak": peaks[report.batch_size],
        "peaks": {str(n): p for n, p in peaks.items()}}
    if len(sizes) == 2:
        per_image, fixed = mem.batch_scaling(reports[sizes[0]], reports[sizes[1]])
        free = budget if budget is not None else _free_bytes(device)
        out["planner"] = {"budget_bytes": free, "budget_from": "--memory-budget" if budget is not None else
                          ("free device memory" if device.type == "cuda" else "MemAvailable (/proc/meminfo)"),
                          "per_image_bytes": per_image, "fixed_bytes": fixed,
                          "largest_batch": mem.largest_batch(per_image, fixed, free) if per_image > 0 else None}
    # what the two memory-saving options save, each measured against the plain step just measured
    saves: dict[str, Any] = {}
    base = peaks[report.batch_size]["measured_bytes"]
    try:
        net = copy.deepcopy(a.module.net).train()
        b16, _ = measured(net, x, y, autocast=True)
        saves["bf16-mixed"] = {"measured_bytes": b16, "saved_bytes": base - b16}
    except RuntimeError as e:
        saves["bf16-mixed"] = {"error": str(e).splitlines()[0]}
    try:
        stages = stage_names(a.module.net)
        net = checkpoint_stages(copy.deepcopy(a.module.net).train(), recipe.model.name)
        ck, _ = measured(net, x, y)
        predicted = mem.checkpoint_saving(report, stages)
        saves["activation_checkpointing"] = {"measured_bytes": ck, "saved_bytes": base - ck,
                                             "predicted_saving_bytes": predicted["walk"], "stages": stages}
    except UserError as e:
        saves["activation_checkpointing"] = {"error": str(e)}
    out["saves"] = saves
    return out


def _data_folder(recipe: Recipe) -> Path:
    """The folder the recipe's images are read from (its disk is the one measured)."""
    if recipe.data.root:
        return Path(recipe.data.root)
    return default_data_folder() if recipe.data.source == "fashion-mnist" else Path("data")


def default_data_folder() -> Path:
    """Where Fashion-MNIST is read from by default (Debian's package, else data/): the folder whose
    disk `profile --machine` measures, the one the shipped recipes read."""
    from cnnlab.data.sources import FASHION_MNIST_ROOTS

    return next((r for r in FASHION_MNIST_ROOTS if r.is_dir()), Path("data"))


def _free_bytes(device: torch.device) -> int:
    from cnnlab.env import device_free_bytes, host_free_bytes

    return device_free_bytes(device) if device.type == "cuda" else host_free_bytes()


def threads(recipe: Recipe, a: Assembled, scratch: Path, counts: list[int], warmup: int, steps: int,
            on_step: Callable[[int, int], None]) -> list[dict[str, Any]]:
    """Step throughput at each thread count (torch's intra-op threads), in rounds of one block per
    count: images/s and the speed-up against the first count as a median of the rounds' ratios."""
    was = torch.get_num_threads()
    rounds = max(3, min(5, steps))
    block = max(1, steps // rounds)
    prof = StepProfiler(warmup, block, counts, rounds, apply=torch.set_num_threads, on_step=on_step)
    try:
        _fit(recipe, a, scratch / "threads", prof)
    finally:
        torch.set_num_threads(was)
    return vd.scaling(vd.per_condition(prof.steps, block, counts))


def alternatives(recipe: Recipe, candidates: list[str], scratch: Path, warmup: int, steps: int, seconds: float,
                 on_step: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each candidate change timed beside the recipe as written: rounds of (recipe, each candidate),
    a few plain steps each under a time limit (a candidate 100x slower costs seconds, not
    minutes), images/s and the median of the rounds' ratios to the recipe."""
    base = recipe.dump()
    arms: dict[str, tuple[Recipe, Assembled]] = {"(as written)": (recipe, assemble(recipe))}
    for c in candidates:
        try:
            r = load(None, c.split(), base=copy.deepcopy(base), preflight=True, source=f"--try-alternatives {c}")
        except UserError as e:
            arms[c] = (None, str(e))  # type: ignore[assignment]
            continue
        arms[c] = (r, assemble(r))
    rates: dict[str, list[float]] = {k: [] for k in arms}
    limited: dict[str, bool] = {k: False for k in arms}
    for rnd in range(3):
        for name, (r, a) in arms.items():
            if r is None:
                continue
            on_step(f"round {rnd + 1} of 3: {name}")
            prof = StepProfiler(warmup if rnd == 0 else 1, steps, [PLAIN], 1, time_limit=seconds)
            _fit(r, a, scratch / f"alt-{len(rates[name])}-{abs(hash(name))}", prof)
            if prof.steps:
                rates[name].append(sum(s.images for s in prof.steps) / sum(s.seconds for s in prof.steps))
            limited[name] |= prof.stopped_early
    first = rates["(as written)"]
    rows = []
    for name, (r, a) in arms.items():
        if r is None:
            rows.append({"set": name, "error": a})
            continue
        got = rates[name]
        ratios = [x / b for x, b in zip(got, first)]
        rows.append({"set": name, "images_per_s": statistics.median(got) if got else None,
                     "vs_recipe": statistics.median(ratios) if ratios else None, "rounds": len(ratios),
                     "time_limited": limited[name]})
    return rows


def machine(data_folder: Path, refresh: bool = False, progress: Callable[[str], None] = lambda s: None,
            quick: bool = False) -> dict[str, Any]:
    """This machine's limits (bench.machine), measured once and cached per machine (`quick`: smaller
    sizes and fewer repeats, seconds instead of ten, cached apart)."""
    from cnnlab.bench import machine as m

    facts, hit = m.cached(data_folder, refresh=refresh, progress=progress, quick=quick)
    return {**facts, "cache_hit": hit}


def _peak(facts: dict[str, Any], device: torch.device, precision: str) -> float | None:
    """The measured matmul peak (GFLOP/s) of the device in the dtype the precision computes in."""
    dtype = "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else "float32"
    table = (facts.get("matmul") or {}).get(device.type) or {}
    return (table.get(dtype) or {}).get("gflops")


def run(recipe: Recipe, steps: int = 20, warmup: int = 5, memory_budget: str | None = None,
        thread_counts: str | None = None, try_alternatives: bool = False, alt_seconds: float = 5.0,
        on_step: Callable[[str], None] = lambda s: None, machine_quick: bool = False) -> dict[str, Any]:
    """Profile the recipe (see the module's docstring); profile.json and the PNGs in a run folder,
    which is removed again if the profile is stopped before it ends (nothing half-measured)."""
    budget, counts = check_flags(steps, warmup, memory_budget, thread_counts)
    require_one_process(recipe, "profile", "A profile times one process's steps")
    data_folder = _data_folder(recipe)
    folder = new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-profile")
    try:
        with interruptible("profiling"):
            results = _profile(recipe, folder, steps, warmup, budget, counts, try_alternatives, alt_seconds,
                               data_folder, on_step, machine_quick)
    except Interrupted as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise e.kept(f"nothing was kept: the profile's folder {folder} was removed") from None
    finally:
        shutil.rmtree(folder / "scratch", ignore_errors=True)
    return results


def _profile(recipe: Recipe, folder: Path, steps: int, warmup: int, budget: int | None, counts: list[int] | None,
             try_alternatives: bool, alt_seconds: float, data_folder: Path, on_step: Callable[[str], None],
             machine_quick: bool = False) -> dict[str, Any]:
    from cnnlab.io import write_recipe

    write_recipe(folder, recipe.dump())
    scratch = folder / "scratch"
    t0 = time.perf_counter()
    on_step("measuring this machine's limits (cached after the first time)")
    facts = machine(data_folder, progress=lambda s: on_step(f"machine: {s}"), quick=machine_quick)
    on_step("loading the data and the model")
    a = assemble(recipe)
    timed = phases(recipe, a, scratch, steps, warmup, lambda k, n: on_step(f"training step {k} of {n}"))
    device = torch.device("cuda") if recipe.trainer.accelerator in ("gpu", "cuda") or (
        recipe.trainer.accelerator == "auto" and torch.cuda.is_available()) else torch.device("cpu")
    a.module.to(device)
    split = timed["split"]
    share = vd.shares(split)
    dumped = recipe.dump()
    said = vd.verdict(share, dumped, device.type)
    x, y = _batch(recipe, a, timed["images_per_step"])
    n_flops = flops(a, x, y)
    compute_s = sum(split[k] for k in vd.SHARES["compute"])
    peak = _peak(facts, device, recipe.trainer.precision)
    results: dict[str, Any] = {
        "run_dir": str(folder), "recipe": dumped, "device": str(device), "steps": timed, "shares": share,
        "rest_ok": share["rest"] <= vd.REST_LIMIT, "verdict": said,
        "flops": vd.flop_fraction(n_flops, compute_s, peak),
        "machine": {k: facts.get(k) for k in ("facts", "matmul", "memcpy", "h2d", "disk", "precisions", "cache_hit",
                                                "measured_at")},
        "versions": versions(), "seed": recipe.seed}
    on_step("counting memory per layer, predicting and measuring the peak")
    results["memory"] = memory(recipe, a, budget, device)
    if counts:
        results["threads"] = threads(recipe, a, scratch, counts, min(warmup, 2), steps,
                                     lambda k, n: on_step(f"threads: step {k} of {n}"))
    if try_alternatives:
        cands = list(said["candidates"])
        if device.type == "cpu" and torch.cuda.is_available():
            cands.append("trainer.accelerator=gpu")  # the same recipe on the GPU, side by side
        results["alternatives"] = alternatives(recipe, cands, scratch, min(warmup, 2), max(steps // 2, 2), alt_seconds,
                                               lambda s: on_step(f"alternatives: {s}"))
        results["verdict"]["measured"] = vd.measured_advice(results["alternatives"])
    results["wall_time_s"] = time.perf_counter() - t0
    write_json(folder / "profile.json", results)
    from cnnlab.report.profile import plot_memory, plot_split

    plot_split(results, folder / "profile_split.png")
    plot_memory(results, folder / "profile_memory.png")
    return results
