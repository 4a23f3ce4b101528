"""SmoothGrad (Smilkov et al. 2017), SmoothGrad-Squared and VarGrad over any per-sample estimator."""

from __future__ import annotations

import torch

from ..core import engine, noise
from ..core.checks import choice, positive_int
from .base import N_SAMPLES, NOISE_LEVEL, Context, Moments, Option, Variant, noise_sigma, register
from .paths import DEFAULT_RULE, RULES, baseline_fn, check_baseline, integrated

ESTIMATORS = ("mean", "square", "var")
BASES = ("gradient", "gradient_x_input", "integrated_gradients")

SG_DEFAULTS = {"n_samples": 50, "noise_level": 0.15, "stdev": None, "estimator": "mean", "base": "gradient",
               "n_steps": 20, "rule": DEFAULT_RULE, "baseline": "black",
               "baseline_draws": 1, "blur_kernel": 51, "blur_sigma": 50.0}


@register("smoothgrad", defaults=SG_DEFAULTS, stochastic=True, heatmap={"sign": "abs", "channels": "sum", "clip": 99},
          ui={"n_samples": N_SAMPLES, "noise_level": NOISE_LEVEL,
              "estimator": Option("choice", "estimator", choices=ESTIMATORS,
                                  help="mean = SmoothGrad, square = SmoothGrad², var = VarGrad")},
          cost=lambda o: o["n_samples"] * (o["n_steps"] if o["base"] == "integrated_gradients" else 1),
          showcase=True,
          variants={"smoothgrad": Variant("smoothgrad", default=True),
                    "smoothgrad_square": Variant("smoothgrad", {"estimator": "square"}),
                    "smoothgrad_var": Variant("smoothgrad", {"estimator": "var"})})
def smoothgrad(ctx: Context, n_samples, noise_level, stdev, estimator, base, n_steps, rule, baseline,
               baseline_draws, blur_kernel, blur_sigma):
    """SmoothGrad: estimator over x + eps_t, eps_t ~ N(0, sigma^2), of a per-sample attribution.

    sigma = ``noise_level`` * (max(x) - min(x)) per image, or ``stdev`` (absolute).
    ``estimator``: ``mean`` (SmoothGrad, the paper's default), ``square`` (mean of squares,
    SmoothGrad^2), ``var`` (VarGrad). ``base``: gradient, gradient_x_input (noisy input times
    its gradient, as Captum's NoiseTunnel does) or integrated_gradients (``n_steps`` path
    steps per noisy sample, towards ``baseline``).
    """
    positive_int("n_samples", n_samples)
    choice("estimator", estimator, ESTIMATORS)
    choice("base", base, BASES)
    # the integrated-gradients options are checked even when base does not use them: a typo
    # (rule="simpson") must not pass silently
    positive_int("n_steps", n_steps)
    choice("rule", rule, RULES)
    check_baseline(baseline, ctx.x.shape)
    sigma = noise_sigma(ctx, noise_level, stdev)
    x = ctx.x.detach()
    shape = x.shape[1:]

    def noisy(i, j):
        e = ctx.normal(shape, i, j, noise.STREAM_SMOOTHGRAD)
        return x[i] + sigma[i] * e

    if base == "integrated_gradients":
        positive_int("n_steps", n_steps)
        bfn, _ = baseline_fn(ctx, baseline, 1, blur_kernel, blur_sigma)
        if baseline == "uniform":  # one uniform baseline draw per noisy sample
            bfn, _ = baseline_fn(ctx, baseline, n_samples, blur_kernel, blur_sigma)
        attr = integrated(ctx, n_steps=n_steps, rule=rule, base=bfn, n_samples=n_samples, start=noisy,
                          estimator=estimator)
        return {"attributions": attr, "extras": {"sigma": sigma}}

    mom = Moments(ctx.n, shape, x.device, estimator != "mean", x.dtype)
    times_input = base == "gradient_x_input"

    def make(img, smp, stp):
        return torch.stack([noisy(i, j) for i, j in zip(img.tolist(), smp.tolist())])

    def on_sample(i, j, g, point):
        mom.add(i, point.to(g.dtype) * g if times_input else g)

    ctx.run(engine.Plan(ctx.n, n_samples, make), on_sample)
    return {"attributions": mom.result(estimator), "extras": {"sigma": sigma}}
