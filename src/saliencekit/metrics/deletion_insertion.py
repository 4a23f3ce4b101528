"""Deletion and insertion (Petsiuk et al., RISE) and the I-GOS variant (Qi et al.).

RISE protocol: pixels are ordered by the saliency map (descending, ties broken by position);
deletion moves ``step`` pixels per step from the image to a substrate (default 0 in model
space), insertion moves them from a start image (default: the image blurred with kernel 11,
sigma 5) to the image. The score is the softmax probability of the explained class. With
``n = ceil(H*W / step)`` steps the curve has ``n + 1`` points and
``AUC = (sum y - y_0/2 - y_n/2) / n``.

I-GOS protocol (``protocol="igos"``): the cells of an ``h x w`` grid are ranked (descending, ties
broken by position); the top cells form a binary mask that is upsampled bilinearly
(``align_corners=True``) and mixes the image with the blurred image (kernel 51, sigma 50) used
as substrate for both curves. ``step`` still counts input pixels per step, rounded to whole cells.
The cells: for an I-GOS ``Explanation``, ``1 - mask`` of the mask I-GOS optimised, at the mask's own
resolution (``mask_size`` is then ignored), so the mask's own order is used with no bilinear round
trip; for any other map, the map averaged down to ``mask_size`` cells (an int or an ``(h, w)`` pair).

``saliency`` is a map (B x H x W or B x 1 x H x W) or an ``Explanation`` (``scoring.metric_maps``:
the map ``evaluate`` judges); with an ``Explanation`` and ``target=None`` the explained classes are
scored. All (image, step) inputs are built with tensor ops in chunks and scored under inference mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..core.imageops import gaussian_blur
from .scoring import (broadcast_image, check_model, check_saliency, check_x, chunk_rows, guarded, metric_maps, metric_target,
                      positive_int, ranks, scored_rows, target_classes, trapezoid_auc)
from .registry import Judged, register

PROTOCOLS = ("rise", "igos")
RISE_BLUR = (11, 5.0)
IGOS_BLUR = (51, 50.0)


@dataclass
class CurveResult:
    """Per-image AUC plus the curves: ``curves`` is B x (n + 1), ``fractions`` the x axis (n + 1)."""

    auc: torch.Tensor
    curves: torch.Tensor
    fractions: torch.Tensor
    classes: torch.Tensor

    def __getitem__(self, key: str):
        return getattr(self, key)


def _igos_cells(step: int, hw: int, cells_total: int) -> int:
    return max(1, int(round(step * cells_total / hw)))


def _mask_hw(mask_size) -> tuple[int, int]:
    """``mask_size`` (an int or an (h, w) pair of ints) -> (h, w)."""
    sides = tuple(mask_size) if isinstance(mask_size, (tuple, list)) else (mask_size, mask_size)
    if len(sides) != 2:
        raise ValueError(f"mask_size: expected an int or an (h, w) pair, got {mask_size!r}")
    for v in sides:
        positive_int("mask_size", v)
    return int(sides[0]), int(sides[1])


def _curve(model, x, saliency, cells, target, step, start, end, protocol, mask_size, batch_size):
    """Curve of the class probability while pixels move, in saliency order, from ``start`` to ``end``.
    ``cells`` (B x h x w, I-GOS protocol): the cells to rank as they are; None: ``saliency`` averaged
    down to ``mask_size``."""
    b, _, h, w = x.shape
    with guarded(model):
        classes = target_classes(model, x, target, batch_size)
        if protocol == "rise":
            hw = h * w
            n = math.ceil(hw / step)
            rank = ranks(saliency.reshape(b, -1))
            counts = torch.clamp(torch.arange(n + 1, device=x.device) * step, max=hw)

            def build(idx):
                img = torch.div(idx, n + 1, rounding_mode="floor").to(x.device)
                k = (idx % (n + 1)).to(x.device)
                moved = (rank[img] < counts[k][:, None]).view(-1, 1, h, w)
                return torch.where(moved, end[img], start[img]), img
        else:
            if cells is not None:
                small = cells
            else:
                small = F.adaptive_avg_pool2d(saliency[:, None], mask_size)[:, 0]
            mh, mw = small.shape[-2:]
            cells_total = mh * mw
            per = _igos_cells(step, h * w, cells_total)
            n = math.ceil(cells_total / per)
            rank = ranks(small.reshape(b, -1))
            counts = torch.clamp(torch.arange(n + 1, device=x.device) * per, max=cells_total)

            def build(idx):
                img = torch.div(idx, n + 1, rounding_mode="floor").to(x.device)
                k = (idx % (n + 1)).to(x.device)
                m = (rank[img] < counts[k][:, None]).to(x.dtype).view(-1, 1, mh, mw)
                up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True)
                return start[img] * (1 - up) + end[img] * up, img

        total = b * (n + 1)
        rows = chunk_rows(x, total, batch_size)
        y = scored_rows(model, total, build, classes, "softmax", rows).view(b, n + 1)
    hw_total = h * w if protocol == "rise" else cells_total
    fr = torch.clamp(torch.arange(n + 1, dtype=torch.float64) * (step if protocol == "rise" else per), max=hw_total)
    fr = fr / hw_total
    return CurveResult(auc=trapezoid_auc(y), curves=y, fractions=fr.float(), classes=classes)


def _run(kind: str, model, x, heat, cells, target: Any = "predicted", step: int = 224,
         substrate: Optional[torch.Tensor] = None, protocol: str = "rise", mask_size=28,
         return_curves: bool = False, batch_size: Optional[int] = None):
    """Deletion (``kind="deletion"``) or insertion of a checked B x H x W ``heat`` (and, for the I-GOS
    protocol, the B x h x w ``cells`` to rank as they are, or None)."""
    positive_int("step", step)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    mask_hw = _mask_hw(mask_size)
    if substrate is not None:
        sub = broadcast_image(substrate, x, "substrate")
    elif kind == "deletion":
        sub = torch.zeros_like(x) if protocol == "rise" else gaussian_blur(x, *IGOS_BLUR)
    else:
        sub = gaussian_blur(x, *(RISE_BLUR if protocol == "rise" else IGOS_BLUR))
    start, end = (x, sub) if kind == "deletion" else (sub, x)
    res = _curve(model, x, heat, cells if protocol == "igos" else None, target, step, start, end, protocol,
                 mask_hw, batch_size)
    return res if return_curves else res.auc


def _public(kind, model, x, saliency, target, **options):
    check_model(model)
    x = check_x(x)
    maps = metric_maps(saliency, x)
    return _run(kind, model, x, maps.heat, maps.cells, metric_target(saliency, target), **options)


def deletion(model, x: torch.Tensor, saliency, target: Any = None, step: int = 224,
             substrate: Optional[torch.Tensor] = None, protocol: str = "rise", mask_size=28,
             return_curves: bool = False, batch_size: Optional[int] = None):
    """Deletion AUC per image (lower is better): the class probability as the most salient pixels
    are replaced by ``substrate`` (RISE default: 0 in model space; I-GOS: the blurred image).

    ``x`` is in model space; ``saliency`` a B x H x W or B x 1 x H x W map or an ``Explanation``
    (its map as ``evaluate`` judges it; with ``protocol="igos"`` an I-GOS explanation's mask cells).
    ``target``: class indices or ``"predicted"``; None (default): the explanation's classes, or the
    predicted ones for a plain map. ``mask_size``: an int or an (h, w) pair (I-GOS protocol).
    Returns a tensor of B AUCs, or a ``CurveResult`` (``auc``, ``curves``, ``fractions``,
    ``classes``) with ``return_curves``.
    """
    return _public("deletion", model, x, saliency, target, step=step, substrate=substrate, protocol=protocol,
                   mask_size=mask_size, return_curves=return_curves, batch_size=batch_size)


def insertion(model, x: torch.Tensor, saliency, target: Any = None, step: int = 224,
              substrate: Optional[torch.Tensor] = None, protocol: str = "rise", mask_size=28,
              return_curves: bool = False, batch_size: Optional[int] = None):
    """Insertion AUC per image (higher is better): the class probability as the most salient pixels
    are restored into ``substrate``, the starting image (RISE default: ``x`` blurred with kernel 11,
    sigma 5; I-GOS: kernel 51, sigma 50). Blurs act per channel, so blurring in model space equals
    blurring the [0, 1] image and normalising. Same arguments and return convention as ``deletion``.
    """
    return _public("insertion", model, x, saliency, target, step=step, substrate=substrate, protocol=protocol,
                   mask_size=mask_size, return_curves=return_curves, batch_size=batch_size)


def _judge(kind, protocol):
    def judge(j: Judged, opts):
        o = dict(opts, **({"protocol": protocol} if protocol != "rise" else {}))
        r = _run(kind, j.model, j.x, check_saliency(j.heat, j.x), j.cells, target=j.classes, return_curves=True,
                 batch_size=j.batch_size, **o)
        return r.auc, r.curves
    return judge


register("deletion", fn=deletion, higher_is_better=False, kind="curve", space="model",
         judge=_judge("deletion", "rise"), default=True, bounds=(0, 1))
register("insertion", fn=insertion, higher_is_better=True, kind="curve", space="model",
         judge=_judge("insertion", "rise"), default=True, bounds=(0, 1))
register("deletion_igos", fn=deletion, higher_is_better=False, kind="curve", space="model",
         judge=_judge("deletion", "igos"), options={"protocol": "igos"}, bounds=(0, 1),
         doc="Deletion AUC, I-GOS protocol (blurred substrate, ranked mask cells; I-GOS: its own mask).")
register("insertion_igos", fn=insertion, higher_is_better=True, kind="curve", space="model",
         judge=_judge("insertion", "igos"), options={"protocol": "igos"}, bounds=(0, 1),
         doc="Insertion AUC, I-GOS protocol (blurred start image, ranked mask cells; I-GOS: its own mask).")

__all__ = ["deletion", "insertion", "CurveResult", "PROTOCOLS"]
