import pytest
import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.engine.optim import build_optimizer, lr_factor
from cnnlab.models import MODELS, build_model
from cnnlab.spec import OptimSpec, ScheduleSpec

CASES = [(name, {}) for name in MODELS] + [("torchvision:resnet18", {}), ("torchvision:mobilenet_v3_small", {})]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_forward_backward(name, kwargs, channels):
    torch.manual_seed(0)
    net = build_model(name, in_channels=channels, num_classes=7, **kwargs)
    x = torch.randn(2, channels, 32, 32)
    out = net(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"


def test_staged_net_taps_halve_resolution():
    net = build_model("vgg-small", 1, 10, widths=[4, 8, 16], depth=1)
    taps = net.features(torch.randn(2, 1, 28, 28))
    assert [tuple(t.shape) for t in taps] == [(2, 4, 28, 28), (2, 8, 14, 14), (2, 16, 7, 7)]


def test_vgg_depth_per_stage():
    net = build_model("vgg-small", 1, 10, widths=[4, 8, 16], depth=[1, 2, 3])
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in stage.modules()) for stage in net.stages]
    assert convs == [1, 2, 3]
    with pytest.raises(UserError, match=r"model.depth: one depth per stage, 3 widths \[4, 8, 16\] and 2 depths"):
        build_model("vgg-small", 1, 10, widths=[4, 8, 16], depth=[1, 2])


def test_torchvision_weights_from_local_file(tmp_path):
    import torchvision

    src = torchvision.models.resnet18(num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    net = build_model("torchvision:resnet18", 3, 5, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(net.conv1.weight, src.conv1.weight)
    assert net.fc.out_features == 5
    gray = build_model("torchvision:resnet18", 1, 5, weights=str(tmp_path / "r18.pth"))
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_torchvision_bad_weights(tmp_path):
    with pytest.raises(UserError, match="model.weights: file not found"):
        build_model("torchvision:resnet18", 3, 5, weights=str(tmp_path / "none.pth"))
    torch.save(build_model("vgg-small", 3, 5).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(UserError, match="does not fit torchvision:resnet18"):
        build_model("torchvision:resnet18", 3, 5, weights=str(tmp_path / "vgg.pth"))

    torch.save({"x": OptimSpec()}, tmp_path / "evil.pth")  # an arbitrary object: refused, never unpickled
    with pytest.raises(UserError, match="holds Python objects that a safe load refuses: cnnlab never runs code"):
        build_model("torchvision:resnet18", 3, 5, weights=str(tmp_path / "evil.pth"))


def test_schedules():
    s = ScheduleSpec(name="onecycle", warmup_epochs=1, final_frac=0.1)
    f = [lr_factor(i, 100, 10, s) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1 + 0.9 / 90) and all(a >= b for a, b in zip(f[9:], f[10:]))
    c = ScheduleSpec(name="cosine")
    assert lr_factor(0, 100, 10, c) == 1.0 and lr_factor(50, 100, 10, c) == pytest.approx(0.5)
    st = ScheduleSpec(name="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(i, 100, 10, st) for i in (0, 19, 20, 45)] == [1, 1, 0.5, 0.25]


def test_optimizer_skips_decay_on_norms_and_biases():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    opt = build_optimizer(list(net.named_parameters()), OptimSpec(weight_decay=0.1, lr=0.5))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[2].weight)}
    assert all(g["lr"] == 0.5 for g in opt.param_groups)
