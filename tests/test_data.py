import pytest
import torch
from torchvision.io import write_png

from cnnlab.data import ImageDataModule, SOURCES
from cnnlab.data.module import EpochShuffle, channel_stats, per_class, stratified_split
from cnnlab.errors import UserError
from cnnlab.recipe import DataSpec


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
    s = EpochShuffle(100, seed=1)
    s.set_epoch(2)
    first = list(s)
    t = EpochShuffle(100, seed=1)
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
