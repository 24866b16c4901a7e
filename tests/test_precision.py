"""Precision: every mode validation accepts trains, tests and evaluates end to end; 16-bit master
weights with stochastic rounding (the rounding itself, the optimizer steps, runs, resumes in
test_cli); non-finite losses stop a run; the sweep."""
import json
import math
from pathlib import Path

import pytest
import torch

from cnnlab import recipe as rc
from cnnlab.precision import LowPrecision, LowPrecisionAdamW, LowPrecisionSGD, weight_format
from cnnlab.precision.rounding import bf16_stochastic
from cnnlab.spec import CUDA_ONLY_PRECISIONS, PRECISIONS
from cnnlab.tasks import evaluate
from cnnlab.tasks import train as train_task
from conftest import RECIPES

# what the smoke recipe's accelerator (cpu) accepts, whatever else is here
HERE = [p for p in PRECISIONS if p not in CUDA_ONLY_PRECISIONS]
WEIGHTS = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}  # else float32


@pytest.mark.parametrize("precision", HERE)
def test_every_accepted_precision_runs_end_to_end(precision, tmp_path):
    r = rc.load(RECIPES / "smoke.yaml", [f"output.dir={tmp_path}", f"trainer.precision={precision}", "trainer.max_epochs=2",
                                         "data.subset=16", "data.test_subset=10", "output.plots=false",
                                         "eval.tta=[hflip]"])
    out = train_task.run(r, progress=False)
    assert out["precision"] == precision and torch.isfinite(torch.tensor(out["test_loss"]))
    assert out["test_acc"] > 0.1  # above chance (10 classes) after 2 epochs of 144 images
    sd = torch.load(out["checkpoint"], weights_only=True)["state_dict"]
    assert sd["net.stages.0.0.0.weight"].dtype == WEIGHTS.get(precision, torch.float32)
    again = evaluate.run(out["run_dir"], progress=False)
    assert again["test_acc"] == pytest.approx(out["test_acc"], abs=1e-6)
    single, flip = out["tta"]["policies"]  # test-time augmentation in the same precision
    assert out["tta"]["precision"] == precision and single["acc"] == pytest.approx(out["test_acc"], abs=1e-6)
    assert flip["policy"] == "hflip" and torch.isfinite(torch.tensor(flip["nll"]))


# --------------------------------------------------------------------------- 16-bit weights (optim.weights)


FORMATS = {"bf16": weight_format("bf16"), "fp16": weight_format("fp16"), "fixed16": weight_format("fixed16", 12)}


