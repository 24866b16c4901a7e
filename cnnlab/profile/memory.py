"""Memory of one training step, counted per layer and measured: what the parameters, their gradients,
the optimizer state and the activations saved for backward hold, a predicted peak built from those
counts, the measured peak to check it against, and the largest batch that fits a budget.

Counting is exact (bytes of real storages, each counted once); the peak is a model, and says what it
adds up (see `predict_peak`). Pure torch: no Lightning, nothing printed."""
from __future__ import annotations

import bisect
import contextlib
import copy
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import UserError

LOSS = "(loss)"  # the row of what loss_fn saves
ROOT = "(net)"  # the row of ops in the network's own forward, outside every child module

LossFn = Callable[[Tensor, Tensor], Tensor]
OptimizerFactory = Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]


@dataclass(frozen=True)
class LayerRow:
    """Bytes one module holds during a training step. `activations`: the storages its ops saved for
    backward first (a storage saved again later, by the next conv, stays with its first saver).
    `grad_out` / `grad_in`: the gradient its backward receives and the one it makes (the bytes of its
    tensor outputs, and of its tensor inputs that need a gradient; the largest over its calls).
    `scratch`: the kernels' temporaries in its backward, bytes allocated and freed again beyond what
    the backward returns (oneDNN's and cuDNN's workspaces), as observed in `per_layer`'s own step."""

    layer: str
    type: str
    params: int
    grads: int
    optimizer: int
    buffers: int
    activations: int
    grad_out: int = 0
    grad_in: int = 0
    scratch: int = 0


@dataclass(frozen=True)
class Saved:
    """One storage saved for backward: its bytes and every module whose ops saved it, first saver first."""

    key: int  # the storage's address during the forward
    nbytes: int
    savers: tuple[str, ...]


@dataclass(frozen=True)
class MemoryReport:
    """Per-layer bytes of one training step on a batch of `batch_size`, rows in forward order (a
    container's row, for ops in its own forward, comes before its children's). `batch_bytes`: the
    inputs and labels (the first conv saves the input, but it is the batch, counted once, here).
    `inputs`: every module's input storages, (key, bytes), for the checkpointing model."""

    rows: list[LayerRow]
    saved: list[Saved]
    batch_size: int
    batch_bytes: int
    batch_keys: frozenset[int] = frozenset()
    optimizer_temp: int = 0  # the optimizer step's largest temporary (see optimizer_temp_bytes)
    inputs: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("params", "grads", "optimizer", "buffers", "activations")
        return {k: sum(getattr(r, k) for r in self.rows) for k in keys}

    @property
    def per_image_activation_bytes(self) -> float:
        return self.totals["activations"] / self.batch_size


def _nbytes(t: Tensor) -> int:
    """Bytes of the whole storage under `t`: a view keeps all of it on the device."""
    return t.untyped_storage().nbytes()


def _key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(obj: Any) -> list[Tensor]:
    """The tensors in a module's inputs or outputs (nested tuples, lists and dicts)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _distinct(tensors: Iterable[Tensor]) -> dict[int, int]:
    """Storage key -> bytes, each storage once."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(_key(t), _nbytes(t))
    return seen


def _distinct_bytes(tensors: Iterable[Tensor]) -> int:
    return sum(_distinct(tensors).values())


def storage_bytes(*held: nn.Module | torch.optim.Optimizer | Tensor) -> int:
    """Bytes of the distinct storages that modules (parameters, their gradients, buffers), optimizers
    (state) and tensors hold, each storage once."""
    found: list[Tensor] = []
    for t in held:
        if isinstance(t, nn.Module):
            found += [*t.parameters(), *(p.grad for p in t.parameters() if p.grad is not None), *t.buffers()]
        elif isinstance(t, torch.optim.Optimizer):
            found += [v for s in t.state.values() for v in s.values() if isinstance(v, Tensor)]
        elif isinstance(t, Tensor):
            found.append(t)
    return _distinct_bytes(found)


def optimizer_temp_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer step's largest temporary, a model: torch's SGD and AdamW make at most two
    parameter-sized temporaries at once (SGD: the weight-decayed gradient and the Nesterov one; AdamW:
    sqrt(v) and the denominator), of one parameter at a time (the for-loop implementation, the default
    on CPU) or of every parameter at once (`foreach`, the default on CUDA)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return 0
    foreach = optimizer.defaults.get("foreach")
    if foreach is None:  # torch's default: foreach when every parameter is on a CUDA-like device
        foreach = all(p.device.type not in ("cpu", "meta") for p in params)
    sizes = [p.numel() * p.element_size() for p in params]
    return 2 * (sum(sizes) if foreach else max(sizes))


