"""Integrated Gradients (Sundararajan et al.) and SmoothTaylor (Goh et al. 2021)."""

from __future__ import annotations

import functools
from typing import Callable, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import engine, noise
from .base import Context, Moments, choice, noise_sigma, nonneg_float, positive_int, register

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


def gaussian_blur(x01: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B x C x H x W batch, reflect padding (size-preserving)."""
    if kernel % 2 == 0 or kernel < 1:
        raise ValueError(f"blur_kernel: expected an odd positive size, got {kernel}")
    r = kernel // 2
    t = torch.arange(kernel, dtype=torch.float32, device=x01.device) - r
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = (k / k.sum()).to(x01.dtype)
    c = x01.shape[1]
    h, w = x01.shape[-2:]
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(x01, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


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


IG_DEFAULTS = {"n_steps": 50, "rule": "riemann_right", "baseline": "black", "baseline_draws": 5,
               "blur_kernel": 51, "blur_sigma": 50.0, "score": "logit"}


@register("integrated_gradients", defaults=IG_DEFAULTS,
          heatmap={"sign": "abs", "channels": "sum", "clip": 99})
def integrated_gradients(ctx: Context, n_steps, rule, baseline, baseline_draws, blur_kernel, blur_sigma, score):
    """Integrated Gradients: (x - x_bar) * (1/m) sum_k w_k g(x_bar + a_k (x - x_bar)).

    Baselines: ``black`` (pixel 0, normalised), ``zeros`` (0 in model space), ``blur``
    (Gaussian blur, kernel 51 / sigma 50, of the [0, 1] image), ``uniform`` (uniform pixel noise,
    ``baseline_draws`` draws averaged), or a tensor. ``delta`` = sum(attr) - (f(x) - f(x_bar)).
    """
    positive_int("n_steps", n_steps)
    base, draws = baseline_fn(ctx, baseline, baseline_draws, blur_kernel, blur_sigma)
    x = ctx.x.detach()
    attr = integrated(ctx, n_steps=n_steps, rule=rule, base=base, n_samples=draws, start=lambda i, j: x[i])
    # completeness: f(x) - mean_j f(x_bar_j)
    bl = torch.stack([base(i, j) for i in range(ctx.n) for j in range(draws)])
    idx = torch.arange(ctx.n).repeat_interleave(draws)
    f_base = ctx.scores_at(bl, idx).view(ctx.n, draws).mean(1)
    f_x = ctx.scores_at(x, torch.arange(ctx.n))
    delta = attr.reshape(ctx.n, -1).sum(1) - (f_x - f_base).to(attr.device)
    return {"attributions": attr, "delta": delta}


ST_DEFAULTS = {"n_samples": 150, "noise_scale": 0.5, "noise_percent": None, "score": "logit",
               "objective": "aupc", "adaptive_options": None}


def smoothtaylor_fixed(ctx: Context, n_samples: int, sigma: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_j (x - z_j) * g(z_j), z_j = x + sigma_i * eps_j."""
    x = ctx.x.detach()
    shape = x.shape[1:]

    def eps(i, j):
        return ctx.normal(shape, i, j, noise.STREAM_TAYLOR)

    def make(img, smp, stp):
        return torch.stack([x[i] + sigma[i] * eps(i, j) for i, j in zip(img.tolist(), smp.tolist())])

    mom = Moments(ctx.n, shape, x.device, False, x.dtype)

    def on_sample(i, j, g, point):
        mom.add(i, (x[i] - point).to(g.dtype) * g)

    ctx.run(engine.Plan(ctx.n, n_samples, make), on_sample)
    return mom.result("mean")


@register("smoothtaylor", defaults=ST_DEFAULTS, stochastic=True,
          heatmap={"sign": "signed", "channels": "sum", "clip": 99})
def smoothtaylor(ctx: Context, n_samples, noise_scale, noise_percent, score, objective, adaptive_options):
    """SmoothTaylor (Goh et al. 2021): mean over noisy roots z_j = x + eps_j of (x - z_j) * g(z_j).

    ``noise_scale`` is the absolute sigma in model space (0.5); ``noise_percent`` p gives
    sigma = p/100 * (max(x) - min(x)) per image instead. Heatmap: signed sum over channels.
    """
    positive_int("n_samples", n_samples)
    if isinstance(noise_scale, str):
        if noise_scale != "adaptive":
            raise ValueError(f"noise_scale: expected a number or 'adaptive', got {noise_scale!r}")
        from . import adaptive  # provided with the metrics (AUPC / AUTVC objectives)

        return adaptive.smoothtaylor_adaptive(ctx, n_samples=n_samples, objective=objective,
                                              options=adaptive_options or {})
    if noise_percent is not None:
        pct = nonneg_float("noise_percent", noise_percent)
        sigma = noise_sigma(ctx, pct / 100.0, None)
    else:
        sigma = noise_sigma(ctx, None, nonneg_float("noise_scale", noise_scale))
    attr = smoothtaylor_fixed(ctx, n_samples, sigma)
    return {"attributions": attr, "extras": {"sigma": sigma}}
