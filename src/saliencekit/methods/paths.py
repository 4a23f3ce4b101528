"""Integration paths: quadrature rules, baselines, and the path-integrated gradient that
Integrated Gradients and SmoothGrad (``base="integrated_gradients"``) share."""

from __future__ import annotations

import functools
from typing import Callable, List, Tuple

import numpy as np
import torch

from ..core import engine, noise
from ..core.checks import choice, positive_int
from ..core.imageops import gaussian_blur
from .base import Context, Moments

DEFAULT_RULE = "riemann_right"   # the SmoothTaylor authors' rule
RULES = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINES = ("black", "zeros", "blur", "uniform")


def path_rule(rule: str, n: int) -> Tuple[List[float], List[float]]:
    """Path positions alpha_k in [0, 1] and weights w_k (summing to 1) for ``n`` steps."""
    choice("rule", rule, RULES)
    if rule == "riemann_right":
        return [k / n for k in range(1, n + 1)], [1.0 / n] * n
    if rule == "riemann_left":
        return [k / n for k in range(n)], [1.0 / n] * n
    if rule == "riemann_middle":
        return [(k + 0.5) / n for k in range(n)], [1.0 / n] * n
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("n_steps: the trapezoid rule needs at least 2 steps")
        a = [k / (n - 1) for k in range(n)]
        w = [1.0 / (n - 1)] * n
        w[0] = w[-1] = 0.5 / (n - 1)
        return a, w
    nodes, weights = _leggauss(n)
    return list(nodes), list(weights)


@functools.lru_cache(maxsize=16)
def _leggauss(n: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Gauss-Legendre nodes / weights mapped to [0, 1] (cached: numpy's solver is O(n^3))."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(float(0.5 * (t + 1)) for t in nodes), tuple(float(0.5 * w) for w in weights)


def check_baseline(baseline, shape) -> None:
    """Refuse a bad ``baseline`` early: a name from BASELINES, a finite number, or a tensor
    broadcastable to ``shape``."""
    if isinstance(baseline, torch.Tensor):
        try:
            ok = torch.broadcast_shapes(tuple(baseline.shape), tuple(shape)) == tuple(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"baseline: a tensor baseline must broadcast to the input shape {tuple(shape)}, "
                             f"got {tuple(baseline.shape)}")
        if not torch.isfinite(baseline).all():
            raise ValueError("baseline: contains NaN or infinite values")
        return
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if baseline != baseline or abs(baseline) == float("inf"):
            raise ValueError(f"baseline: expected a finite number, got {baseline}")
        return
    if isinstance(baseline, str) or baseline is None or isinstance(baseline, bool):
        choice("baseline", baseline, BASELINES)
        return
    raise TypeError(f"baseline: expected one of {', '.join(BASELINES)}, a number or a tensor, "
                    f"got {type(baseline).__name__}")


def baseline_fn(ctx: Context, baseline, draws: int, blur_kernel: int, blur_sigma: float
                ) -> Tuple[Callable[[int, int], torch.Tensor], int]:
    """(baseline for (image i, draw j), number of draws)."""
    x = ctx.x.detach()
    spec = ctx.preprocessing
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(device=x.device, dtype=x.dtype)
        try:
            b = torch.broadcast_to(b, x.shape)
        except RuntimeError:
            raise ValueError(f"baseline: a tensor baseline must broadcast to the input shape {tuple(x.shape)}, "
                             f"got {tuple(baseline.shape)}") from None
        return (lambda i, j: b[i]), 1
    check_baseline(baseline, x.shape)
    if isinstance(baseline, (int, float)):
        return (lambda i, j: torch.full_like(x[i], float(baseline))), 1
    if baseline == "zeros":
        z = torch.zeros_like(x[0])
        return (lambda i, j: z), 1
    if baseline == "black":
        blk = spec.normalize(torch.zeros_like(x[:1]))[0]
        return (lambda i, j: blk), 1
    if baseline == "blur":
        blurred = spec.normalize(gaussian_blur(spec.denormalize(x), blur_kernel, blur_sigma))
        return (lambda i, j: blurred[i]), 1
    positive_int("baseline_draws", draws)
    shape = x.shape[1:]
    return (lambda i, j: spec.normalize(ctx.uniform(shape, i, j, noise.STREAM_BASELINE))), draws


def integrated(ctx: Context, *, n_steps: int, rule: str, base: Callable[[int, int], torch.Tensor],
               n_samples: int, start: Callable[[int, int], torch.Tensor], estimator: str = "mean"):
    """Estimator over samples j of IG_j = (start_ij - base_ij) * sum_k w_k g(base + a_k (start - base))."""
    alphas, weights = path_rule(rule, n_steps)
    alpha_t = torch.tensor(alphas, dtype=ctx.x.dtype, device=ctx.x.device)

    def make(img, smp, stp):
        rows = []
        ends = {}  # (i, j) -> (base, start - base), drawn once per chunk, not once per step
        for i, j, s in zip(img.tolist(), smp.tolist(), stp.tolist()):
            if (i, j) not in ends:
                b = base(i, j)
                ends[i, j] = (b, start(i, j) - b)
            b, d = ends[i, j]
            rows.append(b + alpha_t[s] * d)
        return torch.stack(rows)

    mom = Moments(ctx.n, ctx.x.shape[1:], ctx.x.device, estimator != "mean", ctx.x.dtype)

    def on_sample(i, j, g, point):
        mom.add(i, (start(i, j) - base(i, j)).to(g.dtype) * g)

    ctx.run(engine.Plan(ctx.n, n_samples, make, n_steps=n_steps, step_weights=weights), on_sample)
    return mom.result(estimator)
