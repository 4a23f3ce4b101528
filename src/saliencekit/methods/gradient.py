"""Vanilla gradient and gradient x input."""

from __future__ import annotations

import torch

from ..core import engine
from .base import Context, Variant, register


def input_gradients(ctx: Context) -> torch.Tensor:
    """d score / d x at the clean input, B x C x H x W."""
    out = torch.zeros(ctx.x.shape, device=ctx.x.device, dtype=engine.acc_dtype(ctx.x.dtype))

    def on_sample(i, j, g, point):
        out[i] = g

    plan = engine.Plan(ctx.n, 1, lambda img, smp, stp: ctx.x[img.to(ctx.x.device)])
    ctx.run(plan, on_sample)
    return out


@register("gradient", defaults={}, heatmap={"sign": "abs", "channels": "sum", "clip": 99}, clean_pass=True,
          cost=lambda o: 1, showcase=True,
          variants={"gradient": Variant("gradient", default=True),
                    "original": Variant("gradient", heatmap={"channels": "max", "clip": None})})
def gradient(ctx: Context):
    """Vanilla gradient of the score w.r.t. the input (Simonyan et al.); heatmap: |g| summed over channels."""
    return {"attributions": input_gradients(ctx)}


@register("gradient_x_input", defaults={}, heatmap={"sign": "abs", "channels": "sum", "clip": 99}, clean_pass=True,
          cost=lambda o: 1)
def gradient_x_input(ctx: Context):
    """x * gradient. Caution (Smilkov et al.): mixes pixel intensity into the map; black pixels
    (x = 0 in model space) can never be salient."""
    return {"attributions": ctx.x.detach().to(engine.acc_dtype(ctx.x.dtype)) * input_gradients(ctx)}
