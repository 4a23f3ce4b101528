"""Allegiance (Llorente et al. 2023): does the prediction survive occluding the top of the map?

Inputs in pixel space [0, 1]. For each fraction p the occluded pixels are counted as in the
authors' code (OscarLlorente/positive_active_saliency_maps, ``src/explain/main.py``): with the N
map values sorted in descending order, the threshold is the value at index ``k = round(p * N)``
(Python's ``round`` of the float ``p * N``, which rounds halves to even, as numpy's does), and the
pixels *strictly above* it and non-zero are occluded. With distinct values that is exactly the k
highest pixels; pixels tied with the threshold value are all kept (so ties can occlude fewer than
k), and zero pixels are never occluded (so a map with fewer than k non-zero pixels occludes only
those). ``p = 1`` (index N, outside the authors' fractions) occludes every non-zero pixel. The
occluded pixels are set to 0 (``mode="black"``, for original / positive / active maps) or 1
(``mode="white"``, for negative / inactive maps); the image is normalised with the model's
preprocessing (``models.get_preprocessing``) and classified. An image is *allegiant* at p when its
top-1 class is unchanged. The per-image AUC is the trapezoid over the fractions; its mean over
images is the paper's AUC of the allegiance curve (share of unchanged images). Lower is better.

``saliency`` is a map or an ``Explanation`` (the map ``evaluate`` judges, ``scoring.metric_maps``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import get_preprocessing
from .scoring import check_model, check_x, chunk_rows, guarded, metric_maps, outputs
from .registry import Judged, register

FRACTIONS = (0.0, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODES = ("black", "white")


def occlusion_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """The authors' index per fraction: ``round(p * n)`` (Python's round, halves to even)."""
    return [round(float(p) * n) for p in fractions]


def occlusion_masks(saliency: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """B x P x H x W booleans: per fraction p, the pixels strictly above the descending-sorted map's
    value at index ``round(p * N)`` and non-zero (the authors' rule; see the module docstring)."""
    b = saliency.shape[0]
    flat = saliency.reshape(b, -1)
    n = flat.shape[1]
    srt = torch.sort(flat, dim=1, descending=True).values
    low = torch.full((b, 1), float("-inf"), dtype=srt.dtype, device=srt.device)
    srt = torch.cat([srt, low], 1)  # index N (p = 1): every value is above it
    counts = occlusion_counts(n, fractions)
    if any(not 0 <= k <= n for k in counts):
        raise ValueError(f"fractions: expected values in [0, 1], got {list(fractions)!r}")
    idx = torch.tensor(counts, dtype=torch.long, device=flat.device)
    thr = srt[:, idx]  # B x P
    m = (flat[:, None, :] > thr[:, :, None]) & (flat[:, None, :] != 0)
    return m.view((b, len(fractions)) + tuple(saliency.shape[1:]))


def allegiance(model, x01: torch.Tensor, saliency, mode: str = "black",
               fractions: Sequence[float] = FRACTIONS, return_curves: bool = False,
               batch_size: int | None = None):
    """Per-image allegiance AUC (lower is better); ``x01`` are pixels in [0, 1], ``saliency`` a map
    (B x H x W or B x 1 x H x W) or an ``Explanation``.

    With ``return_curves``: a dict with ``auc`` (B), ``curves`` (B x P, 1.0 = prediction kept)
    and ``fractions``.
    """
    check_model(model)
    x01 = check_x(x01, "x01")
    if x01.min() < 0 or x01.max() > 1:
        raise ValueError("x01: expected pixels in [0, 1] (allegiance occludes in pixel space); "
                         "denormalise model-space inputs first")
    s = metric_maps(saliency, x01).heat
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

__all__ = ["allegiance", "occlusion_counts", "occlusion_masks", "FRACTIONS", "MODES"]
