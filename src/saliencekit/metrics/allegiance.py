"""Allegiance (Llorente et al. 2023): does the prediction survive occluding the top of the map?

Inputs in pixel space [0, 1]. For each fraction p the pixels strictly above the map's
(1 - p)-quantile and non-zero are set to 0 (``mode="black"``, for original / positive / active
maps) or 1 (``mode="white"``, for negative / inactive maps); the image is normalised with the
model's preprocessing (``models.get_preprocessing``) and classified. An image is *allegiant* at p
when its top-1 class is unchanged. The per-image AUC is the trapezoid over the fractions; its
mean over images is the paper's AUC of the allegiance curve (share of unchanged images).
Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import get_preprocessing
from .scoring import check_model, check_saliency, check_x, chunk_rows, guarded, outputs
from .registry import Judged, register

FRACTIONS = (0.0, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODES = ("black", "white")


def occlusion_masks(saliency: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """B x P x H x W booleans: pixels strictly above the (1 - p)-quantile and non-zero."""
    b = saliency.shape[0]
    flat = saliency.reshape(b, -1).double()
    q = torch.tensor([1.0 - p for p in fractions], dtype=torch.float64, device=flat.device)
    thr = torch.quantile(flat, q, dim=1).T  # B x P
    m = (flat[:, None, :] > thr[:, :, None]) & (flat[:, None, :] != 0)
    return m.view((b, len(fractions)) + tuple(saliency.shape[1:]))


def allegiance(model, x01: torch.Tensor, saliency: torch.Tensor, mode: str = "black",
               fractions: Sequence[float] = FRACTIONS, return_curves: bool = False,
               batch_size: int | None = None):
    """Per-image allegiance AUC (lower is better); ``x01`` are pixels in [0, 1].

    With ``return_curves``: a dict with ``auc`` (B), ``curves`` (B x P, 1.0 = prediction kept)
    and ``fractions``.
    """
    check_model(model)
    x01 = check_x(x01, "x01")
    if x01.min() < 0 or x01.max() > 1:
        raise ValueError("x01: expected pixels in [0, 1] (allegiance occludes in pixel space); "
                         "denormalise model-space inputs first")
    s = check_saliency(saliency, x01)
    if mode not in MODES:
        raise ValueError(f"mode: expected 'black' or 'white', got {mode!r}")
    fr = [float(p) for p in fractions]
    if not fr or any(not (0.0 <= p <= 1.0) for p in fr) or sorted(fr) != fr:
        raise ValueError(f"fractions: expected increasing values in [0, 1], got {list(fractions)!r}")
    spec = get_preprocessing(model)
    b, c, h, w = x01.shape
    p = len(fr)
    masks = occlusion_masks(s, fr)  # B x P x H x W
    fill = 0.0 if mode == "black" else 1.0
    with guarded(model):
        pred = outputs(model, spec.normalize(x01), batch_size).argmax(1)
        total = b * p
        rows = chunk_rows(x01, total, batch_size)
        kept = []
        for st in range(0, total, rows):
            idx = torch.arange(st, min(total, st + rows), device=x01.device)
            img, k = idx // p, idx % p
            m = masks[img, k][:, None]
            inp = torch.where(m, torch.full_like(x01[img], fill), x01[img])
            o = outputs(model, spec.normalize(inp), rows)
            kept.append((o.argmax(1) == pred[img]).float())
        curves = torch.cat(kept).view(b, p)
    xs = torch.tensor(fr, dtype=torch.float32, device=curves.device)
    auc = torch.trapezoid(curves, xs, dim=1) if p > 1 else curves[:, 0].clone()
    return {"auc": auc, "curves": curves, "fractions": xs} if return_curves else auc


def _judge(j: Judged, opts):
    return allegiance(j.model, j.x01, j.heat, batch_size=j.batch_size, **opts), None


register("allegiance", fn=allegiance, higher_is_better=False, kind="scalar", space="pixel", judge=_judge, default=True,
         bounds=(0, 1))

__all__ = ["allegiance", "occlusion_masks", "FRACTIONS", "MODES"]
