"""Convolution algorithms against a float64 reference (F.conv2d in double), over random shapes,
strides, paddings and dilations; their gradients; what each refuses; counted multiplications and
the im2col buffer."""
import pytest
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

    from cnnlab.conv.stacking import receptive_field

    assert receptive_field([nn.Conv2d(1, 1, 7)]) == 7
    assert receptive_field([nn.Conv2d(1, 1, 3)] * 3) == 7  # three 3x3 see what one 7x7 sees
    assert receptive_field([nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3)]) == 8  # after a stride 2: 2 px a tap
    assert receptive_field([nn.Conv2d(1, 1, 3, dilation=2)]) == 5


def test_stacking_blocks_have_the_lectures_parameter_counts():
    from cnnlab.conv.stacking import BLOCKS, conv_flops

    c = 32
    params = {n: sum(p.numel() for p in BLOCKS.get(n)(c).parameters()) for n in BLOCKS}
    assert params["3x3x3"] == 27 * c * c and params["7x7"] == 49 * c * c
    assert params["bottleneck"] == c * (c // 4) * 2 + 9 * (c // 4) ** 2
    assert conv_flops(BLOCKS.get("7x7")(c), 8, 8) == 2 * 49 * c * c * 64


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
    (["--shape", "1,2,3"], "--shape '1,2,3': expected six positive integers N,C,H,W,K,k"),
    (["--shape", "1,2,4,4,2,0"], "--shape '1,2,4,4,2,0': expected six positive integers"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--shape", "0,1,1,1,1,1"], "--"),
])
def test_bench_conv_bad_input_exits_2_without_traceback(cli, args, message):
    res = cli("bench-conv", *args, "--out", str(cli.runs))
    assert res.exit_code == 2 and message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not cli.runs.exists()