def _backward_scratch(loss: Tensor, calls: list[tuple[int, str]]) -> dict[str, int]:
    """Run loss.backward() under the profiler's memory events and return, per module, the largest
    kernel temporary of its backward: for each outermost aten op inside an autograd node, the peak
    of live bytes inside the op above the larger of the levels before and after it (what the op
    returns, its gradients, is counted apart; what it frees again is the kernel's scratch). A node
    belongs to the first module call (forward order) whose output was made at or after it (`calls`:
    (sequence number of the call's last autograd node, module), sorted)."""
    from torch.profiler import ProfilerActivity, profile

    device = loss.device.type.upper()
    with quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type().name == device)
    times = [t for t, _ in memory]
    live = list(itertools.accumulate(n for _, n in memory))
    nodes = sorted((e.start_ns(), e.end_ns(), e.sequence_nr()) for e in events
                   if e.name().startswith("autograd::engine::evaluate_function") and e.sequence_nr() >= 0)
    starts = [n[0] for n in nodes]
    seqs = [s for s, _ in calls]
    scratch: dict[str, int] = {}
    outer_end = -1
    for start, stop in sorted((e.start_ns(), e.end_ns()) for e in events if e.name().startswith("aten::")):
        if start < outer_end:
            continue  # inside an op already measured
        outer_end = stop
        j = bisect.bisect_right(starts, start) - 1
        if j < 0 or stop > nodes[j][1]:
            continue  # not inside a node
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, stop)
        if lo == hi:
            continue
        before = live[lo - 1] if lo else 0
        temp = max(live[lo:hi]) - max(before, live[hi - 1])
        i = bisect.bisect_left(seqs, nodes[j][2])
        who = calls[i][1] if i < len(calls) else LOSS
        scratch[who] = max(scratch.get(who, 0), temp)
    return scratch


