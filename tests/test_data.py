import pytest
import torch
from torchvision.io import write_png

from cnnlab.data import ImageDataModule, SOURCES
from cnnlab.data.module import EpochShuffle, channel_stats, per_class, stratified_split
from cnnlab.errors import UserError
from cnnlab.data.spec import DataSpec


def test_fashion_mnist_real_files():
    train, test = SOURCES.get("fashion-mnist")(None, "train"), SOURCES.get("fashion-mnist")(None, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.classes[9] == "ankle boot"
    assert 60 < train.images.float().mean() < 90  # real images: mostly dark background


def test_fashion_mnist_missing_root(tmp_path):
    with pytest.raises(UserError, match="data.root: Fashion-MNIST idx files .* not found in .*dataset-fashion-mnist"):
        SOURCES.get("fashion-mnist")(tmp_path, "train")


def test_subset_classes_and_val_split_are_seeded():
    spec = DataSpec(classes=[5, 7, 9], subset=20, test_subset=10, val_split=0.25)
    dm = ImageDataModule(spec, seed=3)
    dm.setup()
    assert dm.num_classes == 3 and dm.train.classes == ["sandal", "sneaker", "ankle boot"]
    assert torch.bincount(dm.train.labels).tolist() == [15] * 3
    assert torch.bincount(dm.val.labels).tolist() == [5] * 3
    assert torch.bincount(dm.test.labels).tolist() == [10] * 3
    again = ImageDataModule(spec, seed=3)
    again.setup()
    assert torch.equal(dm.train.images, again.train.images)
    other = ImageDataModule(spec, seed=4)
    other.setup()
    assert not torch.equal(dm.train.images, other.train.images)
    mean, std = channel_stats(dm.train.images)
    assert torch.allclose(mean, dm.train.images.float().div(255).mean().view(1))
    assert dm.mean.shape == (1,) and torch.allclose(dm.mean, mean)


def test_classes_out_of_range():
    dm = ImageDataModule(DataSpec(source="digits", classes=[3, 12]))
    with pytest.raises(UserError, match=r"data.classes: \[12\] out of range; this source has classes 0..9"):
        dm.setup()


def test_per_class_and_stratified_split():
    labels = torch.arange(10).repeat_interleave(50)
    g = torch.Generator().manual_seed(0)
    idx = per_class(labels, 7, g)
    assert torch.bincount(labels[idx]).tolist() == [7] * 10
    tr, va = stratified_split(labels, 0.2, g)
    assert torch.bincount(labels[va]).tolist() == [10] * 10
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 500


def test_digits_source_and_resize():
    dm = ImageDataModule(DataSpec(source="digits", image_size=16, val_split=0.1))
    dm.setup()
    assert dm.in_channels == 1 and dm.image_size == 16 and dm.num_classes == 10
    assert len(dm.train.labels) + len(dm.val.labels) + len(dm.test.labels) == 1797
    assert dm.train.images.max() > 200


def test_imagefolder(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, size in (("cat", 20), ("dog", 24)):  # mixed sizes are resized
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                write_png(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                          str(tmp_path / split / c / f"{i}.png"))
    dm = ImageDataModule(DataSpec(source="imagefolder", root=str(tmp_path), image_size=12, val_split=0.25))
    dm.setup()
    assert dm.train.classes == ["cat", "dog"] and dm.in_channels == 3 and dm.image_size == 12
    assert len(dm.train.labels) == 6 and len(dm.val.labels) == 2 and len(dm.test.labels) == 8


def test_imagefolder_and_cifar_need_a_root(tmp_path):
    with pytest.raises(UserError, match="imagefolder needs an existing folder"):
        SOURCES.get("imagefolder")(tmp_path / "nope", "train")
    with pytest.raises(UserError, match="no class folders"):
        SOURCES.get("imagefolder")(tmp_path, "train")
    with pytest.raises(UserError, match="CIFAR-10 not found or corrupt"):
        SOURCES.get("cifar10")(tmp_path, "train")


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    s = EpochShuffle(100, seed=1, batch_size=100)
    s.set_epoch(2)
    first = list(s)
    t = EpochShuffle(100, seed=1, batch_size=100)
    t.set_epoch(2)
    assert list(t) == first and sorted(first) == list(range(100))
    t.set_epoch(3)
    assert list(t) != first


def test_batches_are_uint8_and_whole():
    dm = ImageDataModule(DataSpec(subset=10, batch_size=16, val_split=0.0), seed=0)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64


def _setup(seed=1, **spec) -> ImageDataModule:
    dm = ImageDataModule(DataSpec(source="digits", **spec), seed=seed)
    dm.setup()
    return dm


def test_each_seeded_draw_has_its_own_generator():
    """The training subset, the test subset and the validation hold-out are drawn independently:
    choosing a test subset leaves the training data alone, and the other way round."""
    base = dict(classes=[0, 1, 2, 3], subset=30, test_subset=None, val_split=0.2)
    a = _setup(**base)
    some_test = _setup(**{**base, "test_subset": 8})
    assert torch.equal(a.train.images, some_test.train.images) and torch.equal(a.val.images, some_test.val.images)
    assert len(some_test.test.labels) == 32 < len(a.test.labels)
    all_train = _setup(**{**base, "subset": None, "test_subset": 8})
    assert torch.equal(some_test.test.images, all_train.test.images)
    assert len(all_train.train.labels) > len(a.train.labels)
    assert not torch.equal(_setup(seed=2, **base).train.images, a.train.images)


def test_val_split_of_the_whole_training_split_is_drawn_by_the_seed_itself():
    """Without subsets the hold-out is a stratified draw from torch.Generator().manual_seed(seed), as
    always: runs on the full data keep their splits (and their numbers)."""
    dm = _setup(seed=5, val_split=0.1)
    full = SOURCES.get("digits")(None, "train")
    tr, va = stratified_split(full.labels, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(dm.val.images, full.images[va]) and torch.equal(dm.train.labels, full.labels[tr])


# --------------------------------------------------------------------------- imagefolder: labels and bad files


def pngs(folder, n: int, value: int, size: int = 8) -> None:
    """n small constant-colour PNGs (value identifies the class after any resize)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(torch.full((3, size, size), value, dtype=torch.uint8), str(folder / f"{i}.png"))


def png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def folder_dm(root, **spec) -> ImageDataModule:
    return ImageDataModule(DataSpec(source="imagefolder", root=str(root), image_size=8, val_split=0.0, **spec))


def test_imagefolder_test_labels_follow_the_training_class_names(tmp_path):
    """A class missing from the test folder must not shift the labels of the classes after it."""
    value = {"ant": 10, "bee": 120, "cat": 240}
    for c in value:
        pngs(tmp_path / "train" / c, 2, value[c])
    for c in ("ant", "cat"):
        pngs(tmp_path / "test" / c, 2, value[c])
    dm = folder_dm(tmp_path)
    dm.setup()
    assert dm.test.classes == dm.train.classes == ["ant", "bee", "cat"]
    label_of = {int(im[0, 0, 0]): int(y) for im, y in zip(dm.test.images, dm.test.labels)}
    assert label_of == {10: 0, 240: 2}
    pngs(tmp_path / "test" / "dog", 1, 60)
    with pytest.raises(UserError) as e:
        folder_dm(tmp_path).setup()
    assert "'dog'" in str(e.value) and str(tmp_path / "test" / "dog") in str(e.value) and "\n" not in str(e.value)


BAD_FILES = {  # name -> (bytes, what the error says)
    "truncated": (None, "truncated or corrupt"),
    "empty": (b"", "empty file"),
    "text": (b"class,label\ncat,3\n", "not an image"),
    "over_limit": (png_claiming(9000, 9000), "9000x9000 px is over the limit"),  # 81M px: below PIL's own limit
    "bomb": (png_claiming(60000, 60000), "over the limit"),
}


def _with_bad_file(root, case: str):
    for split in ("train", "test"):
        for c, v in (("ant", 10), ("bee", 200)):
            pngs(root / split / c, 3, v)
    data, _ = BAD_FILES[case]
    if data is None:  # a real PNG cut inside its pixel data
        noise = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        write_png(noise, str(root / "whole.png"))
        whole = (root / "whole.png").read_bytes()
        data = whole[: len(whole) // 2]
    bad = root / "train" / "bee" / "bad.png"
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_image_is_a_one_line_error_naming_it(tmp_path, case):
    bad = _with_bad_file(tmp_path, case)
    with pytest.raises(UserError) as e:
        folder_dm(tmp_path).setup()
    msg = str(e.value)
    assert str(bad) in msg and BAD_FILES[case][1] in msg and "data.bad_images: skip" in msg and "\n" not in msg


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_images_can_be_skipped_and_counted(tmp_path, case):
    bad = _with_bad_file(tmp_path, case)
    dm = folder_dm(tmp_path, bad_images="skip")
    dm.setup()
    assert [s["file"] for s in dm.skipped] == [str(bad)] and BAD_FILES[case][1] in dm.skipped[0]["reason"]
    assert torch.bincount(dm.train.labels).tolist() == [3, 3] and len(dm.test.labels) == 6


def test_imagefolder_degenerate_layouts_are_one_line_errors(tmp_path):
    pngs(tmp_path / "train" / "ant", 2, 10)
    pngs(tmp_path / "test" / "ant", 2, 10)
    with pytest.raises(UserError, match=r"at least 2 classes.*" + str(tmp_path / "train")):
        folder_dm(tmp_path).setup()
    (tmp_path / "train" / "bee").mkdir()
    (tmp_path / "train" / "bee" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"class folder .*train/bee holds no images"):
        folder_dm(tmp_path).setup()
    (tmp_path / "train" / "bee" / "0.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"no readable images in .*train/bee \(1 unreadable"):
        folder_dm(tmp_path, bad_images="skip").setup()
    pngs(tmp_path / "train" / "bee", 2, 200)
    pngs(tmp_path / "test" / "bee", 2, 200)
    (tmp_path / "train" / "bee" / "0.png").unlink()
    folder_dm(tmp_path).setup()  # now a proper layout
    import shutil

    shutil.rmtree(tmp_path / "test")
    with pytest.raises(UserError, match=r"has a train/ folder but no test/"):
        folder_dm(tmp_path).setup()


def test_bad_image_stops_cnnlab_train_with_exit_2_and_no_traceback(cli, tmp_path):
    from conftest import write

    bad = _with_bad_file(tmp_path / "images", "text")
    recipe = write(tmp_path / "folder.yaml", f"""
data: {{source: imagefolder, root: {tmp_path / 'images'}, image_size: 8, val_split: 0.0, batch_size: 4}}
model: {{name: vgg-small, widths: [4, 8], depth: 1}}
trainer: {{accelerator: cpu, max_epochs: 1}}
output: {{dir: {cli.runs}}}
""")
    res = cli("train", str(recipe))
    assert res.exit_code == 2 and str(bad) in res.output and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0, res.output
    assert not cli.runs.exists()


def test_channel_stats_in_chunks_match_the_whole_tensor_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (130, 3, 9, 9), generator=g, dtype=torch.uint8)  # 64 + 64 + 2 images
    mean, std = channel_stats(x)
    ref = x.double().div(255).transpose(0, 1).flatten(1)
    assert torch.allclose(mean.double(), ref.mean(1), atol=1e-7) and torch.allclose(std.double(), ref.std(1), atol=1e-7)
    f = torch.randn(70, 2, 4, 4, generator=g) * 3 + 1  # float data (cached features) as it is
    assert torch.allclose(channel_stats(f)[0], f.transpose(0, 1).flatten(1).mean(1), atol=1e-6)


def test_the_data_package_imports_its_parts_lazily():
    import subprocess
    import sys

    import cnnlab.data
    from cnnlab.data.sources import Split

    assert cnnlab.data.Split is Split and cnnlab.data.SOURCES is SOURCES
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        cnnlab.data.Nope  # noqa: B018
    # checking a recipe's data: section loads no Lightning (what keeps --print-recipe near `import torch`)
    code = "import sys, cnnlab.data.spec, cnnlab.recipe; print('pytorch_lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_free_device_memory_counts_what_the_allocator_holds_unused(monkeypatch):
    """A second run in one process: the first run's tensors are freed but still reserved by the
    caching allocator, which the driver's free count does not include."""
    import torch

    from cnnlab.env import device_free_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (2 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 10 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 3 << 30)
    assert device_free_bytes("cuda:0") == (2 + 10 - 3) << 30


def test_each_fit_resets_the_device_peak(monkeypatch):
    """Every run in a sweep, an ablation or a finetune after feature extraction reports its own peak."""
    import torch

    from cnnlab.engine.callbacks import Throughput

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))

    class On:
        def __init__(self, kind):
            self.device = torch.device(kind)

    Throughput().on_fit_start(None, On("cpu"))
    Throughput().on_fit_start(None, On("cuda"))
    assert calls == [torch.device("cuda")]
