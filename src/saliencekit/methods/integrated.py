"""Integrated Gradients (Sundararajan et al. 2017), and the path machinery SmoothGrad reuses."""

from __future__ import annotations

import torch

from ..core.checks import positive_int
from .base import N_STEPS, Context, Variant, register
from .paths import DEFAULT_RULE, baseline_fn, integrated

IG_DEFAULTS = {"n_steps": 50, "rule": DEFAULT_RULE, "baseline": "black", "baseline_draws": 5,
               "blur_kernel": 51, "blur_sigma": 50.0}


@register("integrated_gradients", defaults=IG_DEFAULTS, heatmap={"sign": "abs", "channels": "sum", "clip": 99},
          ui={"n_steps": N_STEPS},
          cost=lambda o: o["n_steps"] * (o["baseline_draws"] if o["baseline"] == "uniform" else 1),
          showcase=True,
          variants={"ig_black": Variant("integrated_gradients", {"baseline": "black"}, default=True),
                    "ig_blur": Variant("integrated_gradients", {"baseline": "blur"})})
def integrated_gradients(ctx: Context, n_steps, rule, baseline, baseline_draws, blur_kernel, blur_sigma):
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