class _Forward:
    """Hooks that watch one forward: which module runs (a stack, for attribution), the storages
    saved for backward and who saved them, every module's inputs and output gradients' sizes."""

    def __init__(self, net: nn.Module, skip: set[int]):
        self.names = {m: n or ROOT for n, m in net.named_modules()}
        self.skip = skip  # storages that are not activations: parameters, buffers, the batch
        self.order: list[str] = []  # modules in the order their forward first ran
        self.stack: list[str] = []
        self.grad_in: dict[str, int] = {}
        self.grad_out: dict[str, int] = {}
        self.inputs: dict[str, tuple[tuple[int, int], ...]] = {}
        self.calls: list[tuple[int, str]] = []  # (sequence number of a leaf call's last autograd node, leaf)
        self.alive: list[list[Tensor]] = []  # every module's inputs, held for the forward: no address is reused
        self.saved: dict[int, tuple[int, list[str]]] = {}  # storage key -> (bytes, savers)

    def pre(self, module: nn.Module, args: tuple) -> None:
        name = self.names[module]
        self.stack.append(name)
        if name not in self.order:
            self.order.append(name)
        ts = _tensors(args)
        self.alive.append(ts)
        self.inputs.setdefault(name, tuple(_distinct(ts).items()))
        self.grad_in[name] = max(self.grad_in.get(name, 0), _distinct_bytes(t for t in ts if t.requires_grad))

    def post(self, module: nn.Module, args: tuple, out: Any) -> None:
        name = self.stack.pop()
        ts = [t for t in _tensors(out) if t.requires_grad]
        self.grad_out[name] = max(self.grad_out.get(name, 0), _distinct_bytes(ts))
        seqs = [t.grad_fn._sequence_nr() for t in ts if t.grad_fn is not None]
        if seqs and not list(module.children()):
            self.calls.append((max(seqs), name))

    def pack(self, t: Tensor) -> Tensor:
        key = _key(t)
        if key not in self.skip and t.device.type != "meta":
            _, savers = self.saved.setdefault(key, (_nbytes(t), []))
            who = self.stack[-1] if self.stack else LOSS
            if who not in savers:
                savers.append(who)
        return t

    def run(self, net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        handles = [m.register_forward_pre_hook(self.pre) for m in net.modules()]
        handles += [m.register_forward_hook(self.post) for m in net.modules()]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
                loss = loss_fn(net(x), y)
        finally:
            for h in handles:
                h.remove()
            self.alive.clear()
        self.order.append(LOSS)
        return loss


def per_layer(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, optimizer_factory: OptimizerFactory) -> MemoryReport:
    """Count, per module, the bytes of one training step of `net` on (x, y): parameters, gradients
    (of parameters that require grad), optimizer state (the real `optimizer.state` tensors after one
    step of `optimizer_factory(named parameters)`), buffers, and the activations saved for backward
    (seen by a saved-tensors pack hook, attributed to the innermost module whose forward is running,
    each storage counted once, parameter, buffer and batch storages left out); and what its backward
    needs for a moment (see LayerRow). Runs on a deep copy: `net` (its weights, its BatchNorm
    statistics) is left as it was. For a plain network: checkpointing is predicted from its report
    (predict_peak's `checkpointed`)."""
    if x.ndim < 1 or len(x) != len(y):
        raise ValueError(f"x and y must hold the same batch, got {tuple(x.shape)} and {tuple(y.shape)}")
    work = copy.deepcopy(net).train()
    batch = _distinct([x, y])
    fwd = _Forward(work, {_key(t) for t in [*work.parameters(), *work.buffers()]} | set(batch))
    loss = fwd.run(work, x, y, loss_fn)

    named = list(work.named_parameters())
    optimizer = optimizer_factory(named)
    optimizer.zero_grad(set_to_none=True)
    scratch = _backward_scratch(loss, sorted(fwd.calls))
    temp = optimizer_temp_bytes(optimizer)
    optimizer.step()
    state = {id(p): _distinct_bytes(v for v in optimizer.state.get(p, {}).values() if isinstance(v, Tensor))
             for _, p in named}

    act = dict.fromkeys(fwd.order, 0)
    for nbytes, savers in fwd.saved.values():
        act[savers[0]] += nbytes
    savers_of_all = {n for _, savers in fwd.saved.values() for n in savers}
    counted: set[int] = set()  # a parameter shared by two modules is the first one's

    def own(ts: Iterable[Tensor]) -> list[Tensor]:
        out = [t for t in ts if _key(t) not in counted]
        counted.update(_key(t) for t in out)
        return out

    rows = []
    for name in fwd.order + [n for n in fwd.names.values() if n not in fwd.order]:
        module = work if name == ROOT else None if name == LOSS else work.get_submodule(name)
        ps = [] if module is None else own(module.parameters(recurse=False))
        bs = [] if module is None else own(module.buffers(recurse=False))
        if module is not None and list(module.children()) and not (ps or bs or name in savers_of_all):
            continue  # a container: its children have the rows
        kind = getattr(loss_fn, "__name__", type(loss_fn).__name__) if module is None else type(module).__name__
        rows.append(LayerRow(
            layer=name, type=kind, params=_distinct_bytes(ps), grads=_distinct_bytes(p for p in ps if p.requires_grad),
            optimizer=sum(state.get(id(p), 0) for p in ps), buffers=_distinct_bytes(bs), activations=act.get(name, 0),
            grad_out=fwd.grad_out.get(name, 0), grad_in=fwd.grad_in.get(name, 0), scratch=scratch.get(name, 0)))
    saved = [Saved(k, b, tuple(s)) for k, (b, s) in fwd.saved.items()]
    return MemoryReport(rows=rows, saved=saved, batch_size=len(x), batch_bytes=sum(batch.values()),
                        batch_keys=frozenset(batch), optimizer_temp=temp, inputs=fwd.inputs)


def _inside(name: str, stages: Sequence[str]) -> str | None:
    """The stage `name` belongs to (the stage itself or a module in it), or None."""
    return next((s for s in stages if name == s or name.startswith(s + ".")), None)


def _lifetimes(report: MemoryReport, stages: Sequence[str]) -> list[tuple[int, int, int, str]]:
    """Saved storages as (from row, to row, bytes, what): live while the backward walks the rows from
    `from` down to `to` (from == len(rows): since the forward). Plain ("saved"): a storage lives from
    the forward until its first saver's backward ran. Under checkpointing of `stages`, a stage saves
    nothing in the forward but keeps its input ("input", until the stage's backward is done; nothing
    more when the storage is saved outside the stage anyway or is the batch); entering a stage,
    backward recomputes what it saved ("recomputed"), which lives until its first saver in it ran."""
    pos = {r.layer: i for i, r in enumerate(report.rows)}
    end = len(report.rows)
    span = {}
    for s in stages:
        rows = [pos[r.layer] for r in report.rows if _inside(r.layer, [s])]
        if rows:
            span[s] = (max(rows), min(rows))
    out, held = [], set(report.batch_keys)
    for buf in report.saved:
        outside = [n for n in buf.savers if _inside(n, stages) is None]
        if outside:
            out.append((end, pos[outside[0]], buf.nbytes, "saved"))
            held.add(buf.key)
        for s in dict.fromkeys(_inside(n, stages) for n in buf.savers if n not in outside):
            if buf.key in dict(report.inputs.get(s, ())):
                continue  # the stage's own input: kept, not recomputed
            first = next(n for n in buf.savers if _inside(n, [s]))
            out.append((span[s][0], pos[first], buf.nbytes, "recomputed"))
    for s, (_, first) in span.items():
        for key, nbytes in report.inputs.get(s, ()):
            if key not in held:
                out.append((end, first, nbytes, "input"))
                held.add(key)
    return out


def predict_peak(report: MemoryReport, *, grads_held_in_forward: bool = True,
                 checkpointed: Sequence[str] = ()) -> dict[str, int]:
    """The predicted peak bytes of one training step, and its parts.

    Parts: parameters, buffers, gradients, optimizer state, saved activations, the batch (inputs and
    labels), `workspace` (the backward's transient gradients, approximated by the largest layer's
    input-gradient plus output-gradient) and `scratch` (the largest kernel temporary seen in a
    backward). `upper_bound` adds every part as if all were live at once.

    `total` follows the step instead (Lightning's order: forward, zero_grad, backward, step) and is
    the largest of three moments, each on top of parameters + buffers + optimizer state + batch:
      forward_end     every saved activation (+ the previous step's gradients: Lightning frees them
                      after the forward, `grads_held_in_forward`)
      backward        walking the layers backwards, at layer i: the saved activations still live
                      (a storage is freed once its first saver's backward ran) + the gradients of
                      the parameters from layer i on + layer i's input- and output-gradient + its
                      kernel scratch
      optimizer_step  every gradient + the optimizer's largest temporary
    `checkpointed`: stage names run under activation checkpointing; their activations are then
    live only while backward walks that stage (recomputed on entering it), their inputs all along.
    Not counted: allocator rounding and caching, and forward temporaries freed before the forward ends."""
    t = report.totals
    rows, end = report.rows, len(report.rows)
    base = t["params"] + t["buffers"] + t["optimizer"] + report.batch_bytes
    lives = _lifetimes(report, checkpointed)
    in_forward = sum(n for start, _, n, _ in lives if start == end)
    forward_end = base + in_forward + (t["grads"] if grads_held_in_forward else 0)
    backward, grads = 0, 0
    for i in range(end - 1, -1, -1):
        r = rows[i]
        grads += r.grads
        acts = sum(n for start, to, n, _ in lives if to <= i <= start)
        backward = max(backward, base + acts + grads + r.grad_in + r.grad_out + r.scratch)
    optimizer_step = base + t["grads"] + report.optimizer_temp
    workspace = max((r.grad_in + r.grad_out for r in rows), default=0)
    scratch = max((r.scratch for r in rows), default=0)
    return {"params": t["params"], "buffers": t["buffers"], "grads": t["grads"], "optimizer": t["optimizer"],
            "activations": in_forward, "workspace": workspace, "scratch": scratch, "batch": report.batch_bytes,
            "upper_bound": base + t["grads"] + in_forward + workspace + scratch,
            "forward_end": forward_end, "backward": backward, "optimizer_step": optimizer_step,
            "total": max(forward_end, backward, optimizer_step)}


def checkpoint_saving(report: MemoryReport, stages: Sequence[str]) -> dict[str, int]:
    """What checkpointing `stages` should save, two ways. `simple`: the activations saved only inside
    those stages (`freed`), minus what the checkpointed stages still keep (their inputs) and minus the
    largest stage's activations, recomputed during backward. `walk`: the drop of predict_peak's total
    (the moment of the peak may move)."""
    lives = _lifetimes(report, stages)
    freed = sum(b.nbytes for b in report.saved if all(_inside(n, stages) for n in b.savers))
    kept = sum(n for _, _, n, what in lives if what == "input")
    per_stage = {s: sum(n for start, to, n, what in lives if what == "recomputed" and _inside(report.rows[to].layer, [s]))
                 for s in stages}
    recomputed = max(per_stage.values(), default=0)
    walk = predict_peak(report)["total"] - predict_peak(report, checkpointed=stages)["total"]
    return {"freed": freed, "kept_inputs": kept, "recomputed": recomputed, "simple": freed - kept - recomputed, "walk": walk}


def train_step(net: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, optimizer: torch.optim.Optimizer) -> Tensor:
    """One training step in Lightning's automatic-optimization order (forward and loss, zero_grad,
    backward, optimizer step): the step `predict_peak` models. Returns the loss, detached."""
    loss = loss_fn(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# torch's profiler (kineto) logs each start and stop to stderr, and an ERROR line on a machine
# without a GPU: level 6 keeps it quiet (read when the profiler first starts; a user's setting wins)
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Native stderr (file descriptor 2) to /dev/null while torch's profiler records: its C++ side
    warns, once per process and on stderr directly, that a block allocated before the recording
    was freed during it, which the measurement already allows for (the warm-up steps run inside
    the recording). Python's own errors are exceptions, not affected."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

CPU_METHOD = "torch.profiler memory events: peak of live CPU tensor bytes (+ the bytes held when the step starts)"
CUDA_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"


def measure_peak_cpu(step_fn: Callable[[], Any], *held: nn.Module | torch.optim.Optimizer | Tensor,
                     warmup: int = 1) -> tuple[int, str]:
    """The peak of live CPU tensor bytes over one call of `step_fn`: what `held` holds when the call
    starts (the network's parameters, gradients and buffers, the optimizer's state, the batch; see
    `storage_bytes`) plus the largest running sum of the profiler's memory events (every allocation
    and free) during the call. The CPU allocator keeps no statistics, and the profiler only sees the
    free of a block allocated while a profiler recorded, so `warmup` calls run inside the recording
    first: what the measured call frees (the previous step's gradients) was allocated there."""
    from torch.profiler import ProfilerActivity, profile, record_function

    window = "cnnlab::measured_step"
    with quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(warmup):
            step_fn()
        start_bytes = storage_bytes(*held)
        with record_function(window):
            step_fn()
    events = prof.profiler.kineto_results.events()
    [mark] = [e for e in events if e.name() == window]
    live = peak = 0
    for t, n in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type().name == "CPU"):
        if mark.start_ns() <= t <= mark.end_ns():
            live += n
            peak = max(peak, live)
    return start_bytes + peak, CPU_METHOD


def measure_peak_cuda(step_fn: Callable[[], Any], device: torch.device | str | int, warmup: int = 1) -> tuple[int, str]:
    """The peak of allocated CUDA bytes over one call of `step_fn` (after `warmup` calls), everything
    live on the device included: torch's allocator keeps the statistic."""
    if not torch.cuda.is_available():
        raise RuntimeError("measure_peak_cuda needs a CUDA device; use measure_peak_cpu")
    for _ in range(warmup):
        step_fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step_fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), CUDA_METHOD


