"""Running a sweep: every trial (a cell at a seed) validated up front, then trained as an ordinary
run in the sweep's folder, in this process, side by side in processes on this machine, or as jobs
through submitit; each trial's outcome recorded as it ends, and the sweep resumable.

Layout of a sweep folder:
  plan.json              the base recipe, the cells, the trials, jobs and threads
  recipe.yaml            the recipe as given (with its sweep: section)
  cells/<trial>/         an ordinary run folder per trial, and its outcome.json
  sweep.json, sweep.png  the summary (cnnlab.sweep.stats) and the metric against each grid key
  STOP                   written when the sweep is stopped: a trial not yet started does not start

No scheduler of cnnlab's own: the local launcher is the standard library's process pool (one
process per job, forked from the driver where that is safe, `threads` torch threads each, so jobs x
threads never exceeds the cores), the cluster one is submitit's executor (Slurm's scheduler, or
submitit's local executor)."""
from __future__ import annotations

import os
import shutil
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cnnlab.errors import Diverged, Interrupted, UserError
from cnnlab.io import epoch_metrics, write_json, write_recipe
from cnnlab.recipe import Recipe, RecipeError, load
from cnnlab.sweep.grid import Cell, Trial, cells, trials
from cnnlab.sweep.spec import LauncherSpec

PLAN, OUTCOME, STOP = "plan.json", "outcome.json", "STOP"
KEPT = ("done", "diverged")  # outcomes a resumed sweep keeps; failed, interrupted and missing trials run again


@dataclass
class Plan:
    """What a sweep will run, every trial's recipe validated."""

    base: dict[str, Any]  # the recipe without its sweep: section, as plain data
    cells: list[Cell]
    trials: list[Trial]
    seeds: list[int]
    grid: dict[str, list[Any]]
    variants: dict[str, list[str]] | None
    recipes: dict[str, Recipe] = field(default_factory=dict)  # trial id -> its recipe

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "seeds": self.seeds, "grid": self.grid, "variants": self.variants,
                "cells": [{"label": c.label, "overrides": c.overrides, "values": c.values} for c in self.cells],
                "trials": [t.to_dict() for t in self.trials]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str, preflight: bool = True) -> "Plan":
        """The plan a sweep folder's plan.json holds, every trial's recipe validated again (and, with
        `preflight`, checked against this machine). Raises KeyError or TypeError for a record that
        is not a plan."""
        ts = [Trial(**t) for t in d["trials"]]
        p = cls(d["base"], [Cell(c["label"], c["overrides"], c["values"]) for c in d["cells"]], ts, d["seeds"],
                d["grid"], d["variants"])
        p.recipes = {t.id: trial_recipe(p.base, t.overrides, t.seed, f"{source} trial {t.id}", preflight) for t in ts}
        return p


def trial_recipe(base: dict[str, Any], overrides: list[str], seed: int, source: str, preflight: bool = False) -> Recipe:
    """A trial's recipe: the sweep's base with the cell's overrides and the seed. Raises RecipeError."""
    return load(None, [*overrides, f"seed={seed}"], base=base, preflight=preflight, source=source)


def plan(recipe: Recipe, grid: dict[str, list[Any]] | None = None, seeds: list[int] | None = None,
         source: str = "the sweep", preflight: bool = True) -> Plan:
    """The recipe's sweep (its sweep: section, `grid` keys added to or replacing its grid, `seeds`
    replacing its seeds), every cell validated against the recipe's schema: every problem of every
    cell at once, before anything runs. Without a sweep: section or seeds, the recipe's own seed."""
    spec = recipe.sweep
    grid = {**((spec.grid if spec else None) or {}), **(grid or {})}
    variants = spec.variants if spec else None
    seeds = seeds or (spec.seeds if spec else [recipe.seed])
    base = recipe.dump()
    base.pop("sweep")
    cell_list = cells(variants, grid)
    problems: list[str] = []
    for c in cell_list:
        try:
            trial_recipe(base, c.overrides, seeds[0], "--set overrides", preflight)
        except RecipeError as e:
            problems += [_where(c, p.strip(), grid, variants) for p in e.problems]
    if problems:
        problems = list(dict.fromkeys(problems))
        if len(problems) == 1:
            raise UserError(f"{source}: {problems[0]}")
        raise RecipeError(source, problems)
    ts = trials(cell_list, seeds)
    p = Plan(base, cell_list, ts, seeds, grid, variants)
    p.recipes = {t.id: trial_recipe(base, t.overrides, t.seed, f"sweep trial {t.id}") for t in ts}
    return p


