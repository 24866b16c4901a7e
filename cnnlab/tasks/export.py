"""`cnnlab export`: a run's network as one file that runs without cnnlab, ONNX or torch.export's
.pt2, with the normalisation folded in: uint8 images (N, C, H, W) at the run's size in, logits out.

The export is checked before it is written: the very bytes to be written are loaded back
(onnxruntime on the CPU; torch.export.load) and run on real test images of the run's data; their
logits must match the rebuilt cnnlab module's (as `cnnlab eval` computes them) within float32
tolerance, and their top-1 predictions agree on every image that is not a near-tie. A run that
needs a change to be exported (16-bit weights, a conv_impl other than direct, a head trained on
cached features, a 16-bit or mixed trainer.precision) says which, in one line each.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from cnnlab.conv.module import AlgorithmConv2d
from cnnlab.engine.checkpoint import Loaded, load
from cnnlab.env import versions
from cnnlab.errors import UserError
from cnnlab.io import atomic, write_json
from cnnlab.models.checkpointing import is_checkpointed

FORMATS = ("onnx", "pt2")
EXTRA = {"onnx": ("onnx", "onnxscript", "onnxruntime")}  # the optional extra cnnlab[export]
OPSET = 20  # torch 2.14's default ONNX opset; onnxruntime runs it from 1.17 (the extra asks 1.19: numpy 2)
CHECK_IMAGES = 256  # test images the export is checked on (all of them when the split has fewer)
RTOL = 1e-4  # largest |logit difference| allowed, relative to the logit scale: float32 reassociation is ~1e-6
TRACE_BATCH = 2  # the example batch traced for a dynamic batch (torch.export specialises sizes 0 and 1)


class CheckFailed(Exception):
    """The export ran but its file does not compute what the run's network computes (not the user's
    input): the CLI prints the one line and exits with code 3; nothing is written."""


class Deployable(nn.Module):
    """The network as exported: uint8 (N, C, H, W) -> float in [0, 1] -> (x - mean) / std -> net ->
    logits (N, classes). The same arithmetic as Classifier.prepare + forward, in float32, in the
    run's memory format (`in_format` changes it)."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor, memory_format: torch.memory_format):
        super().__init__()
        self.net = net
        self.register_buffer("norm_mean", mean.detach().float().view(1, -1, 1, 1).clone())
        self.register_buffer("norm_std", std.detach().float().view(1, -1, 1, 1).clone())
        self.in_format(memory_format)

    def in_format(self, memory_format: torch.memory_format) -> "Deployable":
        """The weights and the normalised input in `memory_format`, in place (like nn.Module.to)."""
        self.memory_format = memory_format
        self.net.to(memory_format=memory_format)
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255  # (N, C, H, W) uint8 -> [0, 1]
        return self.net(((x - self.norm_mean) / self.norm_std).contiguous(memory_format=self.memory_format))


@dataclass
class Check:
    """How an exported file's logits compare with the reference module's on the same images."""

    images: int
    batch_sizes: list[int]
    max_abs_diff: float
    logit_scale: float  # max |reference logit|, at least 1
    tolerance: float  # RTOL x logit_scale
    top1_agreement: float
    disagreements: int  # top-1 differs where the reference's top two are further apart than the tolerance
    near_ties: int  # reference top-2 gap within the tolerance: a flip there is not a failure
    passed: bool

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- checks before any work


def check_format(fmt: str | None) -> str:
    if fmt is None:
        raise UserError("missing --format: onnx (runs in onnxruntime, without torch) or pt2 (torch.export)")
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not an export format; choose from {', '.join(FORMATS)}")
    return fmt


