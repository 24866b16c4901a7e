"""cnnlab.bench.machine: the facts read, the precisions tried, the arithmetic of the matmul table, the
copy and disk numbers, and the cache (hit, refresh, a broken file rebuilt, another key another file).
CPU only and quick: the CUDA branches are not exercised here."""
from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import torch

from cnnlab.bench import machine
from cnnlab.spec import PRECISIONS


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One real quick measurement through the cache, shared: (result, hit, data folder, cache dir, progress names)."""
    root = tmp_path_factory.mktemp("machine")
    data, cache = root / "data", root / "cache"
    data.mkdir()
    names: list[str] = []
    result, hit = machine.cached(data, cache_dir=cache, progress=names.append, quick=True)
    return result, hit, data, cache, names


@pytest.fixture
def fake_measure(first, monkeypatch):
    """`measure` replaced by a copy of the real result (under the key of the facts now): the cache logic
    without re-measuring. Returns the list of calls."""
    calls: list[int] = []
    real = first[0]

    def fake(folder, progress=lambda name: None, *, quick=False):
        calls.append(1)
        return {**json.loads(json.dumps(real)), "key": machine.cache_key(machine.facts(), folder, quick),
                "seconds": real["seconds"] + len(calls)}

    monkeypatch.setattr(machine, "measure", fake)
    return calls


def test_facts_name_the_devices_with_sane_types():
    f = machine.facts()
    assert isinstance(f["cpu"], str) and f["cpu"]
    assert f["logical_cpus"] >= 1 and 1 <= f["usable_cpus"] <= f["logical_cpus"] and f["torch_threads"] >= 1
    assert f["physical_cores"] is None or 1 <= f["physical_cores"] <= f["logical_cpus"]
    assert isinstance(f["simd_flags"], list) and all(isinstance(x, str) for x in f["simd_flags"])
    assert f["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f["torch"] == torch.__version__ and f["cuda"] == torch.version.cuda
    assert len(f["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(isinstance(v, int) and v > 0 for v in f["caches_bytes"].values())


def test_every_accepted_precision_is_tried_and_32_true_runs_on_the_cpu(first):
    cpu = first[0]["precisions"]["cpu"]  # machine.precisions(), run once for the module by `first`
    assert list(cpu) == list(PRECISIONS)
    assert cpu["32-true"] == {**cpu["32-true"], "ok": True, "torch_runs": True, "reason": None,
                              "output_dtype": "float32", "recipe": None}
    for row in cpu.values():
        assert row["ok"] == (row["reason"] is None) == (row["torch_runs"] and row["recipe"] is None)
    assert not cpu["16-mixed"]["ok"] and "CUDA" in cpu["16-mixed"]["recipe"]  # cnnlab refuses it on cpu
    if cpu["bf16-mixed"]["torch_runs"]:
        assert cpu["bf16-mixed"]["output_dtype"] == "bfloat16"  # the autocast took effect


def test_matmul_gflops_are_2n3_over_the_median_seconds_per_call():
    r = machine.matmul_peak("cpu", torch.float32, seconds_budget=0.3, sizes=(32, 64, 128), repeats=3)
    assert r["gflops"] > 0 and r["sizes"] and (r["device"], r["dtype"]) == ("cpu", "float32")
    assert [row["n"] for row in r["sizes"]] == [32, 64, 128][: len(r["sizes"])]
    for row in r["sizes"]:
        assert row["flops"] == 2 * row["n"] ** 3
        assert row["gflops"] == pytest.approx(row["flops"] / row["seconds"] / 1e9)
        assert row["repeats"] >= 1 and row["calls_per_sample"] >= 1
    assert (r["gflops"], r["n"]) == max((row["gflops"], row["n"]) for row in r["sizes"])


def test_a_spent_budget_times_the_first_size_once_and_grows_no_further():
    r = machine.matmul_peak("cpu", torch.bfloat16, seconds_budget=0.0, sizes=(32, 4096), repeats=5)
    assert [row["n"] for row in r["sizes"]] == [32] and r["sizes"][0]["repeats"] == 1
    assert r["stopped"] == "budget" and r["gflops"] > 0


def test_memcpy_is_positive():
    r = machine.memcpy_gbps(4 << 20, repeats=3)
    assert r["gb_per_s"] > 0 and r["bytes"] == 4 << 20


def test_disk_read_is_positive_and_leaves_no_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.bin").write_bytes(b"x")
    r = machine.disk_read_mbps(data, size_bytes=4 << 20, seconds_budget=0.05)
    assert r["mb_per_s"] > 0 and r["warm_mb_per_s"] > 0 and r["reads"] >= 1 and r["bytes"] == 4 << 20
    assert r["cache"] in ("cold", "warm", "unknown")
    assert [p.name for p in data.iterdir()] == ["keep.bin"]
    later = machine.disk_read_mbps(data / "not" / "yet", size_bytes=1 << 20, seconds_budget=0.0)
    assert later["folder"] == str(data.resolve()) and later["mb_per_s"] > 0  # the disk that will hold it
    assert [p.name for p in data.iterdir()] == ["keep.bin"]


def test_a_first_call_measures_everything_and_a_second_is_a_hit_with_the_same_numbers(first):
    result, hit, data, cache, names = first
    assert not hit and result["schema"] == machine.SCHEMA and result["quick"] is True
    assert names == ["facts", "precisions", "matmul cpu float32", "matmul cpu bfloat16", "memcpy", "h2d", "disk"]
    datetime.fromisoformat(result["measured_at"])
    assert result["seconds"] > 0 and result["matmul"]["cpu"]["float32"]["gflops"] > 0
    assert result["memcpy"]["gb_per_s"] > 0 and result["disk"]["mb_per_s"] > 0
    assert result["precisions"]["cpu"]["32-true"]["ok"]
    assert (result["h2d"] is None) == (not torch.cuda.is_available())
    files = list(cache.iterdir())
    assert len(files) == 1 and re.fullmatch(r"machine-[0-9a-f]{16}\.json", files[0].name)
    again, hit = machine.cached(data, cache_dir=cache, quick=True)
    assert hit and again == result


def test_refresh_measures_again_and_rewrites_the_file(first, fake_measure, tmp_path):
    _, _, data, _, _ = first
    cache = tmp_path / "cache"
    machine.cached(data, cache_dir=cache, quick=True)
    fresh, hit = machine.cached(data, cache_dir=cache, refresh=True, quick=True)
    assert not hit and len(fake_measure) == 2
    assert json.loads(machine.cache_path(data, cache, quick=True).read_text()) == fresh


@pytest.mark.parametrize("junk", [b'{"sch', b"", b"[]", b"\xff\xfe{", b'{"schema": 0}', b'{"schema": 1, "key": "x"}'])
def test_a_truncated_garbage_or_foreign_cache_file_is_a_miss_and_rewritten_whole(first, fake_measure, tmp_path, junk):
    _, _, data, _, _ = first
    path = machine.cache_path(data, tmp_path, quick=True)
    path.write_bytes(junk)
    result, hit = machine.cached(data, cache_dir=tmp_path, quick=True)
    assert not hit and len(fake_measure) == 1
    assert json.loads(path.read_text()) == result
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left beside it
    assert machine.cached(data, cache_dir=tmp_path, quick=True) == (result, True)


def test_a_wrong_layout_under_the_right_key_is_a_miss(first, fake_measure, tmp_path):
    result, _, data, _, _ = first
    path = machine.cache_path(data, tmp_path, quick=True)
    broken = {**result, "matmul": {"cpu": {"float32": 312.5}}}
    path.write_text(json.dumps(broken))
    assert machine.cached(data, cache_dir=tmp_path, quick=True)[1] is False


def test_another_torch_version_is_another_key_and_another_file(first, fake_measure, tmp_path, monkeypatch):
    _, _, data, _, _ = first
    here = machine.cached(data, cache_dir=tmp_path, quick=True)[0]
    facts = machine.facts
    monkeypatch.setattr(machine, "facts", lambda: {**facts(), "torch": "0.0.0+elsewhere"})
    there, hit = machine.cached(data, cache_dir=tmp_path, quick=True)
    assert not hit and there["key"] != here["key"] and len(list(tmp_path.glob("machine-*.json"))) == 2
    assert machine.cached(data, cache_dir=tmp_path, quick=True)[1]  # each key hits its own file


def test_the_cache_folder_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "env"))
    assert machine.default_cache_dir() == tmp_path / "env"
    assert machine.cache_path(tmp_path, tmp_path / "arg").parent == tmp_path / "arg"
    monkeypatch.delenv("CNNLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert machine.default_cache_dir() == tmp_path / "xdg" / "cnnlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert machine.default_cache_dir() == machine.Path.home() / ".cache" / "cnnlab"
    assert machine.cache_path(tmp_path, quick=True) != machine.cache_path(tmp_path, quick=False)
