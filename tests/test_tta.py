"""Test-time augmentation: view geometry on hand-made images, aggregation on known logits, the
paired statistics, and `cnnlab eval-tta` / `eval.tta` end to end on a tiny real run."""
import json
import math
import re

import pytest
import torch

from cnnlab.tta import VIEWS
from cnnlab.tta.policy import aggregate, build, check, parse
from cnnlab.tta.stats import mcnemar_p, paired, scores
from conftest import RECIPES

SMOKE = str(RECIPES / "smoke.yaml")


def image(h: int = 4, w: int = 4, b: int = 1) -> torch.Tensor:
    """(b, 1, h, w) uint8 with every pixel distinct: value = 1 + 10 * row + col (+ 100 * image)."""
    r = torch.arange(h).view(h, 1) * 10 + torch.arange(w).view(1, w) + 1
    return torch.stack([r + 100 * i for i in range(b)]).view(b, 1, h, w).to(torch.uint8)


def views(name: str, x: torch.Tensor, **kw) -> list[torch.Tensor]:
    """The views of image 0, one (h, w) tensor per view."""
    out = VIEWS.get(name)(x, **kw)
    return list(out.view(-1, *x.shape)[:, 0, 0])


def test_identity_and_hflip_mirror_along_w_the_last_axis():
    x = image(2, 3)
    assert torch.equal(VIEWS.get("identity")(x), x)
    same, mirror = views("hflip", x)
    assert torch.equal(same, x[0, 0])
    assert mirror.tolist() == [[3, 2, 1], [13, 12, 11]]  # columns reversed, rows kept


def test_translate_shifts_by_px_each_way_with_zero_fill():
    x = image(3, 3)
    centre, up, down, left, right = views("translate", x, px=1)
    assert torch.equal(centre, x[0, 0])
    assert up.tolist() == [[0, 0, 0], [1, 2, 3], [11, 12, 13]]  # out[r] = x[r - 1]: the content moves down
    assert down.tolist() == [[11, 12, 13], [21, 22, 23], [0, 0, 0]]
    assert left.tolist() == [[0, 1, 2], [0, 11, 12], [0, 21, 22]]
    assert right.tolist() == [[2, 3, 0], [12, 13, 0], [22, 23, 0]]


def test_five_crop_cuts_centre_and_corners_of_the_padded_image():
    x = image(4, 4)
    centre, tl, tr, bl, br = views("five-crop", x, pad=1)
    padded = torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1))  # 6 x 6; crops keep 4 x 4
    assert torch.equal(centre, x[0, 0])
    assert torch.equal(tl, padded[:4, :4]) and torch.equal(tr, padded[:4, 2:])
    assert torch.equal(bl, padded[2:, :4]) and torch.equal(br, padded[2:, 2:])


def test_five_crop_resize_mode_crops_an_upscaled_image_and_ten_crop_adds_mirrors():
    x = image(4, 4)
    up = torch.nn.functional.interpolate(x.float(), size=(6, 6), mode="bilinear", align_corners=False).round()[0, 0]
    centre, tl, *_ = views("five-crop", x, pad=1, mode="resize")
    assert torch.equal(centre.float(), up[1:5, 1:5]) and torch.equal(tl.float(), up[:4, :4])
    ten = views("ten-crop", x, pad=1)
    five = views("five-crop", x, pad=1)
    assert len(ten) == 10
    for a, b in zip(five, ten[5:]):
        assert torch.equal(b, a.flip(-1))


def test_scales_resize_about_the_centre_and_keep_the_size():
    x = image(4, 4)
    same, small, big = views("scales", x, factors=[1.0, 0.5, 2.0])
    assert torch.equal(same, x[0, 0])
    assert small.shape == big.shape == (4, 4)
    assert small[0].tolist() == [0, 0, 0, 0] and small[:, 0].tolist() == [0, 0, 0, 0]  # a 2 x 2 image, padded
    assert (small[1:3, 1:3] > 0).all()
    up = torch.nn.functional.interpolate(x.float(), size=(8, 8), mode="bilinear", align_corners=False).round()[0, 0]
    assert torch.equal(big.float(), up[2:6, 2:6])  # the centre 4 x 4 of the doubled image


def test_views_are_view_major_and_keep_each_image_apart():
    x = image(4, 4, b=3)
    out = VIEWS.get("hflip")(x)
    assert torch.equal(out[:3], x) and torch.equal(out[3:], x.flip(-1))


