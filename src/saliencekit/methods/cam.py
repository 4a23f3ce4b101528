"""Grad-CAM, Grad-CAM++ and Smooth Grad-CAM++ (Omeiza et al. 2019; docs/cams.md), batched through the engine.

Notation: ``A`` = the chosen layer's output on the clean input (K maps), ``g = d score / d A``.

- ``gradcam``: ``w_k = mean_ij g_kij``; map ``ReLU(sum_k w_k A_k)``.
- ``gradcampp``: ``alpha = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` (0 where the denominator is 0),
  ``w_k = sum_ij alpha_kij ReLU(g_kij)`` (the paper's closed form, as in the authors' code).
- ``smoothgradcampp``: ``D1, D2, D3`` = means of ``g_m, g_m^2, g_m^3`` over ``n_samples`` noisy
  copies ``x + eps_m`` (eps ~ N(0, sigma^2), sigma = ``noise_level`` * (max - min) of the image, or
  ``stdev``); ``alpha = D2 / (2 D2 + (sum_ab A) D3)`` (``alpha_numerator="d1"``: the paper's
  printed D1 numerator), ``w_k = sum_ij alpha ReLU(D1)``, with ``A`` from the clean input.

All noisy copies of all images go through the engine in chunks: one forward and one
``autograd.grad`` to the captured layer output per chunk, with streaming sums of g, g^2, g^3.
The layer is captured by a forward hook that keeps the layer's output and hands the rest of the
network a clone (``hooks.capture``), so in-place ops after the layer are harmless; the hook is
removed in ``finally``. ``channels`` restricts the weighted sum to those feature maps. Token
layers (B x N x C) are re-gridded after dropping ``prefix_tokens`` leading tokens (automatic:
the smallest count leaving a grid with the input's aspect ratio, e.g. 1 for a class token).

Attributions: B x 1 x H x W, the map upsampled bilinearly (``align_corners=False``), not
normalised; ``extras["cam"]`` keeps the layer-resolution map, ``extras["weights"]`` the w_k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import engine, noise
from ..core.hooks import resolve_layer
from ..core.layers import find_cam_layer
from ..core.targets import RecordingScore
from ..core.units import as_grid
from ..core.checks import boolean, choice, optional_nonneg_int, positive_int
from .base import LAYER, N_SAMPLES, NOISE_LEVEL, Context, noise_sigma, register

CAM_DEFAULTS = {"layer": None, "channels": None, "relu": True, "prefix_tokens": None}
SMOOTH_DEFAULTS = dict(CAM_DEFAULTS, n_samples=25, noise_level=0.15, stdev=None, alpha_numerator="d2")
CAM_HEATMAP = {"sign": "abs", "channels": "sum", "clip": None, "normalize": True}


def _layer(ctx: Context, layer) -> tuple[str, nn.Module]:
    if layer is None:
        return find_cam_layer(ctx.model, ctx.x)
    mod = resolve_layer(ctx.model, layer)
    if isinstance(layer, str):
        return layer, mod
    return next(n for n, m in ctx.model.named_modules() if m is mod), mod


def _channels(channels, k: int) -> list[int] | None:
    if channels is None:
        return None
    if isinstance(channels, torch.Tensor):
        channels = channels.reshape(-1).tolist()
    if isinstance(channels, (int, str, bytes)) or not hasattr(channels, "__iter__"):
        raise TypeError(f"channels: expected a sequence of feature-map indices, got {type(channels).__name__}")
    out = list(channels)
    if not out:
        raise ValueError("channels: expected at least one feature-map index")
    for c in out:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"channels: expected int indices, got {c!r}")
        if not -k <= c < k:
            raise ValueError(f"channels: index {c} is out of range for a layer with {k} feature maps")
    return [c % k for c in out]


# ---- the computation ---------------------------------------------------------------------------

def _run(ctx: Context, plan, on_sample, site, score, name):
    try:
        ctx.run(plan, on_sample, site=site, score=score)
    except RuntimeError as e:
        msg = str(e)
        if "not have been used in the graph" in msg or "does not require grad" in msg:
            raise ValueError(f"target: the explained score does not depend on layer {name!r} (a unit target "
                             f"upstream of the CAM layer?)") from None
        raise


def cam_maps(ctx: Context, mode: str, layer, channels, relu, prefix_tokens, n_samples: int = 1,
             sigma: torch.Tensor | None = None, alpha_numerator: str = "d2"):
    """The shared core: gradients at the layer (clean or noisy), then the CAM formula."""
    name, site = _layer(ctx, layer)
    x = ctx.x.detach()
    n = ctx.n
    H, W = x.shape[-2:]
    aspect = H / W

    def grid(t):  # one image's layer tensor (C x h x w or N x C) -> C x h x w, float
        return as_grid(t[None], prefix_tokens, aspect)[0].float()

    smooth = mode == "smoothgradcampp"
    rec = RecordingScore(ctx.score, site, keep_activations=not smooth)
    if smooth:  # A from the clean input (no gradient needed); channels checked before the noisy passes
        clean = RecordingScore(ctx.score, site, keep_activations=True)
        ctx.scores_at(x, torch.arange(n), score=clean)
        _channels(channels, grid(clean.activations[0]).shape[0])
    sums: list[list[torch.Tensor] | None] = [None] * n
    powers = 1 if mode == "gradcam" else 3

    def on_sample(i, j, g, point):
        gg = grid(g)
        if sums[i] is None:
            sums[i] = [torch.zeros_like(gg) for _ in range(powers)]
        s = sums[i]
        s[0].add_(gg)
        if powers == 3:
            g2 = gg * gg
            s[1].add_(g2)
            s[2].add_(g2 * gg)

    if smooth:
        shape = x.shape[1:]

        def make(img, smp, stp):
            return torch.stack([x[i] + sigma[i] * ctx.normal(shape, i, j, noise.STREAM_CAM)
                                for i, j in zip(img.tolist(), smp.tolist())])
        plan = engine.Plan(n, n_samples, make)
    else:
        plan = engine.Plan(n, 1, lambda img, smp, stp: x[img.to(x.device)])
    _run(ctx, plan, on_sample, site, rec, name)
    acts = clean.activations if smooth else rec.activations

    A = torch.stack([grid(acts[i]) for i in range(n)])                       # B x K x h x w
    D = [torch.stack([sums[i][p] for i in range(n)]) / float(n_samples) for p in range(powers)]
    if mode == "gradcam":
        w = D[0].mean(dim=(2, 3))
    else:
        d1, d2, d3 = D
        num = d2 if alpha_numerator == "d2" else d1
        den = 2 * d2 + A.sum(dim=(2, 3), keepdim=True) * d3
        nz = den != 0
        alpha = torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), torch.zeros_like(den))
        w = (alpha * d1.clamp(min=0)).sum(dim=(2, 3))
    k = A.shape[1]
    sel = _channels(channels, k)
    wsel = w if sel is None else w[:, sel]
    Asel = A if sel is None else A[:, sel]
    cam = (wsel[:, :, None, None] * Asel).sum(1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    up = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)
    extras = {"cam": cam, "weights": w, "layer": name}
    if sigma is not None:
        extras["sigma"] = sigma
    heat = dict(CAM_HEATMAP) if relu else dict(CAM_HEATMAP, sign="signed")
    return {"attributions": up, "extras": extras, "heatmap": heat}


def _check_common(layer, relu, prefix_tokens):
    boolean("relu", relu)
    if layer is not None and not isinstance(layer, (str, nn.Module)):
        raise TypeError(f"layer: expected a module name (str), an nn.Module or None, got {type(layer).__name__}")
    optional_nonneg_int("prefix_tokens", prefix_tokens)


@register("gradcam", defaults=CAM_DEFAULTS, heatmap=CAM_HEATMAP, clean_pass=True, ui={"layer": LAYER},
          cost=lambda o: 1, showcase=True)
def gradcam(ctx: Context, layer, channels, relu, prefix_tokens):
    """Grad-CAM (Selvaraju et al.): ReLU(sum_k mean_ij(g_k) A_k) at ``layer`` (default: last spatial layer)."""
    _check_common(layer, relu, prefix_tokens)
    return cam_maps(ctx, "gradcam", layer, channels, relu, prefix_tokens)


@register("gradcampp", defaults=CAM_DEFAULTS, heatmap=CAM_HEATMAP, clean_pass=True, ui={"layer": LAYER},
          cost=lambda o: 1, showcase=True)
def gradcampp(ctx: Context, layer, channels, relu, prefix_tokens):
    """Grad-CAM++ (Chattopadhyay et al.), closed form alpha = g^2 / (2 g^2 + sum_ab(A) g^3)."""
    _check_common(layer, relu, prefix_tokens)
    return cam_maps(ctx, "gradcampp", layer, channels, relu, prefix_tokens)


@register("smoothgradcampp", defaults=SMOOTH_DEFAULTS, heatmap=CAM_HEATMAP, stochastic=True, clean_pass=True,
          ui={"layer": LAYER, "n_samples": N_SAMPLES, "noise_level": NOISE_LEVEL}, cost=lambda o: o["n_samples"],
          showcase=True)
def smoothgradcampp(ctx: Context, layer, channels, relu, prefix_tokens, n_samples, noise_level, stdev,
                    alpha_numerator):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with D1, D2, D3 = means of g, g^2, g^3 over
    ``n_samples`` noisy copies (sigma = ``noise_level`` x range, or ``stdev``); A from the clean input."""
    _check_common(layer, relu, prefix_tokens)
    positive_int("n_samples", n_samples)
    choice("alpha_numerator", alpha_numerator, ("d2", "d1"))
    sigma = noise_sigma(ctx, noise_level, stdev)
    return cam_maps(ctx, "smoothgradcampp", layer, channels, relu, prefix_tokens, n_samples=n_samples,
                    sigma=sigma, alpha_numerator=alpha_numerator)