def batch_scaling(small: MemoryReport, large: MemoryReport) -> tuple[float, int]:
    """(per_image_bytes, fixed_bytes) of the predicted peak, a line through predict_peak's totals at
    two batch sizes. Per image: the saved activations, the backward's transient gradients and the
    batch itself; fixed: parameters, buffers, gradients, optimizer state. A kernel's scratch can be
    either (oneDNN's weight-gradient reduction buffers are weight-sized, its reorders image-sized),
    which two sizes tell apart and one cannot."""
    if large.batch_size <= small.batch_size:
        raise ValueError(f"two batch sizes, the second larger; got {small.batch_size} and {large.batch_size}")
    a, b = predict_peak(small)["total"], predict_peak(large)["total"]
    per_image = (b - a) / (large.batch_size - small.batch_size)
    return per_image, round(a - per_image * small.batch_size)


def largest_batch(per_image_bytes: float, fixed_bytes: int, budget_bytes: int) -> int:
    """The largest batch whose predicted peak, fixed_bytes + batch * per_image_bytes (see
    batch_scaling), fits the budget; 0 if one image does not."""
    if per_image_bytes <= 0:
        raise ValueError(f"per_image_bytes must be > 0, got {per_image_bytes}")
    return max(0, math.floor((budget_bytes - fixed_bytes) / per_image_bytes))


SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*")


def parse_bytes(text: str, flag: str = "--memory-budget") -> int:
    """'12GB' -> 12_000_000_000, '1.5GiB' -> 1_610_612_736: B, KB, MB, GB, TB (powers of 1000) and KiB,
    MiB, GiB (powers of 1024), any case. Anything else, zero or a negative size is the user's error."""
    m = _SIZE.fullmatch(str(text).lower())
    value = float(m.group(1)) * SIZE_UNITS[m.group(2)] if m and m.group(2) in SIZE_UNITS else 0
    if value < 1:
        raise UserError(f"{flag} {text}: not a size; use e.g. 12GB, 512MiB")
    return int(value)
