"""Experiment trackers beside metrics.csv (`output.loggers`): Lightning's TensorBoardLogger and
MLFlowLogger, pointed at the run folder once global rank 0 has made it; for a sweep, one TensorBoard
folder and one MLflow parent run that its cells join, each cell a sub-folder and a child run.

Only global rank 0 logs: Lightning's loggers are rank-zero-only, the MLflow logger is made on global
rank 0 alone (its client opens the store as it is made), and every direct MLflow call here runs there.
Nothing imports mlflow or tensorboard until a tracker is built: `import mlflow` alone takes seconds."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from cnnlab.errors import UserError
from cnnlab.recipe import Recipe
from cnnlab.spec import OutputSpec, missing_trackers, tracker_problem

if TYPE_CHECKING:
    from mlflow import MlflowClient

# seconds a connection to the default SQLite store waits for another writer's lock before "database is
# locked": parallel sweep cells write to one file. MLflow sets 20 s inside its sessions itself; this
# (sqlite3.connect's timeout, from the URL) also covers opening the store: its schema check and migrations
BUSY_TIMEOUT_S = 60
STATUSES = ("FINISHED", "KILLED", "FAILED")
RUN_FILES = ("recipe.yaml", "results.json", "tta.json", "curves.png", "tta.png")  # artifacts of a run, those there are
PARAM_CHARS = 500  # of a parameter's value: what every MLflow since 1.28 keeps (newer ones keep more)
PARAMS_PER_CALL = 100  # MLflow's limit per log_batch
RUN_DIR_TAG = "cnnlab.run_dir"


# --------------------------------------------------------------------------- where the store is


def mlflow_uri(output: OutputSpec) -> str:
    """`output.mlflow_uri`, else the SQLite store <output.dir>/mlflow.db by absolute path (a sweep's
    cells, and `mlflow ui`, may start from other folders) with a busy timeout, so that parallel
    writers wait for each other instead of failing with "database is locked"."""
    if output.mlflow_uri is not None:
        return output.mlflow_uri
    return f"sqlite:///{(Path(output.dir) / 'mlflow.db').resolve()}?timeout={BUSY_TIMEOUT_S}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store (a server, sqlite in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its runs' files: <folder of the SQLite file>/mlartifacts, beside the
    store (MLflow's default is ./mlruns in whatever folder the command ran from); for any other store,
    None: the server decides."""
    db = sqlite_file(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def experiment_name(output: OutputSpec) -> str:
    return output.mlflow_experiment or output.name or "cnnlab"


def _quiet_mlflow() -> None:
    """Keep the console for cnnlab: no INFO lines from MLflow and alembic when a store is made, no
    alembic warnings about its own migrations."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="alembic")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` between processes of this machine (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: two first connections at once may still race
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client(uri: str) -> "MlflowClient":
    """A client of the store at `uri`. The first connection to a new SQLite store creates its tables
    (seconds); two processes doing that at once break each other's migration, so it happens under a
    lock file beside the database. MLflow keeps the open store per process: later clients are free."""
    from mlflow import MlflowClient

    _quiet_mlflow()  # after the import, which sets MLflow's own logging up
    db = sqlite_file(uri)
    if db is None:
        return MlflowClient(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(db.with_name(db.name + ".lock")):
        return MlflowClient(uri)


def _experiment(c: "MlflowClient", name: str, uri: str) -> str:
    """The id of experiment `name`, made if missing; when two processes make it at once, both get the
    one that was made."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "active":
        raise UserError(f"output.mlflow_experiment: {name!r} is a deleted experiment in {uri}; restore it "
                        "(mlflow experiments restore) or name another")
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def open_store(uri: str, experiment: str) -> tuple["MlflowClient", str]:
    """(client, experiment id) of the store at `uri`, the experiment made if missing. A store that
    cannot be used (an unknown scheme, a server that does not answer once MLflow's retries are spent,
    a database that cannot be opened) is a user error naming output.mlflow_uri."""
    from mlflow.exceptions import MlflowException

    unusable: tuple[type[Exception], ...] = (MlflowException,)
    with contextlib.suppress(ImportError):  # SQLAlchemy comes with mlflow's SQL stores, not with mlflow-skinny
        from sqlalchemy.exc import SQLAlchemyError

        unusable += (SQLAlchemyError,)
    try:
        c = client(uri)
        return c, _experiment(c, experiment, uri)
    except unusable as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"output.mlflow_uri: cannot use the MLflow store {uri}: {why}") from None


