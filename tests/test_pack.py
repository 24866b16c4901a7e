"""Packed datasets (`cnnlab pack`, data.source packed), data.placement, and `cnnlab bench-data`."""
import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from cnnlab import pack
from cnnlab.data import ImageDataModule, SOURCES
from cnnlab.data.module import place
from cnnlab.data.spec import DataSpec
from cnnlab.pack.format import ALIGN, PREAMBLE

from conftest import RECIPES


def _imagefolder(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, size in (("cat", 20), ("dog", 24)):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                write_png(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                          str(root / split / c / f"{i}.png"))
    return root


def _cifar10(root: Path, monkeypatch) -> Path:
    """CIFAR-10's own file layout (pickled batches of rows of 3072 bytes), tiny; torchvision's md5
    check of the real archive is the only thing skipped."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list]
    for name in names:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": g.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    return root


@pytest.mark.parametrize("source", ["fashion-mnist", "digits", "imagefolder", "cifar10"])
def test_pack_round_trip_is_bit_exact_for_every_source(source, cli, tmp_path, monkeypatch):
    root = {"imagefolder": lambda: _imagefolder(tmp_path / "photos"),
            "cifar10": lambda: _cifar10(tmp_path / "cifar", monkeypatch)}.get(source, lambda: None)()
    args = ["--root", str(root)] if root else []
    args += ["--image-size", "12"] if source == "imagefolder" else []
    out = tmp_path / f"{source}.cnnpack"
    res = cli("pack", source, str(out), *args)
    assert res.exit_code == 0, res.output
    decode = DataSpec(source=source, root=str(root) if root else None, image_size=12 if source == "imagefolder" else None).decode()
    header = pack.read_header(out)
    for split in ("train", "test"):
        want = SOURCES.get(source)(root, split, decode)
        got = SOURCES.get("packed")(out, split)
        assert got.images.dtype == torch.uint8 and torch.equal(got.images, want.images)
        assert torch.equal(got.labels, want.labels) and got.classes == want.classes
        mean = want.images.double().mean((0, 2, 3)) / 255
        assert header["splits"][split]["mean"] == pytest.approx(mean.tolist(), abs=1e-5)
        assert header["splits"][split]["count"] == len(want.labels)
    assert header["version"] == pack.format.VERSION and header["shape"] == list(want.images.shape[1:])
    assert list(tmp_path.glob(".*tmp*")) == []


def test_a_packed_split_is_a_memory_map_of_the_file(tmp_path):
    """Nothing is read whole: the images tensor's memory is a mapping of the pack file, rows are views,
    and a gather reads the rows asked for."""
    out = tmp_path / "fm.cnnpack"
    split = SOURCES.get("fashion-mnist")(None, "train")
    pack.write(out, {"train": pack.SplitData(split.images, split.labels)}, {"source": "fashion-mnist", "classes": split.classes})
    p = pack.open_pack(out).split("train")
    ptr = p.images.data_ptr()
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    mine = [m for m in maps if len(m) > 5 and m[5] == str(out.resolve())]
    assert any(int(a, 16) <= ptr < int(b, 16) for a, b in (m[0].split("-") for m in mine))
    assert p.rows(10, 20).data_ptr() == ptr + 10 * 784  # a view: no copy
    idx = torch.tensor([59999, 3, 17])
    assert torch.equal(p.take(idx), split.images[idx]) and torch.equal(p.index[idx], idx)


def test_shards_round_trip_and_gather_across_files(cli, tmp_path):
    out = tmp_path / "digits.cnnpack"
    res = cli("pack", "digits", str(out), "--shards", "3")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("*.cnnpack")) == [
        "digits-00000-of-00003.cnnpack", "digits-00001-of-00003.cnnpack", "digits-00002-of-00003.cnnpack", "digits.cnnpack"]
    want = SOURCES.get("digits")(None, "train")
    p = pack.open_pack(out, check=True).split("train")
    assert len(p) == len(want.labels) and len(p.parts) == 3
    assert torch.equal(p.images, want.images) and torch.equal(p.labels, want.labels)
    idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(0))[:200]
    assert torch.equal(p.take(idx), want.images[idx])
    a = p.starts[1]
    assert torch.equal(p.rows(a - 5, a + 5), want.images[a - 5: a + 5])  # across a shard boundary
    assert cli("pack", "--verify", str(out)).exit_code == 0
    (tmp_path / "digits-00001-of-00003.cnnpack").unlink()
    res = cli("pack", "--verify", str(out))
    assert res.exit_code == 2 and "digits-00001-of-00003.cnnpack: no such pack file" in res.output


def _packed(tmp_path: Path) -> Path:
    out = tmp_path / "d.cnnpack"
    s, t = SOURCES.get("digits")(None, "train"), SOURCES.get("digits")(None, "test")
    pack.write(out, {"train": pack.SplitData(s.images, s.labels), "test": pack.SplitData(t.images, t.labels)},
               {"source": "digits", "classes": s.classes})
    return out


def _train_packed(cli, path: Path) -> object:
    return cli("train", str(RECIPES / "smoke.yaml"), "--set", "data.source=packed", "--set", f"data.root={path}",
               "--set", "data.subset=null", "--set", "data.test_subset=null", "--set", "trainer.max_epochs=1",
               "--set", f"output.dir={cli.runs}")


def test_verify_passes_a_good_file_and_every_reader_refuses_a_damaged_one(cli, tmp_path):
    good = _packed(tmp_path)
    res = cli("pack", "--verify", str(good))
    assert res.exit_code == 0 and "header, size and SHA-256" in res.output
    data = good.read_bytes()
    offset, length = PREAMBLE.unpack(data[: PREAMBLE.size])[3:5]

    def damaged(name: str, content: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(content)
        return p

    flipped = bytearray(data)
    flipped[ALIGN + 100] ^= 0xFF  # one pixel
    header = bytearray(data)
    header[offset + 5] ^= 0x01
    cases = {
        "corrupt": (damaged("corrupt.cnnpack", bytes(flipped)), r"corrupt: the payload's SHA-256 is \w+…, the header says"),
        "truncated": (damaged("truncated.cnnpack", data[: len(data) // 2]),
                      rf"truncated: {len(data) // 2:,} bytes, the preamble says {len(data):,}"),
        "version": (damaged("v2.cnnpack", data[:8] + struct.pack("<I", 2) + data[12:]),
                    "cnnpack format version 2; this cnnlab reads version 1"),
        "header": (damaged("header.cnnpack", bytes(header)), r"corrupt header \(its CRC-32 does not match\)"),
        "not a pack": (damaged("png.cnnpack", b"\x89PNG\r\n\x1a\n" + data[8:100]), "not a cnnpack file"),
        "tail": (damaged("tail.cnnpack", data + b"\0"), "has trailing bytes"),
    }
    for name, (path, message) in cases.items():
        res = cli("pack", "--verify", str(path))
        assert res.exit_code == 2, name
        assert res.output.startswith(f"error: {path}") and len(res.output.strip().splitlines()) == 1, res.output
        assert re.search(message, res.output), (name, res.output)
        res = _train_packed(cli, path)  # training refuses it too, before any folder is made
        assert res.exit_code == 2 and str(path) in res.output, (name, res.output)
        assert not cli.runs.exists()
    assert length > 0


def test_an_interrupted_pack_leaves_no_file(tmp_path):
    s = SOURCES.get("digits")(None, "train")
    data = {"train": pack.SplitData(s.images, s.labels)}

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    for shards in (1, 3):
        out = tmp_path / f"x{shards}.cnnpack"
        with pytest.raises(KeyboardInterrupt):
            pack.write(out, data, {"source": "digits", "classes": s.classes}, shards=shards, advance=interrupt)
        assert list(tmp_path.iterdir()) == []  # no final file, no temporary file
    later = {"n": 0}

    def late(n: int) -> None:  # the first shard written, the second interrupted
        later["n"] += 1
        if later["n"] > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack.write(tmp_path / "y.cnnpack", data, {"source": "digits", "classes": s.classes}, shards=3, advance=late)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_training_from_a_pack_is_bit_identical_to_training_from_the_idx_files(cli, tmp_path):
    out = tmp_path / "fm.cnnpack"
    assert cli("pack", "fashion-mnist", str(out)).exit_code == 0
    common = ["--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=2"]
    res = cli("train", str(RECIPES / "smoke.yaml"), *common, "--set", "output.name=idx")
    assert res.exit_code == 0, res.output
    res = cli("train", str(RECIPES / "smoke.yaml"), *common, "--set", "output.name=packed",
              "--set", "data.source=packed", "--set", f"data.root={out}")
    assert res.exit_code == 0, res.output
    runs = {d.name.split("-")[0]: d for d in cli.runs.iterdir()}
    a, b = (json.loads((runs[k] / "results.json").read_text()) for k in ("idx", "packed"))
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
    wa, wb = (torch.load(runs[k] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for k in ("idx", "packed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert b["data"]["source"] == "packed" and b["placement"]["used"] == "host"
    assert b["data"]["pack"] == {"file": str(out), "version": 1, "packed_from": "fashion-mnist",
                                 "sha256": pack.read_header(out)["sha256"]}


def test_a_pack_without_the_split_a_recipe_needs(cli, tmp_path):
    out = tmp_path / "train-only.cnnpack"
    assert cli("pack", "digits", str(out), "--split", "train").exit_code == 0
    res = _train_packed(cli, out)
    assert res.exit_code == 2 and "holds the split(s) train, not test; pack it with --split train,test" in res.output


@pytest.mark.parametrize("args, message", [
    (["digits", "{tmp}"], "is a folder; give the file to write"),
    (["digits", "{tmp}/no/x.cnnpack"], "the folder {tmp}/no does not exist"),
    (["digits", "{tmp}/x.cnnpack", "--split", "train,val"], "--split 'train,val': a comma-separated list"),
    (["digits", "{tmp}/x.cnnpack", "--shards", "0"], "--shards 0: must be at least 1"),
    (["digits", "{tmp}/x.cnnpack", "--shards", "2000"], "--shards 2000: the train split has only 1438 images"),
    (["imagefolder", "{tmp}/x.cnnpack"], "data.image_size: imagefolder needs an image_size"),
    (["{recipes}/smoke.yaml", "{tmp}/x.cnnpack", "--image-size", "8"], "--image-size: give data keys of a recipe with --set data.image_size"),
    (["{tmp}/none.yaml", "{tmp}/x.cnnpack"], "SRC: no recipe file"),
    (["digits"], "missing SRC and OUT"),
    (["digits", "--verify", "{tmp}/x.cnnpack"], "--verify FILE checks a pack; give no SRC or OUT"),
])
def test_pack_refuses_bad_input_with_one_line(cli, tmp_path, args, message):
    fill = lambda s: s.format(tmp=tmp_path, recipes=RECIPES)  # noqa: E731
    res = cli("pack", *map(fill, args))
    assert res.exit_code == 2 and fill(message) in res.output, res.output
    assert not (tmp_path / "x.cnnpack").exists()


def test_pack_a_recipes_data_section(cli, tmp_path):
    out = tmp_path / "smoke.cnnpack"
    res = cli("pack", str(RECIPES / "smoke.yaml"), str(out), "--set", "data.source=digits")
    assert res.exit_code == 0, res.output
    assert "data.subset, data.test_subset" in res.output and "whole splits are packed" in res.output
    assert pack.read_header(out)["splits"]["train"]["count"] == len(SOURCES.get("digits")(None, "train").labels)


# --------------------------------------------------------------------------- placement


def test_placement_device_on_a_cpu_is_host_by_the_same_code_path():
    dms = {}
    for where in ("host", "device"):
        dm = ImageDataModule(DataSpec(source="digits", batch_size=64, placement=where), seed=0)
        dm.setup()
        batches = list(dm.train_dataloader())
        assert dm.placement == {"asked": where, "used": where, "device": "cpu", "bytes": dm.placement["bytes"],
                                "free": None, "why": None}
        ds = dm.train_dataloader().dataset
        assert ds.images is dm.train.images and ds.labels is dm.train.labels  # .to(cpu) is the same tensor
        dms[where] = batches
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(dms["host"], dms["device"]))


def test_placement_device_falls_back_to_host_when_the_data_does_not_fit_and_says_why():
    gib = 2**30
    fits = place("device", torch.device("cuda", 0), nbytes=gib, free=10 * gib)
    assert fits["used"] == "device" and fits["why"] is None
    big = place("device", torch.device("cuda", 0), nbytes=6 * gib, free=10 * gib)
    assert big["used"] == "host"
    assert big["why"] == ("data.placement device: the images take 6.00 GiB, more than 50% of the 10.00 GiB free on cuda:0; "
                          "batches come from pinned host memory instead")
    assert place("host", torch.device("cuda", 0), nbytes=gib, free=None)["used"] == "host"


def test_placement_device_is_recorded_in_the_run(cli):
    # on a CPU the device is the host (the same tensors: the test above); the run says what it used
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=1",
              "--set", "data.placement=device", "--set", "output.plots=false")
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    placed = json.loads((run / "results.json").read_text())["placement"]
    assert placed["asked"] == "device" and placed["used"] == "device" and placed["device"] == "cpu"
    assert placed["bytes"] > 0 and placed["why"] is None


@pytest.mark.parametrize("overrides, key, message", [
    (["data.placement=device", "data.num_workers=2"], "data.num_workers", "placement device cuts batches on the accelerator"),
    (["data.placement=device", "augment.where=loader", "augment.ops=[{name: hflip}]"], "augment.where",
     "data.placement device keeps the images on the accelerator and augments them there"),
    (["data.placement=gpu"], "data.placement", "'gpu'"),
    (["data.source=packed"], "data.root", "the packed source reads a .cnnpack file"),
])
def test_placement_and_packed_recipe_problems(cli, overrides, key, message):
    res = cli("train", str(RECIPES / "smoke.yaml"), *[a for o in overrides for a in ("--set", o)])
    assert res.exit_code == 2 and f"  {key} (" in res.output and message in res.output, res.output
    assert not cli.runs.exists() and not (cli.cwd / "runs").exists()


# --------------------------------------------------------------------------- bench-data


@pytest.mark.slow
def test_bench_data_end_to_end_on_a_tiny_subset(cli, tmp_path):
    png = tmp_path / "png"
    args = ["bench-data", str(RECIPES / "smoke.yaml"), "--limit", "64", "--repeats", "1", "--workers", "0",
            "--out", str(cli.runs)]
    res = cli(*args, "--export-folder", str(png))
    assert res.exit_code == 0, res.output
    (run,) = cli.runs.iterdir()
    r = json.loads((run / "bench_data.json").read_text())
    assert r["images"] == 64 and r["shape"] == [1, 28, 28] and r["png_exported_now"]
    assert [x["method"] for x in r["rows"]] == ["png-cold", "png-warm", "packed-loader-cold", "packed-loader-warm",
                                                 "packed-gather-cold", "packed-gather-warm", "packed-gather-hot",
                                                 "memory-loader", "memory-gather", "memcpy"]
    assert all(x["images_per_s"] > 0 and len(x["seconds"]) == 1 for x in r["rows"])
    assert all(r["same_images"].values()) and len(r["same_images"]) == 9  # every method read the same first batch
    assert r["page_cache"]
    if torch.cuda.is_available():  # pageable and pinned host->device copies, measured
        assert {x["mode"] for x in r["h2d"]} == {"pageable, sync", "pinned, sync", "pinned, non_blocking"}
        assert len(r["h2d"]) == 6 and all(x["gb_per_s"] > 0 for x in r["h2d"])
    else:
        assert r["h2d"] is None and "no GPU here, not measured" in res.output
    assert (run / "bench_data.png").stat().st_size > 0 and not (run / "data").exists()  # scratch removed
    assert len(list(png.rglob("*.png"))) == 64
    res = cli(*args, "--export-folder", str(png))  # the export is reused
    assert res.exit_code == 0 and not json.loads(next(d for d in cli.runs.iterdir() if d != run).joinpath("bench_data.json").read_text())["png_exported_now"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    res = cli(*args, "--export-folder", str(other))
    assert res.exit_code == 2 and "is not empty and holds no export of these images" in res.output


def test_a_pack_at_an_image_size_feeds_the_same_batches_as_resizing_the_source(cli, tmp_path):
    """Packing resizes whole splits, a run from the source resizes its selection: per image, the same."""
    out = tmp_path / "d16.cnnpack"
    assert cli("pack", "digits", str(out), "--image-size", "16").exit_code == 0
    spec = dict(image_size=16, classes=[1, 3, 5], subset=40, val_split=0.2, batch_size=32)
    a = ImageDataModule(DataSpec(source="digits", **spec), seed=2)
    b = ImageDataModule(DataSpec(source="packed", root=str(out), **spec), seed=2)
    for dm in (a, b):
        dm.setup()
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    for (xa, ya), (xb, yb) in zip(a.train_dataloader(), b.train_dataloader()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_full_disk_is_a_one_line_error_and_leaves_no_file(cli, tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cnnlab.pack.format._write_file", full)
    res = cli("pack", "digits", str(tmp_path / "d.cnnpack"))
    assert res.exit_code == 2
    assert res.output == f"error: {tmp_path / 'd.cnnpack'}: cannot write the pack (No space left on device); nothing was left under its name\n"
    assert list(tmp_path.glob("*cnnpack*")) == []


def test_training_and_repacking_from_shards(cli, tmp_path):
    out = tmp_path / "d.cnnpack"
    assert cli("pack", "digits", str(out), "--shards", "2").exit_code == 0
    res = _train_packed(cli, out)
    assert res.exit_code == 0, res.output
    again = tmp_path / "one.cnnpack"
    assert cli("pack", "packed", str(again), "--root", str(out)).exit_code == 0  # shards -> one file
    one, two = pack.open_pack(again).split("train"), pack.open_pack(out).split("train")
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)


def test_a_packed_run_reads_its_batches_from_the_map_and_gathers_nothing_whole(tmp_path):
    """Subsets, the validation split and the statistics compose rows of the map; loaders gather batch by
    batch; the batches, statistics and report equal the source's. Only asking for `.images` gathers."""
    from cnnlab import recipe as rc
    from cnnlab.data.module import describe
    from cnnlab.data.sources import Split
    from cnnlab.engine.assemble import assemble

    out = _packed(tmp_path)
    spec = dict(classes=[0, 2, 4, 6], subset=50, test_subset=20, val_split=0.2, batch_size=16)
    a = ImageDataModule(DataSpec(source="digits", **spec), seed=1)
    b = ImageDataModule(DataSpec(source="packed", root=str(out), **spec), seed=1)
    for dm in (a, b):
        dm.setup()
    splits = ("train", "val", "test")
    assert all(isinstance(getattr(b, n), Split) and getattr(b, n).mapped for n in splits)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    for make in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for (xa, ya), (xb, yb) in zip(getattr(a, make)(), getattr(b, make)(), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert b.train_dataloader().dataset.images is b.train.base  # the loader reads the map itself
    assert (b.in_channels, b.image_size, b.num_classes) == (a.in_channels, a.image_size, a.num_classes)
    assert describe(a)["splits"] == describe(b)["splits"] and describe(b)["shape"] == [1, 8, 8]
    assert all(getattr(b, n).mapped for n in splits)  # after all that, nothing was gathered whole
    assert torch.equal(b.train.images, a.train.images) and not b.train.mapped  # asked: gathered once
    r = rc.load(RECIPES / "smoke.yaml", ["data.source=packed", f"data.root={out}", "eval.tta=[hflip]"])
    assembled = assemble(r)  # what `cnnlab train` builds: the model, no augmentation ops
    assert assembled.data.train.mapped and assembled.data.test.mapped
