import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.io import read_image

from cnnlab import recipe as rc
from cnnlab.augment import OPS, Pipeline, build_pipeline
from cnnlab.augment.loader import per_sample_transform
from cnnlab.augment.ops import crop, color_jitter, cutout, hflip, pca_basis, pca_jitter, resized_crop, shift
from cnnlab.data.sources import fashion_mnist
from cnnlab.errors import UserError
from conftest import RECIPES, write


@pytest.fixture(scope="module")
def real():
    """400 real Fashion-MNIST training images, uint8 (400, 1, 28, 28)."""
    return fashion_mnist(None, "train").images[:400]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


DEFAULTS = [("shift", {"max_px": 3}), ("hflip", {}), ("crop", {"padding": 4}), ("resized_crop", {"size": 28}),
            ("color_jitter", {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}),
            ("pca_jitter", {"alpha_std": 0.2}), ("cutout", {"p": 0.7})]


def test_every_registered_op_is_covered():
    assert sorted(OPS) == sorted(name for name, _ in DEFAULTS)


@pytest.mark.parametrize("name,kw", DEFAULTS, ids=[d[0] for d in DEFAULTS])
@pytest.mark.parametrize("channels", [1, 3])
def test_dtype_shape_range_preserved_and_seeded(real, name, kw, channels):
    x = real[:64].expand(-1, channels, -1, -1).contiguous()
    if channels == 3:  # give the colour ops real colour to work on
        x = torch.stack([x[:, 0], x[:, 0].flip(-1), x[:, 0].roll(3, -2)], 1)
    pipe = Pipeline([{"name": name, **kw}], x)
    for batch in (x, x.float() / 255):
        out = pipe(batch, gen(1))
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert out.min() >= 0 and out.max() <= (255 if batch.dtype == torch.uint8 else 1)
        assert torch.equal(out, pipe(batch, gen(1)))  # same seed, same draws
        assert not torch.equal(out, batch) and not torch.equal(out, pipe(batch, gen(2)))


@pytest.mark.parametrize("name,kw", [("shift", {"max_px": 0}), ("hflip", {"p": 0.0}), ("crop", {"padding": 0}),
                                     ("color_jitter", {}), ("pca_jitter", {"alpha_std": 0.0}), ("cutout", {"p": 0.0}),
                                     ("resized_crop", {"size": 28, "scale": (1, 1), "ratio": (1, 1)})])
def test_zero_strength_is_identity(real, name, kw):
    pipe = Pipeline([{"name": name, **kw}], real)
    assert torch.equal(pipe(real[:50], gen()), real[:50])


def test_hflip_mirrors_the_width_axis_of_nchw():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    out = hflip(x, gen(), p=1.0)
    assert torch.equal(out[:, :, :, 0], x[:, :, :, 4])  # columns swap ...
    assert torch.equal(out[:, :, 0, :], x[:, :, 0, :].flip(-1))  # ... rows stay rows, channels stay
    assert torch.equal(hflip(out, gen(), p=1.0), x)  # twice is identity


def test_hflip_probability(real):
    x = real[:1].expand(4000, -1, -1, -1)
    flipped = (hflip(x, gen(), p=0.3) != x).flatten(1).any(1).float().mean()
    assert abs(flipped - 0.3) < 0.03


def test_shift_moves_content_by_the_drawn_offset(real):
    x = real[:32]
    out = shift(x, gen(5), max_px=3)
    g = gen(5)
    dy = torch.randint(-3, 4, (32,), generator=g)
    dx = torch.randint(-3, 4, (32,), generator=g)
    for b in range(32):
        src = F.pad(x[b], (3, 3, 3, 3))  # zero padding
        want = src[:, 3 + dy[b]:3 + dy[b] + 28, 3 + dx[b]:3 + dx[b] + 28]
        assert torch.equal(out[b], want), b
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0}  # values moved, never blended


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("edge", "replicate")])
def test_shift_pad_modes_match_torch_padding(real, mode, torch_mode):
    x = real[:16]
    out = shift(x, gen(2), max_px=4, pad_mode=mode)
    g = gen(2)
    dy, dx = torch.randint(-4, 5, (16,), generator=g), torch.randint(-4, 5, (16,), generator=g)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode=torch_mode).to(torch.uint8)
    for b in range(16):
        assert torch.equal(out[b], padded[b, :, 4 + dy[b]:32 + dy[b], 4 + dx[b]:32 + dx[b]])


def test_crop_size_and_error(real):
    assert crop(real[:5], gen(), padding=2, size=20).shape == (5, 1, 20, 20)
    with pytest.raises(ValueError, match="larger than the padded image"):
        crop(real[:5], gen(), padding=1, size=31)
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\)"):
        crop(real[0], gen())


def test_resized_crop_output_size(real):
    out = resized_crop(real[:8], gen(), size=16)
    assert out.shape == (8, 1, 16, 16) and out.dtype == torch.uint8


def test_color_jitter_on_grayscale_ignores_saturation_and_hue(real):
    assert torch.equal(color_jitter(real[:20], gen(), saturation=0.9, hue=0.5), real[:20])


