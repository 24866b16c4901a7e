"""`cnnlab export`: ONNX and .pt2 files of a run's network with the normalisation folded in (uint8
images in, logits out), checked against the cnnlab module on real test images; the sidecar; the
notes of runs that need a change; the missing extra; bad input. The smoke run is read once."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab import recipe as rc
from cnnlab.engine.checkpoint import load
from cnnlab.tasks import export as task
from conftest import ROOT

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def reference(c, images: torch.Tensor) -> torch.Tensor:
    """The rebuilt cnnlab module's logits, as `cnnlab eval` computes them."""
    m = c.module.eval()
    with torch.no_grad():
        return m(m.prepare(images))


def within(got, ref) -> bool:
    """The export's contract: |logit difference| <= 1e-4 x the logit scale, and the same top-1."""
    got = torch.as_tensor(np.asarray(got))
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    return float((got - ref).abs().max()) <= tol and bool((got.argmax(1) == ref.argmax(1)).all())


def one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return " ".join(res.output.split())


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    """`cnnlab export SMOKE --format onnx --out DIR/model.onnx` through the CLI, and the run as the
    command read it (its test split loaded): the smoke run is read once for this module."""
    from cnnlab.cli import app

    out, seen = tmp_path_factory.mktemp("onnx") / "model.onnx", []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task, "load", lambda path: seen.append(load(path)) or seen[-1])
        res = CliRunner().invoke(app, ["export", str(smoke_run.path), "--format", "onnx", "--out", str(out)],
                                 catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res.output, seen[0]


@pytest.fixture(scope="module")
def onnx_export(exported):
    return exported[:2]


@pytest.fixture(scope="module")
def smoke(exported):
    return exported[2]


def test_onnx_export_runs_in_onnxruntime_like_pytorch_at_any_batch(onnx_export, smoke):
    out, output = onnx_export
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp] = s.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [1, 28, 28])
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch dimension
    images = smoke.data.test.images  # real Fashion-MNIST test images of the run, uint8
    for n in (1, 7, len(images)):
        x = images[:n]
        assert within(s.run(None, {"images": x.numpy()})[0], reference(smoke, x)), n
    assert "top-1 agreement" in output and "100.00%" in output