# --------------------------------------------------------------------------- parameters


def params(recipe: dict[str, Any]) -> dict[str, str]:
    """The resolved recipe as MLflow parameters: sections flattened to dotted keys (`optim.lr`,
    `model.widths`); a string as it is, anything else as JSON (`0.1`, `[16, 32, 32]`, `null`), so a
    value reads as it does in recipe.yaml."""
    out: dict[str, str] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = re.sub(r"[^\w\-. /:]", "_", f"{prefix}{k}")  # the characters MLflow allows in a key
            if isinstance(v, dict) and v:
                walk(v, f"{key}.")
            else:
                out[key] = v if isinstance(v, str) else json.dumps(v)

    walk(recipe, "")
    return out


def _log_params(c: "MlflowClient", run_id: str, flat: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:PARAM_CHARS]) for k, v in flat.items()]
    for i in range(0, len(items), PARAMS_PER_CALL):
        c.log_batch(run_id, params=items[i:i + PARAMS_PER_CALL])


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")


def _check_installed(names: list[str]) -> None:
    """A recipe loaded without the pre-flight (e.g. read back to resume) still fails as a user error."""
    missing = missing_trackers(names)
    if missing:
        raise UserError(f"output.loggers: {tracker_problem(missing)}")


# --------------------------------------------------------------------------- a sweep's grouping


@dataclass
class Group:
    """A sweep's trackers, made once by its driver before any cell starts (and kept in its plan.json):
    each cell's TensorBoard folder is `<tensorboard_dir>/<cell>`, each cell's MLflow run a child of
    `parent_run_id` in `experiment`. A field is None when the recipe does not log to that tracker."""

    name: str
    tensorboard_dir: str | None = None
    mlflow_uri: str | None = None
    experiment: str | None = None  # its name: Lightning's MLFlowLogger finds the experiment by name
    experiment_id: str | None = None
    parent_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Group":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def open_group(recipe: Recipe, sweep_dir: Path, name: str) -> Group | None:
    """Called by a sweep's driver once, before any cell starts (cells in parallel must not race to
    make the store): the MLflow store (its first connection runs the migrations), the experiment and
    a parent run holding the base recipe's parameters; the TensorBoard folder <sweep_dir>/tensorboard.
    None when the recipe logs to metrics.csv only."""
    wanted = [n for n in recipe.output.loggers if n != "csv"]
    if not wanted:
        return None
    _check_installed(wanted)
    group = Group(name)
    if "tensorboard" in wanted:
        tb = Path(sweep_dir).resolve() / "tensorboard"
        tb.mkdir(parents=True, exist_ok=True)
        group.tensorboard_dir = str(tb)
    if "mlflow" in wanted:
        uri = mlflow_uri(recipe.output)
        group.mlflow_uri, group.experiment = uri, experiment_name(recipe.output)
        c, group.experiment_id = open_store(uri, group.experiment)
        parent = c.create_run(group.experiment_id, run_name=name, tags={"cnnlab.sweep_dir": str(Path(sweep_dir).resolve())})
        group.parent_run_id = parent.info.run_id
        base = recipe.dump()
        base.pop("sweep", None)  # the cells' own parameters say what varies
        _log_params(c, group.parent_run_id, params(base))
    return group


def close_group(group: Group | None, summary: dict[str, Any], files: list[Path], status: str = "FINISHED") -> None:
    """The sweep's end: its files (sweep.json, its plots; those that exist) and `summary` (as
    summary.json; its top-level numbers also as metrics, to sort sweeps by) go to the parent run,
    which then ends with `status` (FINISHED, KILLED, FAILED)."""
    _check_status(status)
    if group is None or group.parent_run_id is None:
        return
    c, run_id = client(group.mlflow_uri), group.parent_run_id
    for f in map(Path, files):
        if f.is_file():
            c.log_artifact(run_id, str(f))
    plain = json.loads(json.dumps(summary, default=str))
    c.log_dict(run_id, plain, "summary.json")
    for k, v in plain.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            c.log_metric(run_id, re.sub(r"[^\w\-. /]", "_", k), float(v))
    c.set_terminated(run_id, status)


# --------------------------------------------------------------------------- one run's loggers


class RunTensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger writing straight into one folder: a sweep cell's (known when the
    logger is made), else <run folder>/tensorboard, set by `start` once global rank 0 has made the run
    folder (the Trainer is built before it exists)."""

    def __init__(self, folder: Path | None = None):
        super().__init__(save_dir=str(folder or ""), name="", version="", default_hp_metric=False)
        self.folder = Path(folder) if folder is not None else None

    def start(self, folder: Path) -> None:
        if self.folder is None:
            self.folder = Path(folder)

    def _where(self) -> str:
        if self.folder is None:
            raise RuntimeError("RunTensorBoard has no folder: trackers.start runs on global rank 0 before fit")
        return str(self.folder)

    @property
    def root_dir(self) -> str:
        return self._where()

    @property
    def log_dir(self) -> str:
        return self._where()

    @property
    def save_dir(self) -> str:
        return self._where()


def _mlflow_logger(output: OutputSpec, group: Group | None, cell: str | None) -> MLFlowLogger:
    """An MLFlowLogger whose store and experiment exist (made here if new); in a group, a child of the
    sweep's run named by the cell; else named by the run folder, in `start`."""
    if group is not None and group.parent_run_id is not None:
        uri, experiment = group.mlflow_uri, group.experiment
        tags = {"mlflow.parentRunId": group.parent_run_id, "mlflow.runName": cell, "cnnlab.sweep": group.name}
    else:
        uri, experiment, tags = mlflow_uri(output), experiment_name(output), {}
    open_store(uri, experiment)  # the store made under the lock, before the logger opens it
    return MLFlowLogger(experiment_name=experiment, tracking_uri=uri, tags=tags, artifact_location=artifact_location(uri))


def build(recipe: Recipe, group: Group | None = None, cell: str | None = None) -> list[Logger]:
    """The trackers of `output.loggers` beyond csv (MetricsCSV is the Trainer's own, always first), for
    one run: alone, TensorBoard writes into the run folder and the MLflow run is named by it; in a
    `group`, into the sweep's TensorBoard folder under `cell`, as a child run named `cell`. The
    MLflow logger exists on global rank 0 only: its client opens the store when made."""
    if group is not None and not cell:
        raise ValueError("a cell of a group needs its name (`cell`)")
    wanted = [n for n in recipe.output.loggers if n != "csv"]
    _check_installed(wanted)
    out: list[Logger] = []
    if "tensorboard" in wanted:
        fixed = Path(group.tensorboard_dir) / cell if group is not None and group.tensorboard_dir else None
        out.append(RunTensorBoard(fixed))
    if "mlflow" in wanted and rank_zero_only.rank == 0:
        out.append(_mlflow_logger(recipe.output, group, cell))
    return out


@rank_zero_only
def start(loggers: list[Logger], run_dir: Path, recipe: Recipe) -> None:
    """On global rank 0 once the run folder exists, before `fit`: TensorBoard writes into
    <run_dir>/tensorboard (unless a sweep gave it a folder); the MLflow run is made, named by the run
    folder (outside a sweep), with the resolved recipe as parameters. Made here, in the process that
    launches the fit, so that ddp_spawn's workers log into this run, not one each."""
    run_dir = Path(run_dir)
    flat = params(recipe.dump())
    for lg in loggers:
        if isinstance(lg, RunTensorBoard):
            lg.start(run_dir / "tensorboard")
            lg.log_hyperparams(flat)  # kept as hparams.yaml beside the event files
        elif isinstance(lg, MLFlowLogger):
            lg.tags.setdefault("mlflow.runName", run_dir.name)
            lg.tags[RUN_DIR_TAG] = str(run_dir.resolve())
            _log_params(lg.experiment, lg.run_id, flat)


@rank_zero_only
def finish(loggers: list[Logger], run_dir: Path, status: str = "FINISHED", checkpoint: str | Path | None = None) -> None:
    """On global rank 0 once the run's files are written: its MLflow run gets them as artifacts
    (recipe.yaml, results.json, curves.png, tta.json, tta.png: those there are) and the checkpoint's
    path as the tag `checkpoint`, then ends with `status` (FINISHED; KILLED for a run stopped by a
    signal; FAILED for one that diverged). TensorBoard needs nothing: Lightning flushed it."""
    _check_status(status)
    for lg in loggers:
        if isinstance(lg, MLFlowLogger) and RUN_DIR_TAG in (lg.tags or {}):  # started: its run exists
            c, run_id = lg.experiment, lg.run_id
            for name in RUN_FILES:
                if (Path(run_dir) / name).is_file():
                    c.log_artifact(run_id, str(Path(run_dir) / name))
            if checkpoint:
                c.set_tag(run_id, "checkpoint", str(checkpoint))
            c.set_terminated(run_id, status)
