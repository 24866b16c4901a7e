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
