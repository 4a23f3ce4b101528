"""Sign-aware saliency (Llorente et al. 2023): positive, negative, active and inactive maps.

With g_c the input gradient of class c's logit and c_hat the explained (predicted) class:
- positive = ReLU(g_c_hat); negative = ReLU(-g_c_hat)  (element-wise, B x C x H x W);
- active   = |g_c_hat| where g_c_hat > g_c for every other class c (0 elsewhere);
- inactive = |g_c_hat| where g_c_hat < g_c for every other class c (0 elsewhere).
The heatmap reduces by max over channels and min-max normalises per image.

Other classes' gradients go through the engine in chunks of rows (one row = one (image, class)
vector-Jacobian product), streaming a running max and min over classes: memory O(chunk).
"""

from __future__ import annotations

import torch

from ..core import engine
from ..core.targets import apply_space
from ..core.checks import positive_int
from .base import Context, Variant, register
from .gradient import input_gradients

HEAT = {"sign": "abs", "channels": "max", "clip": None, "normalize": True}
DEFAULTS: dict = {}
COMPARE_DEFAULTS = {"top_k": None}
# Llorente et al. judge negative and inactive maps by white deletion (occluding with white pixels)
WHITE = {"allegiance": {"mode": "white"}}


def _need_classes(ctx: Context, name: str) -> torch.Tensor:
    if ctx.classes is None:
        raise ValueError(f"target: method {name!r} explains a class; unit / callable targets are not supported")
    return ctx.classes


@register("positive", defaults=DEFAULTS, heatmap=HEAT, class_target_only=True, cost=lambda o: 1, showcase=True,
          variants={"positive": Variant("positive", default=True)})
def positive(ctx: Context):
    """ReLU of the explained class's gradient: pixels whose brightening raises the class."""
    _need_classes(ctx, "positive")
    return {"attributions": input_gradients(ctx).clamp(min=0)}


@register("negative", defaults=DEFAULTS, heatmap=HEAT, class_target_only=True, cost=lambda o: 1,
          showcase=True, variants={"negative": Variant("negative", metric_options=WHITE, default=True)})
def negative(ctx: Context):
    """ReLU of minus the gradient: pixels whose darkening raises the class."""
    _need_classes(ctx, "negative")
    return {"attributions": (-input_gradients(ctx)).clamp(min=0)}


def other_class_extremes(ctx: Context, top_k=None):
    """Element-wise max and min over classes c != c_hat of g_c (B x C x H x W each)."""
    classes = _need_classes(ctx, "active/inactive")
    k = ctx.clean_outputs.shape[1]
    x = ctx.x.detach()
    if top_k is None:
        others = [[c for c in range(k) if c != int(classes[i])] for i in range(ctx.n)]
    else:
        positive_int("top_k", top_k)
        order = ctx.clean_outputs.argsort(dim=1, descending=True).tolist()
        others = [[c for c in order[i] if c != int(classes[i])][:top_k] for i in range(ctx.n)]
    m = len(others[0])
    if m == 0:
        raise ValueError("model: active / inactive maps need a model with at least 2 classes")
    cls_table = torch.tensor(others, dtype=torch.long, device=x.device)  # B x m
    space = ctx.score.space if hasattr(ctx.score, "space") else "logit"

    acc = engine.acc_dtype(x.dtype)
    hi = torch.full(x.shape, -float("inf"), device=x.device, dtype=acc)
    lo = torch.full(x.shape, float("inf"), device=x.device, dtype=acc)
    # One engine "image" per (image i, other class c) pair, flat index f = i * m + c_idx, so the
    # score knows each row's class from the row index alone (no state shared with make_points;
    # padded chunks work too). Rows are walked in (i, c) order, as before.
    cls_flat = cls_table.reshape(-1)

    def make(img, smp, stp):
        return x[(img // m).to(x.device)]

    class OtherScore:
        layers = ()

        def rows(self, outputs, image_index, captures=None):
            s = apply_space(outputs, space)
            return s.gather(1, cls_flat.to(outputs.device)[image_index.to(outputs.device)][:, None])[:, 0]

    def on_sample(f, j, g, point):
        i = f // m
        torch.maximum(hi[i], g, out=hi[i])
        torch.minimum(lo[i], g, out=lo[i])

    ctx.run(engine.Plan(ctx.n * m, 1, make), on_sample, score=OtherScore())
    return hi, lo


@register("active", defaults=COMPARE_DEFAULTS, heatmap=HEAT, class_target_only=True)
def active(ctx: Context, top_k):
    """|g_c_hat| where it is strictly greater than every other class's gradient (``top_k``: compare
    with the k highest-scoring other classes only; default all classes)."""
    g = input_gradients(ctx)
    hi, _ = other_class_extremes(ctx, top_k)
    return {"attributions": torch.where(g > hi, g.abs(), torch.zeros_like(g))}


@register("inactive", defaults=COMPARE_DEFAULTS, heatmap=HEAT, class_target_only=True,
          variants={"inactive": Variant("inactive", metric_options=WHITE)})
def inactive(ctx: Context, top_k):
    """|g_c_hat| where it is strictly smaller than every other class's gradient."""
    g = input_gradients(ctx)
    _, lo = other_class_extremes(ctx, top_k)
    return {"attributions": torch.where(g < lo, g.abs(), torch.zeros_like(g))}