def _where(c: Cell, problem: str, grid: dict[str, list[Any]], variants: dict[str, list[str]] | None) -> str:
    """A cell's problem named by where the user wrote it: the --grid key and value, or the variant."""
    key = problem.split(" ", 1)[0]
    if key in grid:
        why = problem.split(": ", 1)[-1]
        return f"--grid {key}, value {c.values[key]!r}: {why}"
    return f"cell {c.label!r}: {problem}"


# --------------------------------------------------------------------------- jobs and threads

def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def on_gpu(recipe: Recipe) -> bool:
    import torch

    a = recipe.trainer.accelerator
    return a in ("gpu", "cuda") or (a == "auto" and torch.cuda.is_available())


def resources(spec: LauncherSpec, n_trials: int, gpu: bool, cluster: bool) -> tuple[int, int, str]:
    """(jobs, torch threads per job, why) for this machine. `auto` jobs: on a CPU one single-thread
    cell per core, since a small CNN scales poorly with threads: two 1-thread runs side by side
    finished sooner than two 2-thread runs in turn on a 2-core machine (docs/sweeps.md has the
    measurement); with a GPU one cell at a time (cells would share its memory and queue on it);
    on a cluster every cell at once (the scheduler decides). Explicit jobs and threads are checked
    so that jobs x threads never exceeds this machine's cores (a cluster job has its own cores)."""
    n = cores()
    if spec.jobs != "auto":
        jobs, why = spec.jobs, "as asked"
    elif cluster:
        jobs, why = n_trials, "every trial as its own Slurm job (the cluster schedules them)"
    elif gpu:
        jobs, why = 1, "one trial at a time: the trials would share one GPU"
    else:
        jobs = max(1, min(n_trials, n))
        why = f"one single-thread trial per core ({n} cores): small CNNs scale poorly with threads"
    jobs = min(jobs, n_trials)
    threads = spec.threads if spec.threads != "auto" else max(1, n // jobs)
    if not cluster and jobs * threads > n:
        raise UserError(f"launcher: {jobs} jobs x {threads} threads asks for {jobs * threads} threads on {n} cores; "
                        f"at most {n} in all (e.g. --jobs {n} --threads 1, or --jobs 1 --threads {n})")
    return jobs, threads, why


# --------------------------------------------------------------------------- one trial

def _record(path: Path) -> dict[str, Any] | None:
    """A JSON mapping cnnlab wrote (an outcome, results), or None: missing, torn or not a mapping."""
    import json

    try:
        o = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return o if isinstance(o, dict) else None


def finished(folder: Path) -> dict[str, Any] | None:
    """A trial's recorded outcome, if it is one a resumed sweep keeps."""
    o = _record(folder / OUTCOME)
    return o if o is not None and o.get("status") in KEPT else None


def run_trial(sweep_dir: str, trial_id: str, threads: int, progress: bool = False) -> dict[str, Any]:
    """Train one trial into `<sweep_dir>/cells/<trial_id>` and record its outcome there. The entry
    point of every launcher (a pool process, a submitit job, or the driver itself): a trial that
    finished before is returned as it was; one with a checkpoint continues from it; one the
    sweep was stopped before is not started. Never raises for the trial's own failure: a failed,
    diverged or interrupted run is an outcome, and the sweep goes on (or stops, when interrupted)."""
    import json

    import torch

    from cnnlab.engine.callbacks import quiet_lightning
    from cnnlab.engine.run import train
    from cnnlab.engine.trackers import Group

    root = Path(sweep_dir)
    folder = root / "cells" / trial_id
    if (kept := finished(folder)) is not None:
        return kept
    p = json.loads((root / PLAN).read_text())
    t = next(x for x in p["trials"] if x["id"] == trial_id)
    out: dict[str, Any] = {"id": trial_id, "cell": t["cell"], "seed": t["seed"], "run_dir": str(folder), "threads": threads}
    if (root / STOP).exists():
        return {**out, "status": "not started"}
    quiet_lightning()
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    resume = folder if (folder / "checkpoints" / "last.ckpt").is_file() else None
    recipe = None
    try:
        recipe = trial_recipe(p["base"], t["overrides"], t["seed"], f"sweep trial {trial_id}")
        recipe.output.dir, recipe.output.name = str(root / "cells"), trial_id
        group = Group.from_dict(p["tracking"]) if p.get("tracking") else None
        res = train(recipe, resume=resume, run_dir=folder, progress=progress, tracking=group, cell=trial_id)
        out.update(status="done", **_numbers(res, folder))
    except Diverged as e:
        out.update(status="diverged", why=str(e).splitlines()[0], diverged={"step": e.step, "checkpoint": e.checkpoint})
    except Interrupted as e:
        res = _record(folder / "results.json")
        if res and "test_acc" in res:  # the signal came after training: the run finished
            out.update(status="done", **_numbers(res, folder))
        else:
            out.update(status="interrupted", interrupted=e.record(), signum=e.signum)
    except UserError as e:
        out.update(status="failed", why=str(e).splitlines()[0])
    except Exception as e:  # the sweep goes on; the outcome says what happened
        out.update(status="failed", why=f"{type(e).__name__}: {e}".splitlines()[0])
    finally:
        torch.set_num_threads(was)
    out["resumed_from"] = str(resume / "checkpoints" / "last.ckpt") if resume else None
    folder.mkdir(parents=True, exist_ok=True)
    if recipe is not None and not (folder / "recipe.yaml").exists():  # it failed before its run folder was made
        write_recipe(folder, recipe.dump())
    write_json(folder / OUTCOME, out)
    return out


def _numbers(res: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What the summary reads of a finished run, and its loss curve."""
    metrics = folder / "metrics.csv"
    loss = epoch_metrics(metrics).get("train/loss", {}) if metrics.is_file() else {}
    return {"test_acc": res["test_acc"], "test_loss": res["test_loss"], "train_images_per_s": res["train_images_per_s"],
            "wall_time_s": res["wall_time_s"], "final_train_loss": loss[max(loss)] if loss else None,
            "curve": {str(e): v for e, v in sorted(loss.items())}, "weights": res.get("weights"),
            "device": res.get("device")}


# --------------------------------------------------------------------------- launchers

Report = Callable[[dict[str, Any]], None]


def _worker_init(threads: int) -> None:
    """A pool process: its own session (a Ctrl-C at the terminal reaches the driver alone, which
    passes it on once), `threads` torch threads, signals ignored until a fit installs its own."""
    os.setsid()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


class Launch:
    """The trials of one sweep on one launcher; `stop(signum)` passes a signal on to the trials in
    flight (each stops after its current step, keeping a checkpoint) and lets no other start."""

    def __init__(self, root: Path, todo: list[Trial], jobs: int, threads: int, spec: LauncherSpec, report: Report,
                 progress: bool, fork: bool = False):
        self.root, self.todo, self.jobs, self.threads, self.spec = root, todo, jobs, threads, spec
        self.report, self.progress, self.fork = report, progress, fork
        self._stop_hooks: list[Callable[[int], None]] = []

    def run(self) -> None:
        if self.spec.name == "submitit":
            self._submitit()
        elif self.jobs == 1:
            self._here()
        else:
            self._pool()

    def stop(self, signum: int) -> None:
        (self.root / STOP).touch()
        for hook in self._stop_hooks:
            hook(signum)

    def _here(self) -> None:
        """One at a time in this process (progress bars as for one run)."""
        for t in self.todo:
            out = run_trial(str(self.root), t.id, self.threads, self.progress)
            self.report(out)
            if out["status"] == "interrupted":
                raise Interrupted(signal.Signals(out["signum"]).name, out["signum"], what="sweeping")

    def _pool(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork" if self.fork else "spawn")
        with ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_worker_init, initargs=(self.threads,)) as pool:
            def forward(signum: int) -> None:
                for proc in list(getattr(pool, "_processes", {}).values()):
                    try:
                        os.kill(proc.pid, signum)
                    except (ProcessLookupError, PermissionError):
                        pass
            self._stop_hooks.append(forward)
            futures: dict[Future, Trial] = {pool.submit(run_trial, str(self.root), t.id, self.threads): t for t in self.todo}
            self._collect(futures)

    def _collect(self, futures: dict[Future, Trial]) -> None:
        """Report each outcome as it arrives. An Interrupted raised here (a signal to the driver) is
        passed to the trials in flight, and the outcomes they end with are collected before it
        propagates, so the partial table holds them."""
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    self.report(self._outcome(f, futures[f]))
        except Interrupted as e:
            self.stop(e.signum)
            for f in pending:
                f.cancel()
            for f in pending:
                if not f.cancelled():
                    self.report(self._outcome(f, futures[f]))  # waits for the trial to stop
            raise

    def _outcome(self, f: Future, trial: Trial) -> dict[str, Any]:
        try:
            return f.result()
        except Exception as e:  # the process died (killed, out of memory): the trial failed, the sweep goes on
            return {"id": trial.id, "cell": trial.cell, "seed": trial.seed, "status": "failed",
                    "why": f"{type(e).__name__}: {e}".splitlines()[0], "run_dir": str(self.root / "cells" / trial.id)}

    def _submitit(self) -> None:
        """Each trial as a submitit job: Slurm where `sbatch` exists (partition, GPUs, time and memory
        per job from the launcher section), else submitit's local executor. At most `jobs` in flight."""
        try:
            import submitit
        except ImportError:
            raise UserError("launcher.name: submitit is not installed: pip install submitit") from None
        slurm = shutil.which("sbatch") is not None
        ex = submitit.AutoExecutor(folder=str(self.root / "submitit"), cluster=None if slurm else "local")
        s = self.spec
        params: dict[str, Any] = {"timeout_min": s.timeout_min, "name": f"cnnlab-{self.root.name}",
                                  "gpus_per_node": s.gpus_per_job, "cpus_per_task": s.cpus_per_job or self.threads}
        if slurm:
            params.update({k: v for k, v in (("slurm_partition", s.partition), ("mem_gb", s.mem_gb)) if v is not None})
            if s.slurm_args:
                params["slurm_additional_parameters"] = dict(s.slurm_args)
        ex.update_parameters(**params)
        jobs: dict[str, Any] = {}
        lock = threading.Lock()

        def one(t: Trial) -> dict[str, Any]:
            with lock:
                if (self.root / STOP).exists():
                    return {"id": t.id, "cell": t.cell, "seed": t.seed, "status": "not started",
                            "run_dir": str(self.root / "cells" / t.id)}
                jobs[t.id] = job = ex.submit(run_trial, str(self.root), t.id, self.threads)
            return job.result()

        def forward(signum: int) -> None:
            with lock:
                for job in jobs.values():
                    if job.done():
                        continue
                    proc = getattr(job, "_process", None)  # the local executor's job controller
                    if proc is not None:
                        proc.send_signal(signal.SIGTERM)  # it passes SIGTERM on to the trial
                    else:
                        job.cancel(check=False)  # Slurm: scancel sends SIGTERM, then waits KillWait
        self._stop_hooks.append(forward)
        with ThreadPoolExecutor(self.jobs) as threads:
            futures = {threads.submit(one, t): t for t in self.todo}
            self._collect(futures)


# --------------------------------------------------------------------------- the driver

def can_fork(group: Any, gpu: bool) -> bool:
    """Whether pool processes may be forked from the driver rather than started as fresh interpreters.
    A forked worker starts in milliseconds with torch and Lightning already imported; a fresh one
    spends seconds importing them (about 6 s on a 2-core machine, longer than a short trial), which
    took the whole gain of running trials side by side. Forking is safe here: the driver has
    imported torch but run no kernels, and PyTorch resets its thread pools in a forked child, as
    DataLoader workers rely on. Not for trials on a GPU (`--jobs 2` asked for explicitly): asking
    whether CUDA is there initialised its driver in this process, and a forked child cannot use
    CUDA then. Not with an MLflow group: the driver then holds an open SQLite connection, which
    must not be shared across a fork."""
    import multiprocessing

    return ("fork" in multiprocessing.get_all_start_methods() and not gpu
            and (group is None or group.parent_run_id is None))


def drive(p: Plan, root: Path, spec: LauncherSpec, progress: bool = True, on_trial: Report | None = None,
          command: str = "cnnlab sweep", plots: bool = True) -> dict[str, Any]:
    """Run the plan's trials that have no kept outcome in `root` (all of them in a new sweep) and
    summarise every trial: sweep.json, and with `plots` (and the recipe's output.plots) sweep.png
    and curves.png. The recipe's trackers group the trials (an MLflow parent run, one TensorBoard
    folder), made here once before any trial starts. SIGINT or SIGTERM stops the sweep once the
    trials in flight have reached a checkpoint: sweep.json holds the partial table (marked
    interrupted) and `Interrupted` names the command that resumes it."""
    import time

    from cnnlab.engine import trackers
    from cnnlab.engine.signals import interruptible

    first = next(iter(p.recipes.values()))
    slurm = spec.name == "submitit" and shutil.which("sbatch") is not None
    outcomes: dict[str, dict[str, Any]] = {}
    for t in p.trials:
        if (kept := finished(root / "cells" / t.id)) is not None:
            outcomes[t.id] = kept
    todo = [t for t in p.trials if t.id not in outcomes]
    gpu = on_gpu(first)
    jobs, threads, why = resources(spec, max(1, len(todo)), gpu, slurm)
    group_raw = (_record(root / PLAN) or {}).get("tracking")  # a resumed sweep keeps its group: the same parent run
    group = trackers.Group.from_dict(group_raw) if group_raw else trackers.open_group(first, root, root.name)
    record = {**p.to_dict(), "launcher": spec.model_dump(), "jobs": jobs, "threads": threads, "jobs_why": why,
              "cores": cores(), "command": command, "tracking": group.to_dict() if group else None}
    write_json(root / PLAN, record)
    (root / STOP).unlink(missing_ok=True)

    def report(o: dict[str, Any]) -> None:
        if o["status"] == "not started":
            return
        outcomes[o["id"]] = o
        if on_trial is not None:
            on_trial(o)

    t0 = time.perf_counter()
    try:
        with interruptible("sweeping"):
            Launch(root, todo, jobs, threads, spec, report, progress and jobs == 1, can_fork(group, gpu)).run()
    except Interrupted as e:
        s = summary(p, root, outcomes, record, time.perf_counter() - t0)
        finished_n = sum(o["status"] in KEPT for o in outcomes.values())
        s["interrupted"] = {**e.record(), "trials_done": finished_n, "trials_planned": len(p.trials)}
        s["resume"] = f"cnnlab sweep --resume {root}"
        write_json(root / "sweep.json", s)
        e.partial = s
        e = e.kept(f"{finished_n} of {len(p.trials)} trials finished and kept; the partial table is in "
                   f"{root / 'sweep.json'} (marked interrupted)")
        e.resume = s["resume"]
        trackers.close_group(group, _headline(s), [root / "sweep.json"], "KILLED")
        raise e
    s = summary(p, root, outcomes, record, time.perf_counter() - t0)
    write_json(root / "sweep.json", s)
    files = [root / "sweep.json"]
    if plots and first.output.plots and s["rows"]:
        from cnnlab.report.sweep import plot_sweep, plot_sweep_curves

        plot_sweep(s, root / "sweep.png")
        files.append(root / "sweep.png")
        if s["curves"]:
            plot_sweep_curves(s, root / "curves.png")
            files.append(root / "curves.png")
    trackers.close_group(group, _headline(s), files)
    return s


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    """What the parent run records of the sweep as numbers: the best cell's mean accuracy, and size."""
    done = [r for r in s["rows"] if "test_acc" in r]
    best = max(done, key=lambda r: r["test_acc"]) if done else None
    return {"trials": len(s["trials"]), "cells": len(s["cells"]), "wall_time_s": s["wall_time_s"],
            "best_test_acc": best["test_acc"] if best else None, "best_cell": best["cell"] if best else None,
            "rows": s["rows"]}


def summary(p: Plan, root: Path, outcomes: dict[str, dict[str, Any]], record: dict[str, Any],
            wall: float) -> dict[str, Any]:
    """sweep.json's content: the table's rows, every trial's outcome, the loss curves."""
    from cnnlab.env import versions
    from cnnlab.sweep.stats import summarise

    done = [outcomes[t.id] for t in p.trials if t.id in outcomes]
    rows = summarise(done, [c.label for c in p.cells], values={c.label: c.values for c in p.cells})
    curves: dict[str, dict[str, Any]] = {}
    for o in done:
        if o.get("curve"):
            curves.setdefault(o["cell"], {})[str(o["seed"])] = o["curve"]
    return {"sweep_dir": str(root), "cells": [c.label for c in p.cells], "seeds": p.seeds, "grid": p.grid,
            "variants": p.variants, "baseline": rows[0]["cell"] if rows else None, "rows": rows,
            "trials": [{k: v for k, v in o.items() if k != "curve"} for o in done], "curves": curves,
            "jobs": record["jobs"], "threads": record["threads"], "jobs_why": record["jobs_why"],
            "cores": record["cores"], "launcher": record["launcher"]["name"], "wall_time_s": wall,
            "device": next((o["device"] for o in done if o.get("device")), None), "versions": versions()}
