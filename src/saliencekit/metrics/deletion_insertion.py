"""Deletion and insertion (Petsiuk et al., RISE) and the I-GOS variant (Qi et al.).

RISE protocol: pixels are ordered by the saliency map (descending, ties broken by position);
deletion moves ``step`` pixels per step from the image to a substrate (default 0 in model
space), insertion moves them from a start image (default: the image blurred with kernel 11,
sigma 5) to the image. The score is the softmax probability of the explained class. With
``n = ceil(H*W / step)`` steps the curve has ``n + 1`` points and
``AUC = (sum y - y_0/2 - y_n/2) / n``.

I-GOS protocol (``protocol="igos"``): the map is averaged down to ``mask_size`` x ``mask_size``
cells and ranked there; the top cells form a binary mask that is upsampled bilinearly
(``align_corners=True``) and mixes the image with the blurred image (kernel 51, sigma 50) used
as substrate for both curves. ``step`` still counts input pixels per step, rounded to whole cells.

All (image, step) inputs are built with tensor ops in chunks and scored under inference mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..core.imageops import gaussian_blur
from .scoring import (broadcast_image, check_model, check_saliency, check_x, chunk_rows, guarded, positive_int,
                      ranks, scored_rows, target_classes, trapezoid_auc)
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


def _igos_cells(step: int, hw: int, mask_size: int) -> int:
    return max(1, int(round(step * mask_size * mask_size / hw)))


def _curve(model, x, saliency, target, step, start, end, protocol, mask_size, batch_size):
    """Curve of the class probability while pixels move, in saliency order, from ``start`` to ``end``."""
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
            cells_total = mask_size * mask_size
            per = _igos_cells(step, h * w, mask_size)
            n = math.ceil(cells_total / per)
            small = F.adaptive_avg_pool2d(saliency[:, None], mask_size)[:, 0]
            rank = ranks(small.reshape(b, -1))
            counts = torch.clamp(torch.arange(n + 1, device=x.device) * per, max=cells_total)

            def build(idx):
                img = torch.div(idx, n + 1, rounding_mode="floor").to(x.device)
                k = (idx % (n + 1)).to(x.device)
                m = (rank[img] < counts[k][:, None]).to(x.dtype).view(-1, 1, mask_size, mask_size)
                up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True)
                return start[img] * (1 - up) + end[img] * up, img

        total = b * (n + 1)
        rows = chunk_rows(x, total, batch_size)
        y = scored_rows(model, total, build, classes, "softmax", rows).view(b, n + 1)
    fr = torch.clamp(torch.arange(n + 1, dtype=torch.float64) * (step if protocol == "rise" else per),
                     max=(h * w if protocol == "rise" else mask_size * mask_size))
    fr = fr / (h * w if protocol == "rise" else mask_size * mask_size)
    return CurveResult(auc=trapezoid_auc(y), curves=y, fractions=fr.float(), classes=classes)


def _prepare(model, x, saliency, step, protocol, mask_size):
    check_model(model)
    x = check_x(x)
    s = check_saliency(saliency, x)
    positive_int("step", step)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    positive_int("mask_size", mask_size)
    return x, s


def deletion(model, x: torch.Tensor, saliency: torch.Tensor, target: Any = "predicted", step: int = 224,
             substrate: Optional[torch.Tensor] = None, protocol: str = "rise", mask_size: int = 28,
             return_curves: bool = False, batch_size: Optional[int] = None):
    """Deletion AUC per image (lower is better): the class probability as the most salient pixels
    are replaced by ``substrate`` (RISE default: 0 in model space; I-GOS: the blurred image).

    ``x`` is in model space, ``saliency`` B x H x W or B x 1 x H x W. Returns a tensor of B AUCs,
    or a ``CurveResult`` (``auc``, ``curves``, ``fractions``, ``classes``) with ``return_curves``.
    """
    x, s = _prepare(model, x, saliency, step, protocol, mask_size)
    if substrate is None:
        if protocol == "rise":
            sub = torch.zeros_like(x)
        else:
            sub = gaussian_blur(x, *IGOS_BLUR)
    else:
        sub = broadcast_image(substrate, x, "substrate")
    res = _curve(model, x, s, target, step, x, sub, protocol, mask_size, batch_size)
    return res if return_curves else res.auc


def insertion(model, x: torch.Tensor, saliency: torch.Tensor, target: Any = "predicted", step: int = 224,
              substrate: Optional[torch.Tensor] = None, protocol: str = "rise", mask_size: int = 28,
              return_curves: bool = False, batch_size: Optional[int] = None):
    """Insertion AUC per image (higher is better): the class probability as the most salient pixels
    are restored into ``substrate``, the starting image (RISE default: ``x`` blurred with kernel 11,
    sigma 5; I-GOS: kernel 51, sigma 50). Blurs act per channel, so blurring in model space equals
    blurring the [0, 1] image and normalising. Same return convention as ``deletion``.
    """
    x, s = _prepare(model, x, saliency, step, protocol, mask_size)
    if substrate is None:
        sub = gaussian_blur(x, *(RISE_BLUR if protocol == "rise" else IGOS_BLUR))
    else:
        sub = broadcast_image(substrate, x, "substrate")
    res = _curve(model, x, s, target, step, sub, x, protocol, mask_size, batch_size)
    return res if return_curves else res.auc


def _judge(fn, protocol):
    def judge(j: Judged, opts):
        r = fn(j.model, j.x, j.heat, target=j.classes, return_curves=True, batch_size=j.batch_size,
               **dict(opts, **({"protocol": protocol} if protocol != "rise" else {})))
        return r.auc, r.curves
    return judge


register("deletion", fn=deletion, higher_is_better=False, kind="curve", space="model",
         judge=_judge(deletion, "rise"), default=True, bounds=(0, 1))
register("insertion", fn=insertion, higher_is_better=True, kind="curve", space="model",
         judge=_judge(insertion, "rise"), default=True, bounds=(0, 1))
register("deletion_igos", fn=deletion, higher_is_better=False, kind="curve", space="model",
         judge=_judge(deletion, "igos"), options={"protocol": "igos"}, bounds=(0, 1),
         doc="Deletion AUC, I-GOS protocol (blurred substrate, ranked mask cells).")
register("insertion_igos", fn=insertion, higher_is_better=True, kind="curve", space="model",
         judge=_judge(insertion, "igos"), options={"protocol": "igos"}, bounds=(0, 1),
         doc="Insertion AUC, I-GOS protocol (blurred start image, ranked mask cells).")

__all__ = ["deletion", "insertion", "CurveResult", "PROTOCOLS"]
