"""The memory planner (cnnlab.profile.memory) against hand counts and against the measured peak, and
activation checkpointing (cnnlab.models.checkpointing): exact gradients, BatchNorm statistics
updated once, less memory, and the recipe key that turns it on."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import recipe as rc
from cnnlab.errors import UserError
from cnnlab.models import MODELS, build_model
from cnnlab.models.checkpointing import checkpoint_stages, is_checkpointed, stage_names
from cnnlab.models.small import StagedNet
from cnnlab.profile.memory import (LOSS, batch_scaling, checkpoint_saving, largest_batch, measure_peak_cpu, parse_bytes,
                                   per_layer, predict_peak, train_step)
from conftest import RECIPES

F32 = 4  # bytes per float32


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def hand_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def hand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 1, 4, 4), torch.tensor([0, 1])


def rows(report):
    return {r.layer: r for r in report.rows}


def test_saved_activations_equal_the_hand_count():
    x, y = hand_batch()
    report = per_layer(hand_net(), x, y, F.cross_entropy, sgd)
    r = rows(report)
    # conv: saves its input (the batch, counted as the batch) and its weight (a parameter): 0
    assert r["0"].activations == 0
    # ReLU: saves its output, (2, 3, 4, 4) float32 = 96 floats; Linear saves the same storage again
    # (Flatten's view of it) and its weight (a parameter): counted once, with the ReLU
    assert r["1"].activations == 2 * 3 * 4 * 4 * F32 == 384
    assert r["2"].activations == r["3"].activations == 0
    # cross-entropy: log_softmax saves its output, (2, 2) float32 = 16 bytes (nll_loss saves that
    # again, and the labels: the batch), nll_loss its total weight, a float32 scalar = 4 bytes
    assert r[LOSS].activations == 2 * 2 * F32 + F32 == 20
    assert report.totals["activations"] == 404 and report.per_image_activation_bytes == 202
    assert report.batch_bytes == 2 * 16 * F32 + 2 * 8  # float32 images and int64 labels
    assert [b.savers for b in report.saved if b.nbytes == 384] == [("1", "3")]


def test_an_inplace_relu_output_is_the_conv_output_counted_once():
    net = hand_net()
    net[1] = nn.ReLU(inplace=True)  # saves its result: the conv's output storage, modified in place
    x, y = hand_batch()
    assert rows(per_layer(net, x, y, F.cross_entropy, sgd))["1"].activations == 384


def test_params_grads_and_optimizer_state_equal_the_hand_count():
    conv, linear = (1 * 3 * 3 * 3 + 3) * F32, (48 * 2 + 2) * F32  # weight + bias: 120 and 392 bytes
    x, y = hand_batch()
    r = rows(per_layer(hand_net(), x, y, F.cross_entropy, sgd))
    assert (r["0"].params, r["0"].grads, r["0"].optimizer) == (conv, conv, conv)  # one momentum buffer a parameter
    assert (r["3"].params, r["3"].grads, r["3"].optimizer) == (linear, linear, linear)
    r = rows(per_layer(hand_net(), x, y, F.cross_entropy, adamw))
    # exp_avg and exp_avg_sq (float32, the parameter's size) and `step`, a float32 scalar, per parameter
    assert r["0"].optimizer == 2 * conv + 2 * F32 and r["3"].optimizer == 2 * linear + 2 * F32
    frozen = hand_net()
    frozen[0].bias.requires_grad_(False)  # no gradient, so no state either
    r = rows(per_layer(frozen, x, y, F.cross_entropy, sgd))
    assert (r["0"].params, r["0"].grads, r["0"].optimizer) == (conv, conv - 3 * F32, conv - 3 * F32)


def test_per_layer_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    net = build_model("vgg-small", 1, 10, widths=[4, 8], depth=1)
    before = copy.deepcopy(net.state_dict())
    per_layer(net, torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,)), F.cross_entropy, sgd)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg-small", 1, 10, widths=[8, 16, 32], depth=1)


def batch(n: int = 8, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def measured_peak(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    opt = sgd(list(net.named_parameters()))
    return measure_peak_cpu(lambda: train_step(net, x, y, F.cross_entropy, opt), net, opt, x, y)[0]


def test_predicted_peak_is_within_ten_percent_of_the_measured_one():
    net, (x, y) = tiny_vgg(), batch()
    pred = predict_peak(per_layer(net, x, y, F.cross_entropy, sgd))
    peak = measured_peak(net, x, y)
    assert 0.9 <= pred["total"] / peak <= 1.1, (pred, peak)
    assert pred["total"] <= pred["upper_bound"]
    assert pred["total"] >= pred["params"] + pred["optimizer"] + pred["activations"]


def test_the_cpu_measurement_is_the_held_bytes_plus_the_largest_running_sum():
    held = torch.zeros(1000)  # 4000 B

    def step():
        a = torch.ones(500)  # 2000 B, freed again
        del a
        b, c = torch.ones(250), torch.ones(375)  # 1000 + 1500 B live at once: the step's peak
        return b, c

    peak, method = measure_peak_cpu(step, held)
    assert peak == 4000 + 2500
    assert "profiler" in method


def test_largest_batch_is_the_last_size_that_fits():
    # peak(B) = 5000 + 1000 B: 7 images -> 12000 <= 12345, 8 -> 13000 does not fit
    assert largest_batch(1000, 5000, 12_345) == 7
    assert largest_batch(1000, 5000, 8000) == 3  # exactly full fits
    assert largest_batch(1000, 5000, 5999) == 0  # not even one image
    assert largest_batch(1000, 9000, 5000) == 0


def test_the_planned_batch_fits_the_budget_and_a_fifth_more_does_not():
    net = tiny_vgg()
    per_image, fixed = batch_scaling(*(per_layer(net, *batch(n), F.cross_entropy, sgd) for n in (4, 8)))
    budget = 3 * 2**20
    n = largest_batch(per_image, fixed, budget)
    assert n >= 10
    assert measured_peak(net, *batch(n)) <= 1.05 * budget
    assert measured_peak(net, *batch(round(1.2 * n))) > budget


@pytest.mark.parametrize("text,n", [("12GB", 12 * 10**9), ("512MiB", 512 * 2**20), ("1.5gb", 1_500_000_000),
                                    ("1KiB", 1024), ("3kb", 3000), ("2 TB", 2 * 10**12), ("100B", 100),
                                    ("0.5GiB", 2**29), ("7mb", 7 * 10**6)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["12XB", "", "GB", "12", "0GB", "-1GB", "1e3GB", "12 G", "0.1B", "1.5.2GB", "nanGB"])
def test_parse_bytes_refuses_anything_else_in_one_line(text):
    with pytest.raises(UserError) as e:
        parse_bytes(text)
    assert str(e.value) == f"--memory-budget {text}: not a size; use e.g. 12GB, 512MiB"


def one_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach(), [p.grad for p in net.parameters()]


def test_checkpointed_stages_give_the_same_loss_gradients_and_statistics():
    plain = tiny_vgg()
    ckpt = checkpoint_stages(copy.deepcopy(plain))
    assert [is_checkpointed(s) for s in ckpt.stages] == [True, True, True]
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    buf = io.BytesIO()
    torch.save(ckpt, buf)  # whole, as ddp_spawn sends it to its processes
    buf.seek(0)
    assert all(is_checkpointed(s) for s in torch.load(buf, weights_only=False).stages)
    x, y = batch()
    loss_a, grads_a = one_step(plain, x, y)
    loss_b, grads_b = one_step(ckpt, x, y)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    bns = [(a, b) for a, b in zip(plain.modules(), ckpt.modules()) if isinstance(a, nn.BatchNorm2d)]
    for a, b in bns:  # updated by the forward only: once, as without checkpointing
        assert int(b.num_batches_tracked) == 1
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert not torch.equal(bns[0][1].running_mean, torch.zeros_like(bns[0][1].running_mean))


def test_checkpointing_recomputes_with_the_weights_the_forward_used():
    """torch.func.functional_call (cnnlab's 16-bit weights run through it) swaps the weights in for the
    forward only; the recomputation in backward must run on them too, not on the module's own."""
    plain = tiny_vgg()
    ckpt = checkpoint_stages(copy.deepcopy(plain))
    x, y = batch(4)
    out = []
    for net in (plain, ckpt):
        leaves = {n: (p.detach() * 1.5).requires_grad_() for n, p in net.named_parameters()}
        F.cross_entropy(torch.func.functional_call(net, leaves, (x,)), y).backward()
        out.append([w.grad for w in leaves.values()])
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


def test_checkpointing_lowers_the_measured_peak_about_as_predicted():
    plain, (x, y) = tiny_vgg(), batch(16)
    report = per_layer(plain, x, y, F.cross_entropy, sgd)
    saving = checkpoint_saving(report, stage_names(plain))
    drop = measured_peak(plain, x, y) - measured_peak(checkpoint_stages(copy.deepcopy(plain)), x, y)
    assert drop > 0
    assert abs(drop - saving["walk"]) <= 0.2 * saving["walk"], (drop, saving)


def test_stages_are_found_in_staged_nets_and_resnet_shapes():
    class ResNetLike(nn.Module):  # torchvision's ResNet: layer1..layer4 children
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            for i in range(1, 5):
                setattr(self, f"layer{i}", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)))

        def forward(self, x):
            x = self.stem(x)
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return x

    assert stage_names(ResNetLike()) == ["layer1", "layer2", "layer3", "layer4"]
    wrapped = nn.Sequential(ResNetLike())  # e.g. under cnnlab's ToRGB
    assert stage_names(wrapped) == ["0.layer1", "0.layer2", "0.layer3", "0.layer4"]
    net = checkpoint_stages(ResNetLike())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), ResNetLike.forward(net, x))  # seeded the same: forward unchanged
    assert stage_names(build_model("resnet-small", 3, 10, widths=[4, 8], blocks=1)) == ["stages.0", "stages.1"]