def test_policies_compose_left_to_right():
    x = image(6, 6, b=2)
    p = build("hflip+translate", {"translate": {"px": 1}})
    out = p(x)
    assert check(p, x) == p.views == 10 and out.shape == (20, 1, 6, 6)
    flipped_then_shifted = VIEWS.get("translate")(x.flip(-1), px=1)
    assert torch.equal(out.view(5, 2, 2, 1, 6, 6)[:, 1].reshape(10, 1, 6, 6), flipped_then_shifted)


@pytest.mark.parametrize("policy,params,message", [
    ("translate", {"translate": {"px": 3}}, "view 'translate' of policy 'translate': a shift of 3 px is half or more of the 6x6 image"),
    ("hflip+five-crop", {"five-crop": {"pad": 4}}, "view 'five-crop' of policy 'hflip+five-crop': a margin of 4 px"),
    ("scales", {"scales": {"factors": [0.1]}}, "factor 0.1 shrinks the 6x6 image below 2 px"),
])
def test_views_that_do_not_fit_the_images_are_refused_by_name(policy, params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check(build(policy, params), image(6, 6))


def test_policy_names_are_checked():
    assert parse("ten-crop+scales") == ["ten-crop", "scales"]
    with pytest.raises(KeyError, match="did you mean 'hflip'"):
        parse("hflp")
    with pytest.raises(ValueError, match="names hflip twice"):
        parse("hflip+hflip")
    with pytest.raises(ValueError, match="empty view"):
        parse("hflip+")


def test_aggregation_on_known_logits():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # 2 views, 1 image, 2 classes
    p0, p1 = torch.softmax(logits[0, 0], -1), torch.softmax(logits[1, 0], -1)
    assert torch.allclose(aggregate(logits, "mean-prob").exp()[0], (p0 + p1) / 2)
    assert torch.allclose(aggregate(logits, "mean-logit").exp()[0], torch.softmax(torch.tensor([1.0, 0.0]), -1))
    top = torch.maximum(p0, p1)
    assert torch.allclose(aggregate(logits, "max").exp()[0], top / top.sum())
    for how in ("mean-prob", "mean-logit", "max"):  # one view: exactly that view's log-softmax
        assert torch.equal(aggregate(logits[:1], how), torch.log_softmax(logits[0], -1))


def test_scores_and_the_paired_test_on_known_numbers():
    logp = torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]))
    s = scores(logp, torch.tensor([0, 0, 1]))
    assert s["acc"] == pytest.approx(2 / 3)
    assert s["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.8)) / 3)
    # one image a confidence bin: ECE = mean |correct - confidence| = (0.1 + 0.6 + 0.2) / 3
    assert s["ece"] == pytest.approx(0.3, abs=1e-6)
    assert mcnemar_p(0, 10) == pytest.approx(2 / 2 ** 10) and mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0
    base = torch.tensor([True] * 90 + [False] * 10)
    now = torch.tensor([True] * 88 + [False] * 2 + [True] * 10)  # lost 2, gained 10
    d = paired(base, now)
    assert (d["lost"], d["gained"]) == (2, 10) and d["delta"] == pytest.approx(0.08)
    assert d["ci95"][0] < 0.08 < d["ci95"][1] and d["mcnemar_p"] == pytest.approx(mcnemar_p(2, 10))
    assert d["significant"]
    d = paired(base, torch.tensor([True] * 88 + [False] * 11 + [True]))
    assert (d["lost"], d["gained"]) == (2, 1) and not d["significant"] and d["ci95"][0] < 0 < d["ci95"][1]


@pytest.fixture
def tta_run(smoke_run):
    """The suite's smoke run, trained with `eval.tta: [hflip]` (flip and shift augmentation)."""
    return smoke_run.path


@pytest.mark.slow
def test_train_with_eval_tta_adds_the_table_to_results(tta_run):
    r = json.loads((tta_run / "results.json").read_text())
    rows = {p["policy"]: p for p in r["tta"]["policies"]}
    assert list(rows) == ["identity", "hflip"] and rows["hflip"]["views"] == 2
    assert rows["identity"]["acc"] == r["test_acc"]  # the tested (best) weights on the same images
    assert rows["identity"]["nll"] == pytest.approx(r["test_loss"], rel=1e-5)
    assert (tta_run / "tta.json").is_file() and (tta_run / "tta.png").is_file()


@pytest.mark.slow
def test_eval_tta_identity_equals_plain_eval_and_writes_tta_json(cli, tta_run):
    assert cli("eval", str(tta_run)).exit_code == 0
    e = json.loads((tta_run / "eval.json").read_text())
    res = cli("eval-tta", str(tta_run), "--views", "translate,ten-crop+scales", "--set", "eval.views.translate.px=1",
              "--out", str(cli.runs / "tta"))
    assert res.exit_code == 0, res.output
    t = json.loads((cli.runs / "tta" / "tta.json").read_text())
    rows = {p["policy"]: p for p in t["policies"]}
    assert list(rows) == ["identity", "translate", "ten-crop+scales"]
    assert rows["identity"]["acc"] == e["test_acc"] and rows["identity"]["vs_single"] is None
    assert rows["identity"]["nll"] == pytest.approx(e["test_loss"], rel=1e-5)
    assert [rows[p]["views"] for p in rows] == [1, 5, 30]
    assert t["view_params"]["translate"]["px"] == 1 and t["images"] == 300
    for p in t["policies"][1:]:
        d = p["vs_single"]
        assert d["delta"] == pytest.approx(p["acc"] - rows["identity"]["acc"], abs=1e-6)
        assert d["ci95"][0] <= d["delta"] <= d["ci95"][1] and 0 <= d["mcnemar_p"] <= 1
        assert p["images_per_s"] > 0 and 0 <= p["ece"] <= 1
    assert (cli.runs / "tta" / "tta.png").is_file() and "ten-crop+scales" in res.output


@pytest.mark.slow
def test_chunking_bounds_each_forward_without_changing_the_results(cli, tta_run):
    def tta(*extra):
        out = cli.runs / f"chunk{len(extra)}"
        res = cli("eval-tta", str(tta_run), "--views", "hflip+translate", "--agg", "max", "--out", str(out), *extra)
        assert res.exit_code == 0, res.output
        return json.loads((out / "tta.json").read_text())

    whole, chunked = tta(), tta("--set", "eval.chunk=7")  # 10 views: 32 images a batch -> groups of 1 image
    assert (whole["chunk"], chunked["chunk"], whole["agg"]) == (32, 7, "max")
    for a, b in zip(whole["policies"], chunked["policies"]):
        assert a["acc"] == b["acc"] and a["nll"] == pytest.approx(b["nll"], rel=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--views", "translate", "--set", "eval.views.translate.px=14"],
     "eval.tta: view 'translate' of policy 'translate': a shift of 14 px is half or more of the 28x28 image"),
    (["--views", "hflip+tenn-crop"], "'tenn-crop' is not a test-time view (did you mean 'ten-crop'?)"),
    (["--agg", "median"], "eval.agg (--set): 'median' is not allowed"),
    (["--set", "eval.views.scales.factor=[2]"], "eval.views.scales.factor (--set): unknown key (did you mean 'factors'?)"),
    (["--set", "optim.lr=1"], "--set optim.lr=1: eval-tta evaluates the run as recorded"),
])
def test_eval_tta_user_errors_exit_2_and_write_nothing(cli, tta_run, args, message):
    before = sorted(p.name for p in tta_run.iterdir())
    res = cli("eval-tta", str(tta_run), *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert sorted(p.name for p in tta_run.iterdir()) == before


def test_train_refuses_eval_tta_that_does_not_fit_before_anything_is_written(cli):
    res = cli("train", SMOKE, "--set", "eval.tta=[five-crop]", "--set", "eval.views.five-crop.pad=20")
    assert res.exit_code == 2 and "view 'five-crop' of policy 'five-crop': a margin of 20 px" in " ".join(res.output.split())
    assert list(cli.cwd.iterdir()) == []


# every registered view, with its defaults: shape, dtype and order of the views, the first view of a
# mirrored image mirrored too, and one deterministic answer for the same batch
VIEW_COUNTS = {"identity": 1, "hflip": 2, "translate": 5, "five-crop": 5, "ten-crop": 10, "scales": 3}


def test_the_walk_covers_every_registered_view():
    assert sorted(VIEW_COUNTS) == sorted(VIEWS.names())


@pytest.mark.parametrize("name", sorted(VIEW_COUNTS))
def test_every_view_keeps_size_and_dtype_and_is_view_major_and_deterministic(name):
    x = torch.stack([image(8, 8, 3)[:, 0]] * 3, 1)  # (3 images, 3 channels, 8, 8) uint8, distinct images
    out = VIEWS.get(name)(x)
    v = VIEW_COUNTS[name]
    assert out.shape == (v * 3, 3, 8, 8) and out.dtype == torch.uint8
    assert torch.equal(out, VIEWS.get(name)(x))  # no randomness at test time
    per_view = out.view(v, 3, 3, 8, 8)  # view-major: rows [k*B, (k+1)*B) are view k of every image
    for k in range(v):
        one = VIEWS.get(name)(x[1:2]).view(v, 1, 3, 8, 8)[k, 0]
        assert torch.equal(per_view[k, 1], one)  # image 1's view k does not depend on the other images
    floats = VIEWS.get(name)(x.float())
    assert floats.dtype == torch.float32 and floats.shape == out.shape