def test_the_sidecar_describes_the_model_for_use_without_cnnlab(onnx_export, smoke):
    out, _ = onnx_export
    meta = json.loads(out.with_name("model.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["file"] == "model.onnx" and meta["opset"] == 20
    assert meta["classes"] == smoke.data.test.classes == ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                                                          "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    assert meta["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": 1, "height": 28,
                             "width": 28, "shape": ["batch", 1, 28, 28], "range": [0, 255]}
    assert meta["batch"] == "dynamic" and meta["output"]["shape"] == ["batch", 10]
    norm = meta["normalisation"]
    assert norm["folded_in"] and norm["mean"] == pytest.approx(smoke.module.mean.flatten().tolist())
    assert norm["std"] == pytest.approx(smoke.module.std.flatten().tolist())
    c = meta["check"]
    assert c["passed"] and c["top1_agreement"] == 1.0 and c["disagreements"] == 0
    assert c["images"] == 256 and c["batch_sizes"] == [1, 256] and c["max_abs_diff"] <= c["tolerance"]
    assert c["runtime"].startswith("onnxruntime") and "CPUExecutionProvider" in c["runtime"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["onnxruntime"] == ort.__version__
    assert meta["notes"] == []  # a float32, direct-convolution train run needs no change
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.json"]  # no temporaries left


def snippet() -> str:
    """The onnxruntime example of docs/export.md, as shown."""
    text = (ROOT / "docs" / "export.md").read_text()
    section = text[text.index("## Without cnnlab"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_snippet_classifies_an_image_with_the_sidecar_numpy_and_pil_only(onnx_export, smoke, tmp_path,
                                                                                    monkeypatch):
    import shutil

    from PIL import Image

    code = snippet()
    assert len(code.strip().splitlines()) <= 12
    assert not re.search(r"\b(torch|cnnlab)\b", code)  # the model stands alone
    out, _ = onnx_export
    for f in (out, out.with_name("model.onnx.json")):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    i = 5
    Image.fromarray(smoke.data.test.images[i, 0].numpy(), mode="L").save("image.png")
    printed = []
    exec(compile(code, "docs/export.md", "exec"), {"print": printed.append})
    expected = smoke.data.test.classes[int(reference(smoke, smoke.data.test.images[i:i + 1]).argmax())]
    assert printed == [expected]


def test_static_batch_fixes_the_batch_dimension(smoke, tmp_path):
    out = tmp_path / "model.onnx"
    r = task.export(smoke, "onnx", out, static_batch=4)
    assert r["batch"] == 4 and r["input"]["shape"] == [4, 1, 28, 28] and r["check"]["batch_sizes"] == [4]
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape == [4, 1, 28, 28]
    x = smoke.data.test.images[:4]
    assert within(s.run(None, {"images": x.numpy()})[0], reference(smoke, x))
    with pytest.raises(Exception, match=r"(?i)invalid dimensions|dimension"):
        s.run(None, {"images": smoke.data.test.images[:3].numpy()})


def test_pt2_export_reloads_with_torch_export_and_matches(smoke, tmp_path):
    out = tmp_path / "net.pt2"
    r = task.export(smoke, "pt2", out)
    meta = json.loads((tmp_path / "net.pt2.json").read_text())
    assert meta["format"] == "pt2" and "opset" not in meta and meta["check"]["passed"]
    assert meta["check"]["runtime"].startswith("torch.export.load") and r["written"] == str(out)
    net = torch.export.load(out).module()
    for n in (1, 7):
        x = smoke.data.test.images[:n]
        with torch.no_grad():
            assert within(net(x), reference(smoke, x)), n


def with_fft_and_bf16_weights(smoke):
    """The smoke run's trained network as a run with `model.conv_impl: fft` and `optim.weights: bf16`
    would hold it: FFT convolutions, every weight in bfloat16 storage (rounded to nearest), the same
    test split. Built in-process from the smoke checkpoint, without another fit (~0.1 s)."""
    from cnnlab.conv.module import swap
    from cnnlab.engine.assemble import module_args
    from cnnlab.engine.checkpoint import Loaded
    from cnnlab.engine.module import Classifier
    from cnnlab.models import build_model

    r = rc.load(None, ["model.conv_impl=fft", "optim.weights={dtype: bf16}"], base=smoke.recipe.dump())
    net = build_model(r.model.name, 1, 10, **r.model.kwargs())
    swap(net, "fft")
    module = Classifier(net, 10, smoke.module.mean, smoke.module.std, **module_args(r))
    module.load_state_dict(smoke.module.state_dict())  # float32 values into the bf16 storage buffers
    assert module.lowp is not None and module.net.stages[0][0][0].weight.dtype == torch.bfloat16
    return Loaded(smoke.ckpt_path, r, smoke.data, module, "cpu", "32-true")


def test_a_run_with_fft_convolutions_and_16_bit_weights_exports_with_one_line_each(smoke, tmp_path, capsys):
    from cnnlab.report.export import export_summary

    c = with_fft_and_bf16_weights(smoke)
    r = task.export(c, "pt2", tmp_path / "model.pt2", check_limit=32)  # FFT convolutions: ~6 ms an image here
    assert r["notes"] == [
        "optim.weights bf16: the 16-bit weights are decoded to float32 (exactly) for the export",
        "model.conv_impl fft: its 3 convolution layers are exported as direct convolutions (nn.Conv2d, the same "
        "weights); the check compares them with fft"]
    assert r["check"]["passed"] and r["check"]["images"] == 32 and json.loads((tmp_path / "model.pt2.json").read_text())["notes"] == r["notes"]
    export_summary(r)
    shown = " ".join(capsys.readouterr().out.split())
    assert "optim.weights bf16: the 16-bit" in shown and "model.conv_impl fft: its 3" in shown
    program = torch.export.load(tmp_path / "model.pt2")
    graph = str(program.graph)
    assert len(re.findall(r"aten\.(conv2d|convolution)\.", graph)) == 3 and "fft" not in graph  # direct, no FFT
    assert {t.dtype for t in program.state_dict.values() if t.is_floating_point()} == {torch.float32}  # no bf16 left
    assert c.module.net.stages[0][0][0].weight.dtype == torch.bfloat16  # the run's own module is untouched
    x = smoke.data.test.images[:7]
    with torch.no_grad():
        assert within(program.module()(x), reference(c, x))  # against the FFT, bf16-weight module itself


def test_the_check_compares_logits_and_tolerates_only_near_ties():
    ref = torch.tensor([[4.0, 1.0, 0.0], [2.0, 2.0 - 1e-5, 0.0]])
    ok = task.compare(ref, ref + 1e-5, [2])
    assert ok.passed and ok.near_ties == 1 and ok.top1_agreement == 1.0
    flipped_tie = task.compare(ref, torch.tensor([[4.0, 1.0, 0.0], [2.0 - 1e-5, 2.0, 0.0]]), [2])
    assert flipped_tie.passed and flipped_tie.top1_agreement == 0.5 and flipped_tie.disagreements == 0
    off = task.compare(ref, ref + torch.tensor([[0.0, 0.0, 0.01], [0.0, 0.0, 0.0]]), [2])
    assert not off.passed and off.max_abs_diff == pytest.approx(0.01)  # tolerance 1e-4 x 4
    flipped = task.compare(ref, torch.tensor([[1.0, 4.0, 0.0], [2.0, 1.0, 0.0]]), [2])
    assert not flipped.passed and flipped.disagreements == 1
    assert not task.compare(ref, torch.full_like(ref, float("nan")), [2]).passed


def test_an_export_that_fails_its_check_exits_3_and_writes_nothing(cli, smoke, smoke_run, monkeypatch):
    def wrong(model, example, static_batch):  # an exporter whose file computes something else
        return task.Exported(b"not a model", lambda x: model(x) + 0.1 * torch.arange(10.0), {"runtime": "fake"})

    monkeypatch.setitem(task.EXPORTERS, "pt2", wrong)
    monkeypatch.setattr(task, "load", lambda path: smoke)  # the smoke run, already read
    before = files(smoke_run.path)
    res = cli("export", str(smoke_run.path), "--format", "pt2")
    assert res.exit_code == 3
    assert "does not compute what the run's network computes" in one_line(res) and "nothing was written" in res.output
    assert files(smoke_run.path) == before


def test_without_the_extra_onnx_names_the_package_to_install(cli, smoke_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError, as when not installed
    before = files(smoke_run.path)
    res = cli("export", str(smoke_run.path), "--format", "onnx")
    assert res.exit_code == 2
    assert "missing: onnxscript" in one_line(res) and "pip install 'cnnlab[export]'" in res.output
    assert files(smoke_run.path) == before


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "--format: 'tflite' is not an export format; choose from onnx, pt2"),
    ([], "missing --format"),
    (["--format", "onnx", "--static-batch", "0"], "--static-batch: must be at least 1"),
    (["--format", "pt2", "--out", "{tmp}/missing/model.pt2"], "the folder {tmp}/missing does not exist"),
    (["--format", "pt2", "--out", "{tmp}"], "is a folder; give a file name"),
    (["--format", "pt2", "--out", "{tmp}/model.onnx"], "ends in .onnx, but --format is pt2"),
], ids=["unknown-format", "no-format", "static-batch-0", "missing-folder", "folder", "suffix"])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(cli, smoke_run, tmp_path, args, message):
    before, tmp_before = files(smoke_run.path), files(tmp_path)
    res = cli("export", str(smoke_run.path), *[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2
    assert message.format(tmp=tmp_path) in one_line(res)
    assert files(smoke_run.path) == before and files(tmp_path) == tmp_before


def test_a_file_that_is_not_a_cnnlab_checkpoint_is_refused(cli, tmp_path):
    ckpt = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    res = cli("export", str(ckpt), "--format", "pt2")
    assert res.exit_code == 2 and "is not a cnnlab checkpoint" in one_line(res)
    assert files(tmp_path) == {ckpt}
