"""Convolution algorithms against a float64 reference (F.conv2d in double), over random shapes,
strides, paddings and dilations; their gradients; what each refuses; counted multiplications and
the im2col buffer."""
import copy
import re
from pathlib import Path

import pytest
import yaml
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.conv import ALGORITHMS
from cnnlab.conv.algorithms import Unsupported

ALL = list(ALGORITHMS)
# float32 against float64: relative to the output's scale; F(4x4, 3x3) trades accuracy for fewer products
TOL = {"winograd-4x4": 5e-5}


def supports(name, w_shape, stride, dilation) -> bool:
    try:
        ALGORITHMS.get(name).check(w_shape, (stride, stride), (dilation, dilation))
        return True
    except Unsupported:
        return False


def rel_error(y, ref) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 4), k_out=st.integers(1, 4), k=st.sampled_from([1, 3, 5]),
       extra=st.integers(0, 6), stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_every_algorithm_matches_the_float64_reference(n, c, k_out, k, extra, stride, padding, dilation, seed):
    g = torch.Generator().manual_seed(seed)
    size = (k - 1) * dilation + 1 + extra  # the kernel always fits
    x = torch.randn(n, c, size, size + 1, generator=g)
    w = torch.randn(k_out, c, k, k, generator=g)
    b = torch.randn(k_out, generator=g)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, padding, dilation)
    for name in ALL:
        if not supports(name, w.shape, stride, dilation):
            continue
        y = ALGORITHMS.get(name)(x, w, b, stride, padding, dilation)
        assert y.shape == ref.shape, name
        assert rel_error(y, ref) < TOL.get(name, 5e-6), (name, rel_error(y, ref))


@pytest.mark.parametrize("name", ALL)
def test_gradients_through_each_algorithm_match_conv2d(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    stride = 1 if not supports(name, w.shape, 2, 1) else 2
    ref = F.conv2d(x, w, None, stride, 1)
    gx, gw = torch.autograd.grad((ref ** 2).sum(), (x, w))
    y = ALGORITHMS.get(name)(x, w, None, stride, 1)
    hx, hw = torch.autograd.grad((y ** 2).sum(), (x, w))
    assert torch.allclose(hx, gx, rtol=1e-8, atol=1e-8) and torch.allclose(hw, gw, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name,kwargs,message", [
    ("fft", {"stride": 2}, "fft supports only stride 1 (got 2)"),
    ("winograd-2x2", {"dilation": 2}, "winograd-2x2 supports only dilation 1 (got 2)"),
    ("winograd-4x4", {"k": 5}, "winograd-4x4 supports only 3x3 kernels (got 5x5)"),
])
def test_unsupported_combinations_name_the_algorithm_and_its_limits(name, kwargs, message):
    k = kwargs.pop("k", 3)
    with pytest.raises(Unsupported, match=message.replace("(", r"\(").replace(")", r"\)")):
        ALGORITHMS.get(name)(torch.randn(1, 2, 12, 12), torch.randn(2, 2, k, k), None, padding=1, **kwargs)


def test_winograd_counts_fewer_multiplications_than_direct():
    x, w = (1, 16, 32, 32), (16, 16, 3, 3)
    direct = ALGORITHMS.get("direct").multiplications(x, w, padding=1)
    assert direct == 32 * 32 * 16 * 16 * 9
    assert direct / ALGORITHMS.get("winograd-2x2").multiplications(x, w, padding=1) == 2.25  # 36 / 16
    assert direct / ALGORITHMS.get("winograd-4x4").multiplications(x, w, padding=1) == 4.0  # 144 / 36


