"""AUPC, region perturbation (Samek et al.; the "sensitivity" of SmoothTaylor, Goh et al. 2021).

``window`` x ``window`` regions are ranked by the mean of |saliency| over every window position;
``regions`` non-overlapping windows are taken greedily in that order. Region by region (for all
images of the batch at once) the window is replaced by uniform noise in pixel space, ``draws``
draws at a time; the class logit is averaged over the draws (the curve value) and the median
draw is kept before the next region (``median_draw``): the draw whose logit is the lower middle
value, the ``(draws - 1) // 2``-th in ascending order, the lowest draw index among equal logits.
The authors' code (garygsw/smooth-taylor, ``attribution/eval.py``, ``classify_perturbations``)
keeps the first draw with the smallest ``|logit - np.median(logits)|``: for an odd number of
draws that is the same draw; for an even number (their default, 50) the median is the mean of the
two middle logits, both equally close to it, and float rounding of that mean decides which one is
kept. Keeping the lower one makes the choice deterministic. The curve
``y_0 = f_c(x), y_1 .. y_R`` is divided by ``|f_c(x)|`` and integrated with Simpson's rule with
unit spacing per region (as in the authors' code; ``integration="simpson_avg"``: the scipy < 1.11
rule they ran, which differs only for an even number of points, i.e. an odd ``regions``). Lower is
better.

``saliency`` is a map or an ``Explanation`` (the map ``evaluate`` judges, ``scoring.metric_maps``;
with ``target=None`` its explained classes).

Noise is a pure function of ``(seed, image id, region)`` (``noise.STREAM_METRIC``); pass
``image_ids`` to make a batch's results independent of its composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core import noise
from ..core.checks import choice, integer
from ..models import get_preprocessing
from .scoring import (INTEGRATIONS, check_model, check_x, chunk_rows, guarded, integrate, metric_maps, metric_target,
                      positive_int, resolve_target, scored_rows)
from .registry import Judged, register


def select_windows(saliency: torch.Tensor, window: int, regions: int) -> list[list[tuple[int, int]]]:
    """Per image, up to ``regions`` top-left corners of non-overlapping windows, best mean |saliency| first."""
    b, h, w = saliency.shape
    if window > h or window > w:
        raise ValueError(f"window: {window} is larger than the map ({h} x {w})")
    avg = F.avg_pool2d(saliency.abs()[:, None], window, stride=1)[:, 0]
    ph, pw = avg.shape[-2:]
    order = torch.sort(avg.reshape(b, -1), dim=1, descending=True, stable=True).indices.cpu().numpy()
    out = []
    for i in range(b):
        taken: list[tuple[int, int]] = []
        blocked = np.zeros((ph, pw), dtype=bool)
        for p in order[i]:
            r, c = divmod(int(p), pw)
            if blocked[r, c]:
                continue
            taken.append((r, c))
            blocked[max(0, r - window + 1):r + window, max(0, c - window + 1):c + window] = True
            if len(taken) == regions:
                break
        out.append(taken)
    return out


def median_draw(scores: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` (A x D), the draw kept: the lowest index whose score equals the row's
    lower middle value (the ``(D - 1) // 2``-th in ascending order)."""
    s = scores.detach()
    mid = torch.sort(s, dim=1).values[:, (s.shape[1] - 1) // 2]
    return (s == mid[:, None]).to(torch.uint8).argmax(1)


def aupc(model, x: torch.Tensor, saliency, target: Any = None, window: int = 15,
         regions: int = 30, draws: int = 50, seed: int = 0, image_ids: Sequence[int] | None = None,
         return_curves: bool = False, batch_size: int | None = None, integration: str = "simpson"):
    """Area under the region-perturbation curve per image (lower is better).

    ``saliency``: a B x H x W or B x 1 x H x W map or an ``Explanation``; ``target``: class indices
    or ``"predicted"``, None (default): the explanation's classes, or the predicted ones for a map.
    ``integration``: ``"simpson"`` (scipy's current rule) or ``"simpson_avg"`` (scipy < 1.11's
    ``simps``, the authors'); they differ only for an even number of curve points.
    Returns a tensor of B values, or with ``return_curves`` a dict with ``auc`` and ``curves``
    (B x (regions + 1), normalised by |f_c(x)|).
    """
    check_model(model)
    x = check_x(x)
    s = metric_maps(saliency, x).heat
    target = metric_target(saliency, target)
    choice("integration", integration, INTEGRATIONS)
    positive_int("window", window)
    positive_int("regions", regions)
    positive_int("draws", draws)
    integer("seed", seed)
    b, c, h, w = x.shape
    ids = list(range(b)) if image_ids is None else [int(v) for v in image_ids]
    if len(ids) != b:
        raise ValueError(f"image_ids: expected {b} ids, got {len(ids)}")
    spec = get_preprocessing(model)
    wins = select_windows(s, window, regions)
    cur = x.clone()
    with guarded(model):
        classes, out = resolve_target(model, x, target, batch_size)
        y0 = out.gather(1, classes.view(-1, 1))[:, 0]
        curves = torch.full((b, regions + 1), float("nan"), dtype=torch.float32, device=x.device)
        curves[:, 0] = y0
        for r in range(regions):
            active = [i for i in range(b) if r < len(wins[i])]
            if not active:
                break
            patches = torch.stack([
                spec.normalize(noise.uniform((draws, c, window, window), seed, ids[i], r, stream=noise.STREAM_METRIC,
                                             device=x.device, dtype=x.dtype)) for i in active])  # A x D x C x w x w
            act = torch.tensor(active, device=x.device)

            def build(idx, act=act, patches=patches, r=r):
                a = torch.div(idx, draws, rounding_mode="floor").to(x.device)
                d = (idx % draws).to(x.device)
                img = act[a]
                inp = cur[img].clone()
                for k in range(inp.shape[0]):
                    rr, cc = wins[int(img[k])][r]
                    inp[k, :, rr:rr + window, cc:cc + window] = patches[a[k], d[k]]
                return inp, img

            total = len(active) * draws
            sc = scored_rows(model, total, build, classes, "logit", chunk_rows(x, total, batch_size))
            sc = sc.view(len(active), draws)
            kept = median_draw(sc).tolist()
            for a, i in enumerate(active):
                rr, cc = wins[i][r]
                cur[i, :, rr:rr + window, cc:cc + window] = patches[a, kept[a]]
                curves[i, r + 1] = sc[a].mean()
    norm = curves / y0.abs().clamp(min=1e-12)[:, None]
    auc = torch.stack([integrate(row[~torch.isnan(row)], integration) if (~torch.isnan(row)).sum() > 1
                       else torch.tensor(0.0, dtype=torch.float64) for row in norm.cpu()]).float()
    return {"auc": auc, "curves": norm} if return_curves else auc


def _judge(j: Judged, opts):
    r = aupc(j.model, j.x, j.heat, target=j.classes, seed=j.seed, image_ids=j.image_ids, return_curves=True,
             batch_size=j.batch_size, **opts)
    return r["auc"], None


register("aupc", fn=aupc, higher_is_better=False, kind="scalar", space="model", judge=_judge)

__all__ = ["aupc", "median_draw", "select_windows"]