def check_extra(fmt: str) -> None:
    """The optional packages a format needs, with the one line that installs them."""
    missing = []
    for name in EXTRA.get(fmt, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format {fmt} needs the optional packages {', '.join(EXTRA[fmt])} (missing: "
                        f"{', '.join(missing)}): pip install 'cnnlab[export]'")


def check_static_batch(n: int | None) -> None:
    if n is not None and n < 1:
        raise UserError(f"--static-batch: must be at least 1 (images per batch), got {n}; leave it out for a dynamic batch")


def check_out(out: Path, fmt: str) -> None:
    """A file in a folder that exists and can be written, named for its format."""
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a file name, e.g. {out / f'model.{fmt}'}")
    if not out.parent.is_dir():
        raise UserError(f"--out: the folder {out.parent} does not exist; make it first or write elsewhere")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out: the folder {out.parent} is not writable")
    other = {f".{f}" for f in FORMATS} - {f".{fmt}"}
    if out.suffix in other:
        raise UserError(f"--out: {out.name} ends in {out.suffix}, but --format is {fmt}; end it in .{fmt}")


def default_out(given: Path, ckpt_path: Path, fmt: str) -> Path:
    """RUN_DIR/model.onnx for a run folder, NAME.onnx beside a .ckpt (`best.ckpt` -> `best.onnx`)."""
    return given / f"model.{fmt}" if given.is_dir() else ckpt_path.with_suffix(f".{fmt}")


def sidecar_path(out: Path) -> Path:
    """The metadata beside the export: model.onnx -> model.onnx.json."""
    return out.with_name(out.name + ".json")


# --------------------------------------------------------------------------- the network as exported


def decode_weights(net: nn.Module, lowp: Any) -> None:
    """16-bit master weights (optim.weights) back to float32 parameters, in place: exact, every
    bf16, fp16 and fixed16 value is a float32 one."""
    for name in lowp.names:
        owner, _, attr = name.rpartition(".")
        mod = net.get_submodule(owner)
        decoded = lowp.fmt.decode(mod._buffers.pop(attr))
        mod.register_parameter(attr, nn.Parameter(decoded, requires_grad=False))


def direct_convolutions(net: nn.Module) -> dict[str, int]:
    """Every AlgorithmConv2d (model.conv_impl) back to an nn.Conv2d with the same weights, in place;
    returns how many layers each algorithm ran."""
    swapped: dict[str, int] = {}
    for layer, m in list(net.named_modules()):
        if not isinstance(m, AlgorithmConv2d):
            continue
        if m.algorithm != "direct":
            swapped[m.algorithm] = swapped.get(m.algorithm, 0) + 1
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, m.padding_mode, device="meta")
        conv.weight, conv.bias = m.weight, m.bias
        parent, _, attr = layer.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, conv)
    return swapped


def plain_stages(net: nn.Module) -> None:
    """Activation checkpointing (a training-time trade) off: each stage's own forward again."""
    for m in net.modules():
        if is_checkpointed(m):
            del m.forward
            del m._cnnlab_checkpointed


PRECISION_NOTES = {  # how a run's trainer.precision differs from the export's float32
    "16-mixed": "trained under float16 autocast with float32 weights; the export computes in float32 throughout",
    "bf16-mixed": "trained under bfloat16 autocast with float32 weights; the export computes in float32 throughout",
    "16-true": "the float16 weights are cast up to float32 (exactly); the export computes in float32",
    "bf16-true": "the bfloat16 weights are cast up to float32 (exactly); the export computes in float32",
    "64-true": "the float64 weights are rounded to float32; the export (and its check) computes in float32",
}


def deployable(c: Loaded) -> tuple[Deployable, list[str]]:
    """The loaded run's network as one float32 module from uint8 images to logits, and one line for
    each change the export needed (what it was, what it became)."""
    module, notes = c.module, []
    net = copy.deepcopy(module.net).eval()
    if module.lowp is not None:
        decode_weights(net, module.lowp)
        notes.append(f"optim.weights {module.lowp.fmt.name}: the 16-bit weights are decoded to float32 (exactly) "
                     f"for the export")
    for alg, n in direct_convolutions(net).items():
        notes.append(f"model.conv_impl {alg}: its {n} convolution layers are exported as direct convolutions "
                     f"(nn.Conv2d, the same weights); the check compares them with {alg}")
    plain_stages(net)
    ft = module.hparams.get("finetune")
    if ft and ft["head_only"]:
        notes.append(f"finetune regime {ft['regime']}: the head trained on cached features is exported with its "
                     f"backbone in front ({ft['backbone']}), images in, logits out")
    note = PRECISION_NOTES.get(c.recipe.trainer.precision)
    if note:
        notes.append(f"trainer.precision {c.recipe.trainer.precision}: {note}")
    return Deployable(net.float(), module.mean, module.std, module.memory_format).eval(), notes


def reference_logits(c: Loaded, images: Tensor) -> Tensor:
    """What the run's own module computes (as `cnnlab eval` does, in float32): the yardstick."""
    m = c.module.eval()
    with torch.no_grad():
        return m(m.prepare(images)).float()


