"""Exact linear probes: L2-regularised multinomial logistic regression on frozen features, solved
full-batch, its strength chosen by stratified k-fold cross-validation over a log grid (the protocol
of CLIP's linear probes), then refitted on the whole training split.

The objective is scikit-learn's `LogisticRegression`'s on the raw features, so C means the same:
    C * sum_i CE(W x_i + b, y_i) + ||W||^2 / 2        (the bias is not penalised)
solved as its mean over the N images (the same minimiser, better scaled). With fewer images than
feature dimensions the problem is solved exactly in the span of the images (`_basis`), where it is
small enough for Newton's method; larger problems use L-BFGS.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

GRID = tuple(10.0 ** (k / 2) for k in range(-6, 5))  # C from 0.001 to 100, half a decade apart


@dataclass
class Fit:
    weight: Tensor  # (K, D), on the raw features
    bias: Tensor  # (K,)
    loss: float  # the objective at the solution (mean form: mean CE + ||W||^2 / (2 C N), standardised W)
    iterations: int


@dataclass
class Probe:
    """The chosen head and the evidence: the grid, the folds, the mean validation accuracy per C."""

    fit: Fit
    C: float
    grid: list[float]
    folds: int
    cv_acc: list[float]
    cv_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0  # cross-validation and refit

    def record(self) -> dict:
        return {"solver": "lbfgs", "C": self.C, "grid": self.grid, "folds": self.folds, "cv_acc": self.cv_acc,
                "cv_loss": self.cv_loss, "train_objective": self.fit.loss, "iterations": self.fit.iterations,
                "seconds": self.seconds}


def _objective(z: Tensor, y: Tensor, w: Tensor, b: Tensor | float, lam: float, mask: Tensor | None = None) -> Tensor:
    """mean CE + lam/2 ||W||^2 (`mask`: which columns of W are penalised; Newton's W carries the bias)."""
    penalty = w * w if mask is None else (w * mask) ** 2
    return F.cross_entropy(z @ w.T + b, y) + 0.5 * lam * penalty.sum()


def _newton(z: Tensor, y: Tensor, k: int, lam: float, w: Tensor, b: Tensor, tol: float, max_iter: int = 100):
    """Damped Newton with the exact Hessian, for problems with few parameters: (W, b, iterations).
    The Hessian is singular along 'add a constant to every bias' (softmax), hence the tiny ridge."""
    n, d = z.shape
    za = torch.cat([z, z.new_ones(n, 1)], 1)  # (N, D+1): the bias as a constant feature
    theta = torch.cat([w, b[:, None]], 1)  # (K, D+1)
    mask = torch.cat([z.new_ones(d), z.new_zeros(1)])  # the bias is not penalised
    onehot = F.one_hot(y, k).to(z.dtype)

    it = 0
    for it in range(1, max_iter + 1):
        p = torch.softmax(za @ theta.T, 1)  # (N, K)
        g = (p - onehot).T @ za / n + lam * theta * mask  # (K, D+1)
        if float(g.abs().max()) < tol:
            break
        h = -torch.einsum("nk,nl,nd,ne->kdle", p, p, za, za) / n  # (K, D+1, K, D+1)
        diag = torch.einsum("nk,nd,ne->kde", p, za, za) / n  # the k == l blocks' diag(p) part
        idx = torch.arange(k)
        h[idx, :, idx, :] += diag
        m = k * (d + 1)
        hm = h.reshape(m, m) + torch.diag((lam * mask).repeat(k)) + 1e-10 * torch.eye(m, dtype=z.dtype, device=z.device)
        step = torch.linalg.solve(hm, g.reshape(m)).reshape(k, d + 1)
        f0, slope, t = float(_objective(za, y, theta, 0.0, lam, mask)), float((g * step).sum()), 1.0
        while t > 1e-8 and float(_objective(za, y, theta - t * step, 0.0, lam, mask)) > f0 - 1e-4 * t * slope:  # Armijo
            t *= 0.5
        theta = theta - t * step
    return theta[:, :d].contiguous(), theta[:, d].contiguous(), it


CV_TOL, CV_MAX_ITER = 1e-6, 100  # the folds' solves: enough for a validation accuracy; the refit's: 1e-8, 500
NEWTON_MAX_PARAMS = 1500  # above this many parameters L-BFGS, whose steps do not need the Hessian


def solve(z: Tensor, y: Tensor, k: int, C: float, init: tuple[Tensor, Tensor] | None = None,
          max_iter: int = 500, tol: float = 1e-8) -> tuple[Tensor, Tensor, float, int]:
    """Minimise mean CE + ||W||^2 / (2 C N) over (W, b) on features z (N, D), full batch, in z's
    dtype and on its device: Newton's method when K (D + 1) is small, else L-BFGS (strong Wolfe line
    search). Returns (W, b, objective, iterations)."""
    n, d = z.shape
    lam = 1.0 / (C * n)
    w0 = init[0].clone() if init else z.new_zeros(k, d)
    b0 = init[1].clone() if init else z.new_zeros(k)
    if k * (d + 1) <= NEWTON_MAX_PARAMS:
        w, b, iters = _newton(z, y, k, lam, w0, b0, tol, min(max_iter, 100))
    else:
        w, b = w0.requires_grad_(), b0.requires_grad_()
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                                tolerance_change=tol * 1e-3, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = _objective(z, y, w, b, lam)
            loss.backward()
            return loss

        opt.step(closure)
        iters = int(opt.state[w].get("n_iter", 0))
        w, b = w.detach(), b.detach()
    with torch.no_grad():
        return w, b, float(_objective(z, y, w, b, lam)), iters


def _basis(x: Tensor) -> Tensor:
    """(D, r) orthonormal basis of the span of x's rows when N < D, else the identity. The L2
    solution's W lies in that span (the loss's gradient does, and the penalty's is W itself), so
    solving on x @ basis (N, r) and mapping back is the same solution, with D/r times fewer weights."""
    n, d = x.shape
    if n >= d:
        return torch.eye(d, dtype=x.dtype, device=x.device)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = int((s > s[0] * 1e-10 * max(n, d)).sum()) if len(s) and s[0] > 0 else 0
    return vh[: max(r, 1)].T


def fit(x: Tensor, y: Tensor, k: int, C: float, dtype: torch.dtype = torch.float64) -> Fit:
    """The probe at one strength on features x (N, D)."""
    x = x.to(dtype)
    v = _basis(x)
    w, b, loss, iters = solve(x @ v, y, k, C)
    return Fit(w @ v.T, b, loss, iters)


def stratified_folds(y: Tensor, folds: int, seed: int) -> Tensor:
    """A fold index per image: each class's images shuffled (explicit generator) and dealt round-robin,
    so every fold holds each class in proportion."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(len(y), dtype=torch.long)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        out[idx] = torch.arange(len(idx)) % folds
    return out


def fit_cv(x: Tensor, y: Tensor, k: int, grid: tuple[float, ...] = GRID, folds: int = 5, seed: int = 0,
           dtype: torch.dtype = torch.float64, max_cv_images: int = 2500) -> Probe:
    """Choose C by stratified k-fold cross-validation (k = min(folds, images of the rarest class)):
    the best mean validation accuracy, ties to the lower validation loss, then the stronger
    regularisation; then refit on every image. Solutions are warm-started along the grid. With more
    than `max_cv_images` training images the folds are cut from a stratified sample of that many (a
    fold's accuracy is then already measured on 500 images); the refit uses them all. The folds' solves
    stop at CV_TOL or CV_MAX_ITER (warm-started; validation accuracy has settled by then), in float32
    when the problem is large; the refit solves in `dtype` to 1e-8."""
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (N, D) for {len(y)} labels, got {tuple(x.shape)}")
    counts = torch.bincount(y, minlength=k)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("a cross-validated probe needs at least 2 training images of every class")
    t0 = time.perf_counter()
    x, grid = x.to(dtype), tuple(sorted(grid))
    xs, ys = x, y
    if len(y) > max_cv_images:
        keep = stratified_folds(y.cpu(), -(-len(y) // max_cv_images), seed + 1) == 0  # one of ceil(N / max) strata
        xs, ys = x[keep.to(x.device)], y[keep.to(y.device)]
    fold = stratified_folds(ys.cpu(), folds, seed).to(x.device)
    acc = torch.zeros(len(grid), dtype=torch.float64)
    nll = torch.zeros(len(grid), dtype=torch.float64)
    for f in range(folds):
        tr, va = fold != f, fold == f
        v = _basis(xs[tr])
        zt, zv = xs[tr] @ v, xs[va] @ v
        if zt.numel() > 1_000_000:
            zt, zv = zt.float(), zv.float()
        init = None
        for i, C in enumerate(grid):  # from strong to weak regularisation, each from the last solution
            w, b, _, _ = solve(zt, ys[tr], k, C, init, max_iter=CV_MAX_ITER, tol=CV_TOL)
            init = (w, b)
            logits = zv @ w.T + b
            acc[i] += float((logits.argmax(1) == ys[va]).double().mean()) / folds
            nll[i] += float(F.cross_entropy(logits, ys[va])) / folds
    best = max(range(len(grid)), key=lambda i: (round(float(acc[i]), 9), -float(nll[i]), -i))
    return Probe(fit(x, y, k, grid[best], dtype), grid[best], list(grid), folds, acc.tolist(), nll.tolist(),
                 time.perf_counter() - t0)
