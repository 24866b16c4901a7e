"""Low-precision master weights: a network whose parameters are stored in a 16-bit format.

`LowPrecision(net, fmt)` replaces every parameter of `net` by a buffer of the same name holding its
16-bit storage, so state-dict keys stay the same and checkpoints hold 2 bytes a weight. A forward
pass decodes the storage into float32 tensors (`torch.func.functional_call`): when training, these
are fresh leaves whose float32 gradients `LowPrecisionSGD` / `LowPrecisionAdamW` read; the update is
computed in float32 and written back into the storage with the chosen rounding. The float32 copy
lives only during a step, like activations; at rest the weights are the 16-bit storage.

Optimizer state (momentum, Adam's moments) is float32 by default, or bfloat16 (rounded to nearest)
when `state: bf16`: a choice apart from the weights' format.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cnnlab.precision.rounding import Format


class LowPrecision:
    """The 16-bit weights of one network and the float32 leaves of the step in progress."""

    def __init__(self, net: nn.Module, fmt: Format, rounding: str):
        self.fmt, self.rounding = fmt, rounding
        self.names: list[str] = []
        self.gen = torch.Generator()  # stochastic rounding's draws; seeded every step (see seed)
        for name, p in list(net.named_parameters()):
            owner, _, attr = name.rpartition(".")
            mod = net.get_submodule(owner)
            storage = fmt.encode(p.detach().float(), "nearest")  # the initial weights, once
            del mod._parameters[attr]
            mod.register_buffer(attr, storage)
            self.names.append(name)
        self.leaves: dict[str, Tensor] | None = None  # the training step's float32 weights

    def storage(self, net: nn.Module) -> dict[str, Tensor]:
        return {n: net.get_buffer(n) for n in self.names}

    def seed(self, seed: int, device: torch.device) -> None:
        if self.gen.device != device:
            self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def __call__(self, net: nn.Module, x: Tensor) -> Tensor:
        """net(x) with the weights decoded to float32; in a training step, as leaves for the optimizer."""
        decoded = {n: self.fmt.decode(s) for n, s in self.storage(net).items()}
        if net.training and torch.is_grad_enabled():
            self.leaves = {n: w.requires_grad_() for n, w in decoded.items()}
            decoded = self.leaves
        return functional_call(net, decoded, (x,))

    def grads(self) -> list[Tensor]:
        return [w.grad for w in (self.leaves or {}).values() if w.grad is not None]

    def nbytes(self, net: nn.Module) -> int:
        return sum(s.numel() * s.element_size() for s in self.storage(net).values())


STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _LowPrecisionOptimizer(torch.optim.Optimizer):
    """A torch optimizer over the 16-bit storage tensors of `lp`: step(closure) runs the closure
    (forward and backward on float32 leaves), computes each update in float32 from the leaves and
    their gradients, and writes the result back with the format's rounding."""

    def __init__(self, lp: LowPrecision, net: nn.Module, param_groups: list[dict[str, Any]], defaults: dict[str, Any],
                 state_dtype: str = "fp32"):
        self.lp, self.net, self.state_dtype = lp, net, STATE_DTYPES[state_dtype]
        self._names = {id(s): n for n, s in lp.storage(net).items()}
        super().__init__(param_groups, defaults)

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Lightning calls this between the forward and the backward: keep this step's leaves
        for w in (self.lp.leaves or {}).values():
            w.grad = None

    def _state(self, s: Tensor, key: str) -> Tensor:
        st = self.state[s]
        if key not in st:
            st[key] = torch.zeros(s.shape, dtype=self.state_dtype, device=s.device)
        return st[key]

    def _put(self, s: Tensor, key: str, value: Tensor) -> Tensor:
        self.state[s][key].copy_(value)  # rounds to nearest when the state is bfloat16
        return value

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        leaves = self.lp.leaves or {}
        for group in self.param_groups:
            for s in group["params"]:
                w = leaves.get(self._names[id(s)])
                if w is None or w.grad is None:
                    continue
                new = self.update(s, w.detach(), w.grad.float(), group)
                s.copy_(self.lp.fmt.encode(new, self.lp.rounding, self.lp.gen))
        self.lp.leaves = None
        return loss

    def update(self, s: Tensor, w: Tensor, g: Tensor, group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's would cast float32 state to a bfloat16 parameter's dtype: keep it as saved."""
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for k, v in state_dict["state"].get(i, {}).items():
                if isinstance(v, Tensor) and k != "step":
                    self.state[p][k] = v.to(device=p.device, dtype=self.state_dtype).clone()


class LowPrecisionSGD(_LowPrecisionOptimizer):
    """torch.optim.SGD's update (weight decay, momentum, Nesterov), in float32, on 16-bit weights."""

    def __init__(self, lp: LowPrecision, net: nn.Module, param_groups: list[dict[str, Any]], lr: float,
                 momentum: float = 0.0, nesterov: bool = False, state_dtype: str = "fp32"):
        super().__init__(lp, net, param_groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                                 "weight_decay": 0.0}, state_dtype)

    def update(self, s, w, g, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * w
        mu = group["momentum"]
        if mu:
            first = "momentum_buffer" not in self.state[s]
            buf = self._state(s, "momentum_buffer").float()
            buf = self._put(s, "momentum_buffer", g if first else buf * mu + g)
            g = g + mu * buf if group["nesterov"] else buf
        return w - group["lr"] * g


class LowPrecisionAdamW(_LowPrecisionOptimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction), in float32, on 16-bit weights."""

    def __init__(self, lp: LowPrecision, net: nn.Module, param_groups: list[dict[str, Any]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, state_dtype: str = "fp32"):
        super().__init__(lp, net, param_groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0}, state_dtype)

    def update(self, s, w, g, group):
        (b1, b2), lr = group["betas"], group["lr"]
        st = self.state[s]
        st["step"] = st.get("step", 0) + 1
        t = st["step"]
        w = w * (1 - lr * group["weight_decay"])
        m = self._put(s, "exp_avg", self._state(s, "exp_avg").float().lerp(g, 1 - b1))
        v = self._put(s, "exp_avg_sq", self._state(s, "exp_avg_sq").float() * b2 + (1 - b2) * g * g)
        denom = v.sqrt() / math.sqrt(1 - b2 ** t) + group["eps"]
        return w - (lr / (1 - b1 ** t)) * m / denom
