"""Vanilla gradient and gradient x input."""

from __future__ import annotations

import torch

from .. import engine
from .base import Context, register


def input_gradients(ctx: Context) -> torch.Tensor:
    """d score / d x at the clean input, B x C x H x W."""
    out = torch.zeros(ctx.x.shape, device=ctx.x.device, dtype=engine.acc_dtype(ctx.x.dtype))

    def on_sample(i, j, g, point):
        out[i] = g

    plan = engine.Plan(ctx.n, 1, lambda img, smp, stp: ctx.x[img.to(ctx.x.device)])
    ctx.run(plan, on_sample)
    return out


@register("gradient", defaults={"score": "logit"}, heatmap={"sign": "abs", "channels": "sum", "clip": 99},
          clean_pass=True)
def gradient(ctx: Context, score):
    """Vanilla gradient of the score w.r.t. the input (Simonyan et al.); heatmap: |g| summed over channels."""
    return {"attributions": input_gradients(ctx)}


@register("gradient_x_input", defaults={"score": "logit"}, heatmap={"sign": "abs", "channels": "sum", "clip": 99},
          clean_pass=True)
def gradient_x_input(ctx: Context, score):
    """x * gradient. Caution (Smilkov et al.): mixes pixel intensity into the map; black pixels
    (x = 0 in model space) can never be salient."""
    return {"attributions": ctx.x.detach().to(engine.acc_dtype(ctx.x.dtype)) * input_gradients(ctx)}