@pytest.mark.parametrize("k", [3, 5, 7])
def test_im2col_buffer_is_k_squared_times_the_input(k):
    x, w = (2, 8, 32, 32), (16, 8, k, k)
    im2col = ALGORITHMS.get("im2col")
    buf = im2col.workspace(x, w, padding=k // 2)  # 'same' padding: one column per input pixel
    assert buf == k * k * 2 * 8 * 32 * 32 * 4
    tiled = ALGORITHMS.get("im2col-tiled").workspace(x, w, padding=k // 2)
    assert tiled == buf * 8 // 32  # 8 of the 32 output rows at a time


def test_receptive_field_of_known_stacks():
    from torch import nn

    from cnnlab.bench.stacking import receptive_field

    assert receptive_field([nn.Conv2d(1, 1, 7)]) == 7
    assert receptive_field([nn.Conv2d(1, 1, 3)] * 3) == 7  # three 3x3 see what one 7x7 sees
    assert receptive_field([nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3)]) == 8  # after a stride 2: 2 px a tap
    assert receptive_field([nn.Conv2d(1, 1, 3, dilation=2)]) == 5


def test_stacking_blocks_have_the_lectures_parameter_counts():
    from cnnlab.bench.stacking import conv_flops
    from cnnlab.models.stacked import BLOCKS

    c = 32
    params = {n: sum(p.numel() for p in BLOCKS.get(n)(c, c).parameters()) for n in BLOCKS}
    assert params["3x3x3"] == 27 * c * c and params["7x7"] == 49 * c * c
    assert params["bottleneck"] == c * (c // 4) * 2 + 9 * (c // 4) ** 2
    assert conv_flops(BLOCKS.get("7x7")(c, c), 8, 8) == 2 * 49 * c * c * 64


def test_bench_conv_through_the_cli_writes_the_table_json_and_plot(cli):
    import json

    res = cli("bench-conv", "--shape", "2,3,10,10,4,3", "--stacking", "--repeats", "1", "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    r = json.loads((run / "bench_conv.json").read_text())
    rows = {x["algorithm"]: x for x in r["rows"]}
    assert set(rows) == {"direct", "im2col", "im2col-tiled", "fft", "winograd-2x2", "winograd-4x4"}
    for x in rows.values():
        assert x["ms"] > 0 and x["rel_error"] < 1e-4 and x["gflops"] > 0
    assert rows["direct"]["vs_direct"] == 1.0
    assert rows["im2col"]["extra_mib"] * 2**20 == 2 * 3 * 9 * 10 * 10 * 4  # k*k x the input
    assert {x["block"] for x in r["stacking"]} == {"7x7", "3x3x3", "bottleneck"}
    assert (run / "bench_conv.png").is_file() and "winograd-4x4" in res.output


def test_bench_conv_shows_what_an_algorithm_cannot_do(cli):
    import json

    res = cli("bench-conv", "--shape", "1,2,8,8,2,5", "--repeats", "1", "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    rows = {x["algorithm"]: x for x in json.loads((run / "bench_conv.json").read_text())["rows"]}
    assert rows["winograd-2x2"]["unsupported"] == "winograd-2x2 supports only 3x3 kernels (got 5x5)"


@pytest.mark.parametrize("args,message", [
    (["--shape", "1,2,3"], "--shape '1,2,3': expected 6 positive integers N,C,H,W,K,k"),
    (["--shape", "1,2,4,4,2,0"], "--shape '1,2,4,4,2,0': expected 6 positive integers"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--shape", "0,1,1,1,1,1"], "--"),
])
def test_bench_conv_bad_input_exits_2_without_traceback(cli, args, message):
    res = cli("bench-conv", *args, "--out", str(cli.runs))
    assert res.exit_code == 2 and message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not cli.runs.exists()


# ----------------------------------------------------------------------------- a network on an algorithm

def _tiny(name="vgg-3x3x3"):
    from cnnlab.models import build_model

    torch.manual_seed(0)
    return build_model(name, 1, 5, widths=[4, 6, 8])


@pytest.mark.parametrize("name", ALL)
def test_a_network_on_each_algorithm_matches_direct_forward_and_backward(name):
    from cnnlab.conv.module import AlgorithmConv2d, swap

    ref, net = _tiny(), _tiny()
    plan = swap(net, name)
    assert [s.layer for s in plan] == [n for n, m in ref.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(s.algorithm == name and s.reason is None for s in plan)  # every layer is 3x3, stride 1
    assert sum(isinstance(m, AlgorithmConv2d) for m in net.modules()) == (0 if name == "direct" else len(plan))
    assert net.state_dict().keys() == ref.state_dict().keys()  # checkpoints load either way
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y, y_ref = net(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_layers_an_algorithm_cannot_compute_stay_on_direct_with_the_reason():
    from torch import nn

    from cnnlab.conv.module import summary, swap

    net = _tiny("resnet-small")  # stride-2 3x3s and 1x1 skips
    net.stages[0].insert(0, nn.Conv2d(1, 1, 3, padding=1, groups=1, padding_mode="reflect"))
    plan = {s.layer: s for s in swap(net, "winograd-2x2")}
    assert plan["stages.1.0.skip.0"].reason == "winograd-2x2 supports only stride 1 (got 2); 3x3 kernels (got 1x1)"
    assert plan["stages.0.0"].reason == "padding_mode 'reflect' (only zeros)"
    assert plan["stages.0.2.body.1"].algorithm == "winograd-2x2"
    s = summary("winograd-2x2", list(plan.values()))
    assert s["layers"] + len(s["on_direct"]) == s["of"] == len(plan)
    dw = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 4, padding="same"), nn.Conv2d(4, 4, 3, padding="same"))
    dw_ref = copy.deepcopy(dw)
    reasons = [p.reason for p in swap(dw, "fft")]
    assert reasons == ["groups 4 (only 1: dense convolutions)", "padding 'same' with an even kernel extent (uneven padding)", None]
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(dw(x), dw_ref(x), rtol=1e-4, atol=1e-5)  # the last layer on fft, the others direct


@pytest.mark.parametrize("mode", ["bf16-autocast", "bf16-weights", "float64"])
def test_algorithms_run_at_every_precision_a_recipe_accepts(mode):
    """32-true is above; bf16-mixed autocasts; bf16-true and 64-true hold the weights in that dtype."""
    from cnnlab.conv.module import swap

    for name in ("fft", "im2col", "winograd-2x2"):
        ref, net = _tiny(), _tiny()
        swap(net, name)
        x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))
        if mode == "bf16-autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, y_ref = net(x), ref(x)
            tol = 5e-2
        else:
            dtype = torch.bfloat16 if mode == "bf16-weights" else torch.float64
            net, ref, x = net.to(dtype), ref.to(dtype), x.to(dtype)
            y, y_ref = net(x), ref(x)
            assert y.dtype == dtype
            tol = 5e-2 if dtype == torch.bfloat16 else 1e-10
        assert torch.isfinite(y).all()
        assert (y.float() - y_ref.float()).abs().max() <= tol * y_ref.float().abs().max(), name
        y.float().sum().backward()


@pytest.mark.parametrize("name", ["fft", "im2col", "winograd-2x2"])
def test_an_algorithm_under_autocast_computes_in_float32(name):
    """Autocast would recast every matmul inside the algorithm to bf16; the layer turns it off, so
    its answer under autocast is its float32 answer, to the bit."""
    from torch import nn

    from cnnlab.conv.module import swap

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    assert swap(net, name)[0].algorithm == name
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    plain = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = net(x)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


def test_train_through_fft_from_the_cli_records_it_and_evaluates(cli):
    import json

    from conftest import RECIPES

    args = ["--set", "data.subset=6", "--set", "data.test_subset=4", "--set", "trainer.max_epochs=1",
            "--set", f"output.dir={cli.runs}"]
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", "model.conv_impl=fft", *args)
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    r = json.loads((run / "results.json").read_text())
    assert r["conv_impl"] == {"algorithm": "fft", "layers": 3, "of": 3, "on_direct": {}}
    res = cli("eval", str(run))
    assert res.exit_code == 0, res.output
    assert abs(json.loads((run / "eval.json").read_text())["test_acc"] - r["test_acc"]) < 1e-6
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", "model.conv_impl=winograd", *args)
    assert res.exit_code == 2 and "model.conv_impl (--set): 'winograd' is not a convolution algorithm" in res.output


def test_bench_conv_model_times_every_layer_and_the_net(cli):
    import json

    res = cli("bench-conv", "--model", "resnet-small", "--input", "2,1,12,12", "--repeats", "1", "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    [run] = list(cli.runs.iterdir())
    m = json.loads((run / "bench_conv.json").read_text())["model"]
    convs = [n for n, x in _tiny("resnet-small").named_modules() if isinstance(x, torch.nn.Conv2d)]
    assert [x["layer"] for x in m["layers"]] == convs
    totals = {t["algorithm"]: t for t in m["totals"]}
    assert totals["direct"]["layers"] == totals["im2col"]["layers"] == len(convs)
    strided = [x for x in m["layers"] if x["stride"] != [1, 1]]
    assert strided and totals["fft"]["layers"] == len(convs) - len(strided)
    assert all("fft" in x["unsupported"] and "fft" not in x["ms"] for x in strided)
    for t in totals.values():
        on = [x for x in m["layers"] if t["algorithm"] in x["ms"]]
        assert t["ms"] == pytest.approx(sum(x["ms"][t["algorithm"]] for x in on))
        assert t["net_fwd_bwd_ms"] > 0
    assert all(e < 1e-4 for x in m["layers"] for e in x["rel_error"].values())
    assert "net fwd+bwd" in res.output and (run / "bench_conv.png").is_file()


@pytest.mark.slow
def test_bench_conv_stacking_train_runs_cnnlab_train_per_block(cli):
    import json

    res = cli("bench-conv", "--shape", "1,2,6,6,2,3", "--repeats", "1", "--stacking", "--train",
              "--set", "data.subset=6", "--set", "data.test_subset=3", "--set", "trainer.max_epochs=1",
              "--set", "data.batch_size=16", "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    [run] = [p for p in cli.runs.iterdir()]
    r = json.loads((run / "bench_conv.json").read_text())
    rows = {x["model"]: x for x in r["stacking_train"]}
    assert set(rows) == {"vgg-7x7", "vgg-3x3x3", "vgg-bottleneck"}
    for name, x in rows.items():
        sub = json.loads((Path(x["run_dir"]) / "results.json").read_text())
        assert Path(x["run_dir"]).parent == run and sub["test_acc"] == x["test_acc"]
        assert sub["images"]["test"] == 30 and sub["epochs"] == x["epochs"] == 1
        assert yaml.safe_load((Path(x["run_dir"]) / "recipe.yaml").read_text())["model"]["name"] == name
    assert rows["vgg-bottleneck"]["parameters"] < rows["vgg-3x3x3"]["parameters"]


@pytest.mark.parametrize("args,message", [
    (["--train"], "--train trains the stacking variants: add --stacking"),
    (["--set", "optim.lr=1"], "--recipe and --set configure --train's runs"),
    (["--model", "vgg-smal"], "--model: 'vgg-smal' is not a model (did you mean 'vgg-small'?)"),
    (["--model", "vgg-small", "--input", "1,1,28"], "--input '1,1,28': expected 4 positive integers N,C,H,W"),
    (["--model", "vgg-small", "--shape", "1,1,8,8,1,3"], "--shape and --model: give one"),
    (["--model", "torchvision:resnet18", "--input", "1,3,8,8"], "--input 1,3,8,8: torchvision:resnet18 cannot run on it"),
    (["--stacking", "--train", "--set", "optim.lr=-1"], "optim.lr (--set): "),
])
def test_bench_conv_model_and_train_errors_exit_2_before_any_folder(cli, args, message):
    res = cli("bench-conv", *args, "--out", str(cli.runs))
    assert res.exit_code == 2 and message in " ".join(res.output.split()) and "Traceback" not in res.output, res.output
    assert not cli.runs.exists()


def test_fft_transform_sizes_are_the_next_5_smooth_number():
    from cnnlab.conv.algorithms import smooth

    def five_smooth(n):
        for f in (2, 3, 5):
            while n % f == 0:
                n //= f
        return n == 1

    assert [smooth(n) for n in (1, 7, 11, 58, 64, 74)] == [1, 8, 12, 60, 64, 75]
    for n in range(1, 300):
        assert five_smooth(smooth(n)) and not any(five_smooth(m) for m in range(n, smooth(n)))


def test_bench_conv_tf32_flag_runs_and_is_recorded(cli):
    import json

    res = cli("bench-conv", "--shape", "1,2,8,8,2,3", "--repeats", "1", "--tf32", "--out", str(cli.runs))
    assert res.exit_code == 0, res.output
    [run] = cli.runs.iterdir()
    r = json.loads((run / "bench_conv.json").read_text())
    assert r["tf32"] is None and r["device"] == "cpu"  # a CUDA setting: none on the CPU
    assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is False  # restored


def test_bench_conv_refuses_a_device_that_is_not_here_before_any_folder(monkeypatch, tmp_path):
    from cnnlab.errors import UserError
    from cnnlab.tasks import bench_conv

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device, says in (("cuda:1", "this machine has 1 CUDA device(s), cuda:0 to cuda:0"),
                         ("cuda:x", "this machine has 1 CUDA device(s)"), ("tpu", "not a device")):
        with pytest.raises(UserError, match=re.escape(f"--device {device}: {says}")):
            bench_conv.run(device=device, out_dir=str(tmp_path))
    bench_conv.check_device("cuda:0")  # the one that is here, and plain cuda: no error
    bench_conv.check_device("cuda")
    assert list(tmp_path.iterdir()) == []


def test_the_bench_sets_tf32_for_cudnn_and_matmuls_alike_then_restores_both():
    from cnnlab.tasks.bench_conv import tf32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for allowed in (False, True):
        with tf32(allowed):
            assert torch.backends.cudnn.allow_tf32 is allowed and torch.backends.cuda.matmul.allow_tf32 is allowed
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_winograd_transforms_are_made_once_per_device_and_dtype():
    from cnnlab.conv.algorithms import _winograd_on

    a = _winograd_on(2, torch.device("cpu"), torch.float32)
    assert all(x is y for x, y in zip(a, _winograd_on(2, torch.device("cpu"), torch.float32)))
    assert _winograd_on(2, torch.device("cpu"), torch.float64)[0].dtype == torch.float64