# --------------------------------------------------------------------------- the two formats


@dataclass
class Exported:
    data: bytes  # the file, as it will be written
    runner: Callable[[Tensor], Tensor]  # the file loaded back: uint8 images -> logits
    info: dict[str, Any]  # format-specific metadata (opset, runtime, names)


def dynamic_shapes(static_batch: int | None) -> dict[str, Any] | None:
    return None if static_batch is not None else {"images": {0: torch.export.Dim("batch")}}


def to_onnx(model: Deployable, example: Tensor, static_batch: int | None) -> Exported:
    """torch.onnx.export (the dynamo exporter, through onnxscript), onnx.checker, and an
    onnxruntime CPU session on the serialized bytes."""
    import warnings

    import onnx
    import onnxruntime as ort

    # ONNX has no memory format (the runtime picks its own layout); traced in NCHW-contiguous the graph is the
    # cleaner one: BatchNorm folded into the convolutions, no layout ops (channels_last leaves both in)
    model.in_format(torch.contiguous_format)
    # the exporter's progress lines and warnings (onnxscript prints its rewrite counts) are not the task's output
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes(static_batch),
                                    input_names=["images"], output_names=["logits"], opset_version=OPSET,
                                    external_data=False, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(images: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])

    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return Exported(data, run, {"opset": opset, "checker": "onnx.checker.check_model (full_check) passed",
                                "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
                                "versions": {"onnx": onnx.__version__, "onnxscript": importlib.import_module("onnxscript").__version__,
                                             "onnxruntime": ort.__version__}})


def to_pt2(model: Deployable, example: Tensor, static_batch: int | None) -> Exported:
    """torch.export.export and torch.export.save; the saved bytes loaded back with torch.export.load. In
    the run's memory format: a channels_last program runs its convolutions ~2x faster on a CPU (measured
    in benchmarks/export_speed.py)."""
    import warnings

    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(static_batch))
    buf = io.BytesIO()
    with warnings.catch_warnings():  # channels_last weights are not "contiguous" to the archive writer, which
        warnings.filterwarnings("ignore", message="No complete tensor found")  # warns; the check below reads them back
        torch.export.save(program, buf)
    data = buf.getvalue()
    loaded = torch.export.load(io.BytesIO(data)).module()

    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return loaded(images)

    return Exported(data, run, {"runtime": f"torch.export.load (torch {torch.__version__})"})


EXPORTERS = {"onnx": to_onnx, "pt2": to_pt2}


# --------------------------------------------------------------------------- the check


