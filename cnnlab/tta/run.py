"""Evaluate a classifier with test-time augmentation policies, in one pass over the test split:
for each batch every policy's views go through the network as batched forwards (chunked so that
no forward holds more than `chunk` view-images), and the scores are aggregated per image."""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from cnnlab.tta.policy import Policy, aggregate, build, check
from cnnlab.tta.spec import EvalSpec
from cnnlab.tta.stats import paired, scores

BASELINE = "identity"


class Predictor(pl.LightningModule):
    """Wraps a classifier (a module with `prepare(uint8 batch) -> input` and `forward`); each
    predict step returns every policy's log-probabilities for the batch, and times each policy
    (view making, forwards, aggregation; device-synchronised)."""

    def __init__(self, classifier: nn.Module, policies: list[Policy], agg: str, chunk: int):
        super().__init__()
        self.classifier, self.policies, self.agg, self.chunk = classifier, policies, agg, chunk
        self.seconds = {p.name: 0.0 for p in policies}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def scores(self, policy: Policy, x: Tensor) -> Tensor:
        """(B, K) log-probabilities: groups of images whose views fill at most `chunk` rows, each
        group's views made at once and forwarded in one call (or `chunk`-row calls)."""
        V = policy.views
        out = []
        for xs in x.split(max(1, self.chunk // V)):
            views = policy(xs)
            logits = torch.cat([self.classifier(self.classifier.prepare(v)) for v in views.split(self.chunk)])
            out.append(aggregate(logits.view(V, len(xs), -1), self.agg))
        return torch.cat(out)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> tuple[dict[str, Tensor], Tensor]:
        x, y = batch
        if batch_idx == 0:  # kernels chosen and memory allocated before any policy is timed
            self.classifier(self.classifier.prepare(x[: self.chunk]))
            self._sync()
        out = {}
        for p in self.policies:
            t0 = time.perf_counter()
            out[p.name] = self.scores(p, x).cpu()
            self._sync()
            self.seconds[p.name] += time.perf_counter() - t0
        return out, y.cpu()


def policies_for(names: list[str], spec: EvalSpec, sample: Tensor) -> list[Policy]:
    """The single view first, then each named policy, checked on a real image (ValueError names
    the view that does not fit the data)."""
    built = [build(n, spec.views) for n in dict.fromkeys([BASELINE, *names])]
    for p in built:
        check(p, sample)
    return built


def evaluate(classifier: nn.Module, loader: Any, policies: list[Policy], spec: EvalSpec, chunk: int,
             trainer: pl.Trainer) -> dict[str, Any]:
    """Every policy's accuracy, NLL, ECE, views per image and images/s on `loader`'s images, and
    its paired change from the single view (the first policy). The policies come from
    `policies_for` (checked, views counted); `trainer` runs the prediction."""
    predictor = Predictor(classifier, policies, spec.agg, chunk)
    batches = trainer.predict(predictor, dataloaders=loader)
    y = torch.cat([b[1] for b in batches])
    rows = []
    base_right = None
    for p in policies:
        logp = torch.cat([b[0][p.name] for b in batches])
        right = logp.argmax(-1) == y
        if base_right is None:
            base_right = right
        secs = predictor.seconds[p.name]
        rows.append({"policy": p.name, "views": p.views, **scores(logp, y),
                     "images_per_s": len(y) / secs if secs > 0 else None, "seconds": secs,
                     "vs_single": None if p.name == BASELINE else paired(base_right, right)})
    return {"agg": spec.agg, "chunk": chunk, "images": len(y), "baseline": BASELINE,
            "view_params": {n: kw for p in policies for n, _, kw in p.steps if kw}, "policies": rows}
