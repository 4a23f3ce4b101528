"""Multi-scale average total variation (SmoothTaylor's noise measure, Goh et al. 2021).

For each map: a Gaussian pyramid (``skimage.transform.pyramid_gaussian``, downscale 1.5, as in
the authors' code) down to the last level whose sides are both >= ``min_size`` (30 px); at each
level take |map|, cap it at the 99th percentile, min-max normalise, and compute the L1 total
variation (sum of absolute vertical and horizontal neighbour differences) divided by the
level's H * W. AUTVC = Simpson's rule over the levels (unit spacing). Lower is less noisy.

Integration: a 224-pixel map gives 6 levels (224, 150, 100, 67, 45, 30), an even number of points,
where Simpson's rule needs a choice for the odd interval. ``integration="simpson"`` (default) is
today's ``scipy.integrate.simpson`` (scipy >= 1.11: Simpson on the first N - 2 intervals plus
Cartwright's correction for the last one); ``integration="simpson_avg"`` reproduces the authors'
numbers (garygsw/smooth-taylor ``attribution/eval.py``: ``scipy.integrate.simps(atvs, dx=1)`` of
scipy < 1.11, default ``even="avg"``): the mean of (Simpson on the first N - 1 points + trapezoid
on the last interval) and (trapezoid on the first interval + Simpson on the last N - 1 points),
``scoring.simpson_avg``. For an odd number of levels both are plain composite Simpson.

``saliency`` is a map or an ``Explanation``: its ``tv`` map (``scoring.explanation_maps``), the
signed channel sum of the raw attributions for input-space methods (as the authors measure), the
heatmap otherwise; the map ``evaluate``'s ``autvc`` measures.
"""

from __future__ import annotations

import torch
from skimage.transform import pyramid_gaussian

from ..core.checks import choice
from ..core.imageops import minmax
from .scoring import INTEGRATIONS, integrate, metric_maps
from .registry import Judged, register


def level_atv(m: torch.Tensor, clip: float | None = 99.0) -> torch.Tensor:
    """ATV of one B x H x W level (|.|, percentile cap, min-max normalisation, L1 TV / (H W))."""
    b, h, w = m.shape
    a = m.abs().reshape(b, -1).double()
    if clip is not None:
        cap = torch.quantile(a, clip / 100.0, dim=1, keepdim=True)
        a = torch.minimum(a, cap)
    a = minmax(a).view(b, h, w)
    tv = (a[:, 1:, :] - a[:, :-1, :]).abs().sum((1, 2)) + (a[:, :, 1:] - a[:, :, :-1]).abs().sum((1, 2))
    return tv / (h * w)


def pyramid(saliency: torch.Tensor, downscale: float = 1.5, min_size: int = 30) -> list[torch.Tensor]:
    """Gaussian pyramid levels (each B x h x w, float64), stopping before a side drops below ``min_size``."""
    arr = saliency.detach().double().cpu().numpy()
    levels = []
    per_image = [list(pyramid_gaussian(a, downscale=downscale, channel_axis=None)) for a in arr]
    for k in range(len(per_image[0])):
        lev = per_image[0][k]
        if lev.shape[0] < min_size or lev.shape[1] < min_size:
            break
        levels.append(torch.stack([torch.from_numpy(p[k].copy()) for p in per_image]))
    return levels


def total_variation(saliency, downscale: float = 1.5, min_size: int = 30, clip: float | None = 99.0,
                    integration: str = "simpson"):
    """Per-level ATV (B x L) and AUTVC (B) of B x H x W (or B x 1 x H x W) maps or of an ``Explanation``.

    ``integration``: ``"simpson"`` (today's scipy) or ``"simpson_avg"`` (scipy < 1.11's ``simps``,
    the SmoothTaylor authors' numbers; see the module docstring).
    Returns a dict ``{"atv": B x L, "autvc": B}`` (``auc`` is an alias of ``autvc``).
    """
    s = metric_maps(saliency).tv
    choice("integration", integration, INTEGRATIONS)
    if isinstance(downscale, bool) or not isinstance(downscale, (int, float)) or not downscale > 1:
        raise ValueError(f"downscale: expected a number > 1, got {downscale!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 2:
        raise ValueError(f"min_size: expected an int >= 2, got {min_size!r}")
    if min(s.shape[-2:]) < min_size:
        raise ValueError(f"saliency: maps of {tuple(s.shape[-2:])} are smaller than min_size={min_size}")
    levels = pyramid(s, float(downscale), min_size)
    atv = torch.stack([level_atv(lv, clip) for lv in levels], 1)
    autvc = integrate(atv, integration) if atv.shape[1] > 1 else atv[:, 0].clone()
    return {"atv": atv.float(), "autvc": autvc.float(), "auc": autvc.float()}


def _judge(j: Judged, opts):
    return total_variation(j.tv, **opts)["autvc"], None


register("autvc", fn=total_variation, higher_is_better=False, kind="scalar", space="model", judge=_judge,
         doc="Area under the multi-scale total-variation curve (noise level of the map; lower is smoother).", default=True)

__all__ = ["total_variation", "level_atv", "pyramid"]