def check_images(images: Tensor, static_batch: int | None, limit: int = CHECK_IMAGES) -> Tensor:
    """The first `limit` test images; with a static batch a whole number of batches (the split
    repeated when it holds fewer than one batch)."""
    x = images[:limit]
    if static_batch is None:
        return x
    if len(x) < static_batch:
        x = x.repeat((static_batch + len(x) - 1) // len(x), 1, 1, 1)[:static_batch]
    return x[: len(x) // static_batch * static_batch]


def batches(x: Tensor, static_batch: int | None) -> list[Tensor]:
    """How the check feeds the file: a static batch in its size; a dynamic one as a single image and
    then all of them at once (two batch sizes, both different from the traced one)."""
    return list(x.split(static_batch)) if static_batch is not None else [x[:1], x]


def compare(ref: Tensor, got: Tensor, batch_sizes: list[int]) -> Check:
    """The largest logit difference and top-1 agreement; a top-1 flip counts only where the
    reference's two best logits are further apart than the tolerance."""
    diff = float((ref - got).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    tol = RTOL * scale
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    gap = top2[:, 0] - top2[:, -1] if ref.shape[1] > 1 else torch.full((len(ref),), float("inf"))
    differ = ref.argmax(1) != got.argmax(1)
    near = gap <= tol
    disagreements = int((differ & ~near).sum())
    agree = 1.0 - float(differ.float().mean())
    passed = bool(diff <= tol and disagreements == 0 and torch.isfinite(got).all())
    return Check(len(ref), batch_sizes, diff, scale, tol, agree, disagreements, int(near.sum()), passed)


def check(exported: Exported, ref_logits: Tensor, x: Tensor, static_batch: int | None) -> Check:
    """The loaded-back file run on the test images, against the reference logits."""
    parts = batches(x, static_batch)
    got = [exported.runner(b) for b in parts]
    if static_batch is not None:
        return compare(ref_logits, torch.cat(got), [static_batch])
    single, whole = got  # a dynamic batch: one image alone, then all of them
    result, one = compare(ref_logits, whole, [1, len(x)]), compare(ref_logits[:1], single, [1])
    result.max_abs_diff = max(result.max_abs_diff, one.max_abs_diff)
    result.passed = result.passed and one.passed
    return result


def failure(fmt: str, c: Check) -> str:
    return (f"the {fmt} export does not compute what the run's network computes: largest |logit difference| "
            f"{c.max_abs_diff:.3g} (allowed {c.tolerance:.3g}), top-1 agreement {c.top1_agreement:.2%} on {c.images} test "
            f"images ({c.disagreements} disagreements beyond near-ties); nothing was written")


# --------------------------------------------------------------------------- the task


def run(path: Path, fmt: str | None, out: Path | None = None, static_batch: int | None = None,
        check_limit: int = CHECK_IMAGES) -> dict[str, Any]:
    """Export the network of a run folder or .ckpt to `fmt`, check the file on its test images, then
    write it and its sidecar (FILE.json), atomically. Every flag is checked before the checkpoint is
    read; a file that fails the check is CheckFailed, and nothing is written."""
    fmt = check_format(fmt)
    check_static_batch(static_batch)
    if out is not None:
        check_out(Path(out), fmt)
    check_extra(fmt)
    c = load(Path(path))
    out = Path(out) if out is not None else default_out(Path(path), c.ckpt_path, fmt)
    check_out(out, fmt)
    return export(c, fmt, out, static_batch, check_limit)


def export(c: Loaded, fmt: str, out: Path, static_batch: int | None = None,
           check_limit: int = CHECK_IMAGES) -> dict[str, Any]:
    """The export of a loaded run (`run` without the reading): see `run`."""
    model, notes = deployable(c)
    x = check_images(c.data.test.images, static_batch, check_limit)
    ref = reference_logits(c, x)
    # traced on a copy (a view would carry the whole test split into the .pt2), of at least 2 images
    example = check_images(x, static_batch or TRACE_BATCH)[: static_batch or TRACE_BATCH].clone()
    exported = EXPORTERS[fmt](model, example, static_batch)
    result = check(exported, ref, x, static_batch)
    if not result.passed:
        raise CheckFailed(failure(fmt, result))
    with atomic(out) as f:
        f.write(exported.data)
    meta = sidecar(c, fmt, out, static_batch, model, notes, exported, result)
    write_json(sidecar_path(out), meta)
    return {**meta, "written": str(out), "sidecar": str(sidecar_path(out)), "bytes": len(exported.data)}


def sidecar(c: Loaded, fmt: str, out: Path, static_batch: int | None, model: Deployable, notes: list[str],
            exported: Exported, result: Check) -> dict[str, Any]:
    """What a user of the file needs without cnnlab (classes in output order, the input it takes, the
    normalisation inside it) and the evidence (the check, the versions)."""
    test = c.data.test
    _, ch, h, w = test.images.shape
    batch = static_batch if static_batch is not None else "batch"
    return {
        "format": fmt,
        "file": out.name,
        "checkpoint": str(c.ckpt_path),
        "classes": list(test.classes),
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": ch, "height": h, "width": w,
                  "shape": [batch, ch, h, w], "range": [0, 255]},
        "output": {"name": "logits", "dtype": "float32", "shape": [batch, len(test.classes)]},
        "batch": static_batch if static_batch is not None else "dynamic",
        "normalisation": {"folded_in": True, "computes": "(images / 255 - mean) / std, per channel",
                          "mean": model.norm_mean.flatten().tolist(), "std": model.norm_std.flatten().tolist()},
        "data": {"source": c.recipe.data.source, "image_size": c.recipe.data.image_size,
                 "resize": c.recipe.data.resize, "channels": ch},
        "notes": notes,
        **({"opset": exported.info["opset"]} if "opset" in exported.info else {}),
        "check": {**result.record(), "runtime": exported.info["runtime"],
                  **({"checker": exported.info["checker"]} if "checker" in exported.info else {})},
        "versions": {**versions(), **exported.info.get("versions", {})},
    }
