"""SmoothTaylor (Goh et al. 2021): Taylor expansions around noisy roots, with adaptive noising."""

from __future__ import annotations

import torch

from ..core import engine, noise
from ..core.checks import nonneg_float, positive_int
from .adaptive import adaptive_noising
from .base import N_SAMPLES, Context, Moments, Option, Variant, noise_sigma, register


ST_DEFAULTS = {"n_samples": 150, "noise_scale": 0.5, "noise_percent": None,
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


@register("smoothtaylor", defaults=ST_DEFAULTS, stochastic=True, heatmap={"sign": "signed", "channels": "sum", "clip": 99},
          ui={"n_samples": N_SAMPLES,
              "noise_scale": Option("float", "noise sigma", 0.0, 5.0, help="absolute noise sigma in model space")},
          cost=lambda o: o["n_samples"],
          showcase=True,
          variants={"smoothtaylor": Variant("smoothtaylor", default=True),
                    "smoothtaylor_adaptive": Variant("smoothtaylor", {"noise_scale": "adaptive"})})
def smoothtaylor(ctx: Context, n_samples, noise_scale, noise_percent, objective, adaptive_options):
    """SmoothTaylor (Goh et al. 2021): mean over noisy roots z_j = x + eps_j of (x - z_j) * g(z_j).

    ``noise_scale`` is the absolute sigma in model space (0.5); ``noise_percent`` p gives
    sigma = p/100 * (max(x) - min(x)) per image instead. Heatmap: signed sum over channels.
    ``noise_scale="adaptive"``: the authors' per-image search for sigma minimising ``objective``
    (``"aupc"``, ``"autvc"`` or a callable ``A(attributions, sigma)``); ``adaptive_options`` (a
    dict, defaults ``methods.adaptive.ADAPTIVE_DEFAULTS``): ``lr`` 0.1, ``decay`` 0.9, ``patience``
    3 (failures tolerated; the 4th in a row stops), ``max_iter`` 20, ``sigma0`` (mean|x|),
    ``noise`` ``"common"`` (the same noise at every sigma) or ``"fresh"`` (new noise per evaluation,
    as the authors' code), and the objective's ``window`` / ``regions`` / ``draws`` (AUPC) or
    ``downscale`` / ``min_size`` (AUTVC). Extras: ``sigma``, ``objective_value``, ``objective_trace``.
    """
    positive_int("n_samples", n_samples)
    if isinstance(noise_scale, str):
        if noise_scale != "adaptive":
            raise ValueError(f"noise_scale: expected a number or 'adaptive', got {noise_scale!r}")
        return adaptive_noising(ctx, lambda sub, sigma: smoothtaylor_fixed(sub, n_samples, sigma), objective,
                                adaptive_options or {})
    if noise_percent is not None:
        pct = nonneg_float("noise_percent", noise_percent)
        sigma = noise_sigma(ctx, pct / 100.0, None)
    else:
        sigma = noise_sigma(ctx, None, nonneg_float("noise_scale", noise_scale))
    attr = smoothtaylor_fixed(ctx, n_samples, sigma)
    return {"attributions": attr, "extras": {"sigma": sigma}}