def test_brightness_scales_each_image_by_one_factor(real):
    x = real[:20].float() / 255
    out = color_jitter(x, gen(3), brightness=0.3)
    keep = (x > 0.05) & (out < 0.999)
    ratio = torch.where(keep, out / x.clamp_min(1e-6), torch.nan)
    for b in range(20):
        r = ratio[b][keep[b]]
        assert 0.7 - 1e-5 <= r.min() and r.max() <= 1.3 + 1e-5 and (r.max() - r.min()) < 1e-4


def test_pca_jitter_is_gaussian_along_the_data_eigenvectors():
    """The noise added to an image is one RGB offset, sum_i a_i sqrt(l_i) p_i with a_i ~ N(0, s^2):
    in the eigenbasis its variances are s^2 * l_i and its kurtosis is 3 (a uniform draw gives 1.8)."""
    g = gen(0)
    mix = torch.tensor([[0.8, 0.1, 0.0], [0.5, 0.5, 0.1], [0.2, 0.3, 0.6]])
    data = (torch.randn(500, 64, 3, generator=g) @ mix * 0.15 + 0.5).clamp(0, 1)
    images = (data.permute(0, 2, 1).reshape(500, 3, 8, 8) * 255).round().to(torch.uint8)
    vals, vecs = pca_basis(images)
    cov = torch.cov(images.float().div(255).permute(1, 0, 2, 3).reshape(3, -1))
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, cov, atol=1e-4)  # a true eigendecomposition
    assert vals[0] >= vals[1] >= vals[2]
    flat = torch.full((20000, 3, 4, 4), 0.5)
    out = pca_jitter(flat, gen(1), alpha_std=0.1, eigvals=vals, eigvecs=vecs)
    delta = out[:, :, 0, 0] - 0.5
    assert torch.allclose(out, delta.view(-1, 3, 1, 1) + 0.5, atol=1e-6)  # one offset per image
    coords = delta @ vecs  # (N, 3) in the eigenbasis
    assert torch.allclose(coords.var(0), 0.01 * vals, rtol=0.05)
    kurt = stats.kurtosis(coords.numpy(), axis=0, fisher=False)
    assert all(abs(k - 3) < 0.15 for k in kurt), kurt
    assert abs(torch.corrcoef(coords.T)[0, 1]) < 0.03  # independent along different eigenvectors


def test_cutout_erases_one_rectangle(real):
    x = torch.full((200, 1, 28, 28), 200, dtype=torch.uint8)
    out = cutout(x, gen(), p=1.0, scale=(0.05, 0.2))
    zero = out[:, 0] == 0
    area = zero.flatten(1).float().mean(1)
    assert (area > 0).all() and (area <= 0.2 + 0.02).all()
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero.flatten(1).sum(1), rows.sum(1) * cols.sum(1))  # a filled rectangle


def _stats(x):
    """Per-image mean, centre of mass (x and y) and std: what each op moves."""
    f = x.float()[:, 0]
    w = f.sum((1, 2)).clamp_min(1)
    ar = torch.arange(f.shape[-1], dtype=torch.float32)
    return {"mean": f.mean((1, 2)), "cx": (f.sum(1) * ar).sum(1) / w, "cy": (f.sum(2) * ar).sum(1) / w,
            "std": f.std((1, 2))}


PIPES = [
    [{"name": "shift", "max_px": 3}],
    [{"name": "hflip", "p": 0.5}],
    [{"name": "crop", "padding": 3}],
    [{"name": "resized_crop", "size": 28, "scale": [0.3, 1.0]}],
    [{"name": "color_jitter", "brightness": 0.4, "contrast": 0.4}],
    [{"name": "pca_jitter", "alpha_std": 0.2}],
    [{"name": "cutout", "p": 0.5}],
    [{"name": "shift", "max_px": 2}, {"name": "hflip"}, {"name": "crop", "padding": 2},
     {"name": "color_jitter", "brightness": 0.3, "contrast": 0.3}],
]


@pytest.mark.slow
@pytest.mark.parametrize("ops", PIPES, ids=["+".join(o["name"] for o in p) for p in PIPES])
def test_loader_and_device_modes_draw_from_the_same_distribution(real, ops):
    x = real[:100].repeat(30, 1, 1, 1)  # 3000 draws over 100 real images
    pipe = build_pipeline(ops, real)
    dev = pipe(x, gen(7))
    torch.manual_seed(7)
    tf = per_sample_transform(pipe, (28, 28))
    ldr = torch.stack([tf(im) for im in x])
    for key, a in _stats(dev).items():
        b = _stats(ldr)[key]
        p = stats.ks_2samp(a.numpy(), b.numpy()).pvalue
        assert p > 1e-3, f"{key}: KS p={p:.2g} (device mean {a.mean():.3f}, loader mean {b.mean():.3f})"