def _values(n: int = 512, seed: int = 0) -> torch.Tensor:
    """float32 values across magnitudes and signs, few of them representable in 16 bits."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.logspace(-3, 0.5, n)


def _neighbours(fmt, x):
    """(lo, hi): the representable values just below and above x (equal where x is representable)."""
    if fmt.name == "fixed16":
        step = 2.0 ** -fmt.frac_bits
        return torch.floor(x / step) * step, torch.ceil(x / step) * step
    d = fmt.storage
    near = x.to(d)
    down = torch.where(near.float() > x, torch.nextafter(near, torch.full_like(near, -math.inf)), near).float()
    up = torch.where(near.float() < x, torch.nextafter(near, torch.full_like(near, math.inf)), near).float()
    return down, up


@pytest.mark.parametrize("name", FORMATS)
def test_stochastic_rounding_is_unbiased_and_lands_on_the_two_neighbours(name):
    fmt, x = FORMATS[name], _values()
    reps = 4000
    g = torch.Generator().manual_seed(1)
    r = fmt.decode(fmt.encode(x.repeat(reps, 1), "stochastic", g))  # (reps, n)
    lo, hi = _neighbours(fmt, x)
    assert bool(((r == lo) | (r == hi)).all()), "a stochastic rounding left the two neighbours"
    assert bool((hi > lo).sum() > 0.9 * len(x))  # the test values are mostly not representable
    # each rounding is lo + (hi - lo) * Bernoulli(p): the mean's standard error is (hi - lo) sqrt(p(1-p)/reps)
    p = ((x - lo) / (hi - lo)).nan_to_num(0.0)
    se = (hi - lo) * torch.sqrt(p * (1 - p) / reps)
    err = (r.double().mean(0) - x.double()).abs()
    assert bool((err <= 6 * se.double() + 1e-12).all()), f"biased: worst {float((err / (se + 1e-30)).max()):.1f} standard errors"
    # and over all values at once: the errors in units of a spacing average to 0 within 5 standard errors
    m = hi > lo
    z = ((r.double().mean(0) - x.double()) / (hi - lo).double())[m]
    pq = (p * (1 - p)).double()[m]
    assert abs(float(z.mean())) < 5 * math.sqrt(float(pq.sum()) / reps) / len(z)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_nearest_is_torchs_cast(name):
    fmt, x = FORMATS[name], _values(4096, seed=3)
    assert torch.equal(fmt.encode(x, "nearest"), x.to(fmt.storage))


def test_bf16_stochastic_rounding_keeps_representable_values_and_signs():
    x = torch.tensor([1.0, -1.0, 0.0, -0.0, 3.140625, -65280.0, 1e-40])  # bf16 values (the last subnormal in both)
    x = x.to(torch.bfloat16).float()
    for seed in range(20):
        assert torch.equal(bf16_stochastic(x, torch.Generator().manual_seed(seed)).float(), x)
    up = bf16_stochastic(torch.full((10000,), 1.0 + 2 ** -9), torch.Generator().manual_seed(0)).float()  # 1/4 of a spacing
    assert set(up.unique().tolist()) == {1.0, 1.0 + 2 ** -7} and 0.23 < float((up > 1).float().mean()) < 0.27


def test_fixed16_ranges_steps_and_saturation():
    f = weight_format("fixed16", 8)  # <8,8>: step 1/256, range [-128, 128 - 1/256]
    assert f.range == (-128.0, 128 - 2 ** -8)
    x = torch.tensor([0.5, -0.5, 2 ** -8, 1000.0, -1000.0, 127.99, float("nan")])
    for rounding in ("nearest", "stochastic"):
        codes = f.encode(x, rounding, torch.Generator().manual_seed(0))
        assert codes.dtype == torch.int16
        assert f.decode(codes).tolist()[:5] == [0.5, -0.5, 2 ** -8, 128 - 2 ** -8, -128.0]  # saturated, not wrapped
        assert f.decode(codes)[6].item() == 0.0
    assert f.decode(f.encode(torch.tensor([0.3]), "nearest")).item() == round(0.3 * 256) / 256
    assert weight_format("fixed16", 14).range == (-2.0, 2 - 2 ** -14)
    with pytest.raises(ValueError, match="frac_bits"):
        weight_format("fixed16", 16)


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("name,rounding", [("bf16", "nearest"), ("bf16", "stochastic"), ("fixed16", "stochastic"), ("fp16", "nearest")])
def test_a_step_equals_the_float32_step_up_to_rounding(opt, name, rounding):
    fmt = FORMATS[name]
    net = _tiny()
    lp = LowPrecision(net, fmt, rounding)
    ref = _tiny()  # torch's own optimizer on float32 copies of the same weights
    params = dict(ref.named_parameters())
    groups = [{"params": list(lp.storage(net).values()), "weight_decay": 0.01}]
    ref_groups = [{"params": [params[n] for n in lp.names], "weight_decay": 0.01}]
    if opt == "sgd":
        ours = LowPrecisionSGD(lp, net, groups, lr=0.3, momentum=0.9, nesterov=True)
        theirs = torch.optim.SGD(ref_groups, lr=0.3, momentum=0.9, nesterov=True)
    else:
        ours = LowPrecisionAdamW(lp, net, groups, lr=0.01)
        theirs = torch.optim.AdamW(ref_groups, lr=0.01, foreach=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    for _ in range(3):
        with torch.no_grad():  # the reference starts each step from our (rounded) weights
            for n, s in lp.storage(net).items():
                params[n].copy_(fmt.decode(s))
        lp.seed(7, torch.device("cpu"))
        loss = torch.nn.functional.cross_entropy(lp(net, x), y)
        loss.backward()
        for n in lp.names:
            params[n].grad = lp.leaves[n].grad.clone()
        ours.step()
        theirs.step()
        for n, s in lp.storage(net).items():
            got, want = fmt.decode(s), params[n].detach()
            lo, hi = _neighbours(fmt, want)
            if rounding == "nearest":
                assert torch.equal(got, fmt.decode(fmt.encode(want, "nearest"))), n
            else:
                assert bool(((got == lo) | (got == hi)).all()), n
        assert lp.leaves is None


def test_state_precision_is_its_own_choice():
    net = _tiny()
    lp = LowPrecision(net, FORMATS["bf16"], "stochastic")
    opt = LowPrecisionAdamW(lp, net, [{"params": list(lp.storage(net).values())}], lr=0.01, state_dtype="bf16")
    lp(net, torch.randn(4, 6)).sum().backward()
    opt.step()
    state = opt.state[lp.storage(net)["0.weight"]]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    assert all(s.dtype == torch.bfloat16 for s in lp.storage(net).values())


@pytest.mark.parametrize("weights,dtype", [("{dtype: bf16, rounding: nearest}", torch.bfloat16),
                                           ("{dtype: fp16}", torch.float16),
                                           ("{dtype: fixed16, frac_bits: 10}", torch.int16)])
def test_16_bit_weights_train_checkpoint_at_2_bytes_and_evaluate(weights, dtype, tmp_path):
    r = rc.load(RECIPES / "smoke.yaml", [f"output.dir={tmp_path}", f"optim.weights={weights}", "trainer.max_epochs=2",
                                         "data.subset=16", "data.test_subset=10", "output.plots=false", "eval.tta=[hflip]"])
    out = train_task.run(r, progress=False)
    assert out["test_acc"] > 0.1
    assert out["tta"]["policies"][0]["acc"] == pytest.approx(out["test_acc"], abs=1e-6)  # the decoded weights, again
    w = out["weights"]
    assert w["bytes"] == 2 * w["parameters"] == 2 * out["parameters"] and w["parameters"] > 10_000
    sd = torch.load(out["checkpoint"], weights_only=True)["state_dict"]
    assert sd["net.stages.0.0.0.weight"].dtype == dtype and sd["net.stages.0.0.1.weight"].dtype == dtype  # conv, BN
    assert sd["net.stages.0.0.1.running_var"].dtype == torch.float32  # statistics are not weights
    again = evaluate.run(out["run_dir"], progress=False)
    assert again["test_acc"] == pytest.approx(out["test_acc"], abs=1e-6)


def test_weights_refuse_what_they_cannot_run_with(cli, tmp_path):
    from conftest import RECIPES as R

    res = cli("train", str(R / "smoke.yaml"), "--set", "optim.weights={dtype: bf16, rounding: up}")
    assert res.exit_code == 2 and "optim.weights.rounding (--set): 'up' is not allowed; choose from nearest, stochastic" in res.output
    res = cli("train", str(R / "smoke.yaml"), "--set", "optim.weights={dtype: bf16, frac_bits: 8}")
    assert res.exit_code == 2 and "optim.weights.frac_bits (--set): only fixed16 has frac_bits" in res.output
    res = cli("train", str(R / "smoke.yaml"), "--set", "optim.weights={dtype: bf16}", "--set", "trainer.precision=bf16-true",
              "--set", "trainer.gradient_clip_val=1.0", "--set", "trainer.devices=2")
    assert res.exit_code == 2, res.output
    for want in ("trainer.precision (--set): optim.weights keeps its own 16-bit weights and computes in float32: use 32-true",
                 "trainer.gradient_clip_val (--set): not with optim.weights", "optim.weights (--set): 16-bit master weights run in one process"):
        assert want in " ".join(res.output.split()), (want, res.output)
    res = cli("train", str(R / "smoke.yaml"), "--set", "optim.weights={dtype: fixed16, int_bits: 4, frac_bits: 8}")
    assert res.exit_code == 2 and "int_bits + frac_bits must be 16" in res.output
    assert not cli.runs.exists() and not (cli.cwd / "runs").exists()


def test_a_diverging_run_stops_with_exit_3_and_its_last_finite_state(cli):
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={cli.runs}", "--set", "optim.lr=1e30",
              "--set", "output.plots=false")
    assert res.exit_code == 3, res.output
    text = " ".join(res.output.split())
    assert "training diverged at step 1 (epoch 0): the loss was nan" in text and "lower optim.lr" in text
    [run] = list(cli.runs.iterdir())
    ckpt = run / "checkpoints" / "last-finite.ckpt"
    assert str(ckpt) in text.replace(" ", "") or ckpt.name in text
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 1
    assert all(bool(v.isfinite().all()) for v in state["state_dict"].values() if v.is_floating_point())
    assert not (run / "results.json").exists()


def test_diverging_16_bit_weights_stop_the_same_way(cli):
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={cli.runs}", "--set", "optim.lr=1e30",
              "--set", "optim.weights={dtype: fp16}", "--set", "output.plots=false")
    assert res.exit_code == 3, res.output
    text = " ".join(res.output.split())
    assert "training diverged at step" in text and "instead of fp16" in text


SWEEP = ("sweep={seeds: [0, 1], variants: {float32: [], "
         "'fixed16 <14,2>': ['optim.weights={dtype: fixed16, frac_bits: 2}'], blows up: ['optim.lr=1e30']}}")


@pytest.mark.slow
def test_the_sweep_runs_every_variant_per_seed_and_writes_table_curves_and_json(cli):
    res = cli("train", str(RECIPES / "smoke.yaml"), "--sweep", "--set", f"output.dir={cli.runs}", "--set", SWEEP,
              "--set", "launcher.jobs=1",  # in this process: the process pool is tests/test_sweep.py's
              "--set", "trainer.max_epochs=2", "--set", "data.subset=16", "--set", "data.test_subset=10")
    assert res.exit_code == 0, res.output
    [out] = list(cli.runs.iterdir())
    s = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "curves.png").is_file() and (out / "recipe.yaml").is_file()
    rows = {r["cell"]: r for r in s["rows"]}
    assert list(rows) == ["float32", "fixed16 <14,2>", "blows up"] and s["baseline"] == "float32"
    assert rows["float32"]["speed_ratio"] == pytest.approx(1.0) and rows["float32"]["vs_baseline"] is None
    runs = {name: sorted((t for t in s["trials"] if t["cell"] == name), key=lambda t: t["seed"]) for name in rows}
    paired = [f["test_acc"] - b["test_acc"] for f, b in zip(runs["fixed16 <14,2>"], runs["float32"])]
    assert rows["fixed16 <14,2>"]["vs_baseline"]["mean"] == pytest.approx(sum(paired) / 2)
    assert rows["float32"]["weights"]["bytes"] == 2 * rows["fixed16 <14,2>"]["weights"]["bytes"]
    assert rows["fixed16 <14,2>"]["weights"]["dtype"] == "int16"
    blown = rows["blows up"]
    assert [p["status"] for p in blown["problems"]] == ["diverged", "diverged"] and "test_acc" not in blown
    assert all(t["diverged"]["step"] == 1 for t in runs["blows up"])
    assert runs["float32"][0]["test_acc"] != runs["float32"][1]["test_acc"]  # the seeds differ
    for name in ("float32", "fixed16 <14,2>"):
        assert [r["seed"] for r in runs[name]] == [0, 1]
        assert rows[name]["test_acc"] == pytest.approx(sum(r["test_acc"] for r in runs[name]) / 2)
        assert all(Path(r["run_dir"]).parent == out / "cells" for r in runs[name])
    # a step of 1/4 cannot hold small conv weights: training fails to learn, and the table shows it
    assert rows["fixed16 <14,2>"]["test_acc"] < rows["float32"]["test_acc"]
    text = " ".join(res.output.split())
    assert "blows up, seed 1: diverged at step 1" in text and "(baseline)" in text
    assert "int16" in text  # the cells differ in weight memory: the table shows it


def test_a_sweep_variant_with_a_typo_stops_the_sweep_before_any_run(cli):
    bad = "sweep={variants: {float32: [], late: ['optim.wieghts={dtype: bf16}']}}"
    res = cli("train", str(RECIPES / "smoke.yaml"), "--sweep", "--set", f"output.dir={cli.runs}", "--set", bad)
    assert res.exit_code == 2 and "sweep.variants.late" in res.output and "did you mean 'weights'" in res.output, res.output
    res = cli("train", str(RECIPES / "smoke.yaml"), "--sweep", "--set", f"output.dir={cli.runs}")
    assert res.exit_code == 2 and "no sweep: section" in res.output
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", "sweep={variants: {a: ['seed=3']}}")
    assert res.exit_code == 2 and "a variant cannot set seed" in res.output
    assert not cli.runs.exists()


@pytest.mark.parametrize("name", ["bf16", "fixed16"])
def test_updates_below_half_a_spacing_vanish_to_nearest_and_add_up_stochastically(name):
    """The lecture's point in one loop: 1,000 updates of 1e-4 to a weight of 1.0."""
    fmt, g = FORMATS[name], torch.Generator().manual_seed(0)
    near = sto = fmt.encode(torch.ones(256), "nearest")
    for _ in range(1000):
        near = fmt.encode(fmt.decode(near) + 1e-4, "nearest")
        sto = fmt.encode(fmt.decode(sto) + 1e-4, "stochastic", g)
    assert bool((fmt.decode(near) == 1.0).all())  # every update lost
    assert abs(float(fmt.decode(sto).mean()) - 1.1) < 0.01  # 256 weights, each 1.1 on average


def test_float16_gradients_whose_norm_overflows_float16_are_still_finite():
    from cnnlab.precision.finite import check_finite

    big = torch.full((300,), 60000.0, dtype=torch.float16)  # every element finite; the norm is ~1e6 > 65504
    assert torch.isinf(torch.linalg.vector_norm(big))  # the trap: float16's own norm
    assert check_finite(torch.tensor(1.0), [big, torch.ones(3, dtype=torch.float16)]) is None
    big[7] = float("inf")
    assert check_finite(torch.tensor(1.0), [big]) == "1 of 1 gradient tensors were not finite"
    assert check_finite(torch.tensor(float("nan")), []) == "the loss was nan"