def test_a_model_without_stages_is_a_user_error():
    with pytest.raises(UserError, match=r"^model.activation_checkpointing: mlp has no stages to checkpoint; it works "
                                        r"for cnnlab's staged nets .* and torchvision ResNets"):
        checkpoint_stages(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "mlp")


def test_the_recipe_key_turns_it_on_and_assemble_applies_it(monkeypatch):
    r = rc.load(None, ["model.activation_checkpointing=true"])
    assert r.model.activation_checkpointing is True and "activation_checkpointing" not in r.model.kwargs()
    assert rc.load(None, base=r.dump()).model.activation_checkpointing is True  # a run's recipe.yaml reads back
    default = rc.load(None, [])
    assert default.model.activation_checkpointing is False
    assert "activation_checkpointing" not in default.dump()["model"]  # recipes that leave it off dump as before

    def flat(in_channels: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    monkeypatch.setitem(MODELS._parts, "flat-test", flat)
    with pytest.raises(rc.RecipeError) as e:
        rc.load(None, ["model.name=flat-test", "model.activation_checkpointing=true"])
    [p] = e.value.problems
    assert p.startswith("model.activation_checkpointing (--set): flat-test has no stages to checkpoint; it works for"), p

    from cnnlab.engine.assemble import assemble

    r = rc.load(RECIPES / "smoke.yaml", ["model.activation_checkpointing=true", "data.source=digits", "data.subset=5"])
    net = assemble(r).module.net
    assert isinstance(net, StagedNet) and all(is_checkpointed(s) for s in net.stages)
    off = assemble(rc.load(RECIPES / "smoke.yaml", ["data.source=digits", "data.subset=5"])).module.net
    assert not any(is_checkpointed(s) for s in off.stages)