def test_labels_untouched_in_both_modes(real):
    from cnnlab.engine.assemble import assemble

    r = rc.load(RECIPES / "smoke.yaml", ["augment.ops=[{name: hflip}, {name: shift, max_px: 2}]", "data.subset=10"])
    a = assemble(r)
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    a.module.trainer = trainer
    trainer.training = True
    x, y = a.data.train.images[:32], a.data.train.labels[:32]
    xo, yo = a.module.on_after_batch_transfer((x.clone(), y.clone()), 0)
    assert torch.equal(yo, y) and xo.dtype == torch.float32 and xo.shape == x.shape
    r2 = rc.load(RECIPES / "smoke.yaml", ["augment.ops=[{name: hflip}]", "augment.where=loader", "data.subset=10"])
    a2 = assemble(r2)
    assert a2.module.augment is None and a2.data.train_transform is not None
    xb, yb = next(iter(a2.data.train_dataloader()))
    order = [i for _, i in a2.data.train_dataloader().sampler][:len(yb)]  # (epoch, index): seeded per image
    assert torch.equal(yb, a2.data.train.labels[order])


@pytest.mark.parametrize("ops,message", [
    ("[{name: hflp}]", "augment.ops.0.name (--set): 'hflp' is not an augmentation op (did you mean 'hflip'?)"),
    ("[{name: shift, max_px: -2}]", "augment.ops.0.max_px (--set): input should be greater than or equal to 0, got -2"),
    ("[{name: hflip, p: 1.5}]", "augment.ops.0.p (--set): input should be less than or equal to 1, got 1.5"),
    ("[{name: shift, pad_mode: wrap}]", "augment.ops.0.pad_mode (--set): 'wrap' is not allowed; choose from zero, reflect, edge"),
    ("[{name: pca_jitter, eigvals: [1]}]", "augment.ops.0.eigvals (--set): unknown key; allowed: alpha_std"),
    ("[hflip]", "each op must be a mapping with a 'name' key"),
])
def test_bad_ops_are_recipe_errors(ops, message):
    with pytest.raises(rc.RecipeError) as e:
        rc.load(RECIPES / "smoke.yaml", [f"augment.ops={ops}"])
    assert any(message in p for p in e.value.problems), e.value.problems


def test_crop_larger_than_image_is_a_user_error_before_training(real):
    with pytest.raises(UserError, match=r"augment.ops.0 \(crop\): crop size 40x40 is larger than the padded image 32x32"):
        build_pipeline([{"name": "crop", "size": 40, "padding": 2}], real)


@pytest.mark.slow
def test_augment_cli_grid_bench_and_ablation(cli, tmp_path):
    recipe = write(tmp_path / "a.yaml", (RECIPES / "smoke.yaml").read_text() +
                   "augment:\n  ops:\n    - {name: shift, max_px: 2}\n")
    res = cli("augment", str(recipe), "--rows", "3", "--bench", "--ablate", "--set", f"output.dir={cli.runs}",
              "--set", "launcher.jobs=1",  # in this process: the process pool is tests/test_sweep.py's
              "--set", "trainer.max_epochs=1", "--set", "data.batch_size=64", "--batch-size", "64")
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    img = read_image(str(run / "augment_grid.png"))
    assert img.shape[1:] == (430, 650)  # 3 rows x (original + 1 op + 3 draws), 1.3 in per cell at 100 dpi
    r = json.loads((run / "results.json").read_text())
    assert set(r["bench"]["images_per_s"]) == {"device", "loader", "copy"}
    assert all(v > 0 for v in r["bench"]["images_per_s"].values())
    rows = r["ablation"]["rows"]  # the sweeps' one summary (tests/test_sweep.py has its arithmetic)
    assert [v["cell"] for v in rows] == ["none", "shift", "all"] and r["ablation"]["seeds"] == [0]
    assert rows[0]["baseline"] and rows[1]["vs_baseline"]["mean"] == pytest.approx(rows[1]["test_acc"] - rows[0]["test_acc"])
    for t in r["ablation"]["trials"]:  # each an ordinary run folder under ablation/cells/, its accuracy as results.json says
        assert json.loads((Path(t["run_dir"]) / "results.json").read_text())["test_acc"] == t["test_acc"]
    assert (run / "ablation.png").is_file() and len(list((run / "ablation" / "cells").iterdir())) == 3
    assert "vs baseline" in res.output and "(baseline)" in res.output and "images/s" in res.output


def test_ablation_variants_are_overrides_of_augment_ops():
    from cnnlab.tasks.augment import ablation_variants

    ops = [{"name": "shift", "max_px": 2}, {"name": "flip"}, {"name": "shift", "max_px": 4}]
    v = ablation_variants(ops)
    assert list(v) == ["none", "shift", "flip", "shift #2", "all"]
    assert v["none"] == ["augment.ops=[]"] and v["shift #2"] == ['augment.ops=[{"name": "shift", "max_px": 4}]']
    assert json.loads(v["all"][0].partition("=")[2]) == ops


def test_augment_cli_needs_ops(cli):
    res = cli("augment", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={cli.runs}")
    assert res.exit_code == 2 and "the recipe has no augmentation ops" in res.output
    assert not cli.runs.exists()


