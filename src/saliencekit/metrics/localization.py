"""Localisation metrics on data with ground-truth masks (e.g. ``saliencekit.data.synthetic_shapes``).

- ``pointing_game``: a hit when the map's maximum (first in row-major order on ties) lies
  within ``tolerance`` pixels (Euclidean) of the object mask (Zhang et al.; 15 px).
- ``energy_pointing_game``: the share of the map's energy inside the mask, after min-max
  normalisation of the map (Score-CAM's energy-based pointing game, with the mask in place of
  the bounding box).
- ``relevance_mass``: the share of *positive* relevance inside the mask, on the map as given
  (Arras et al., relevance mass accuracy); ``relevance_rank``: the share of the top-K pixels
  inside the mask, K = mask size (relevance rank accuracy).
All return one value per image (NaN for an empty mask). ``saliency`` is a map or an
``Explanation`` (the map ``evaluate`` judges, ``scoring.metric_maps``, at the masks' size).
"""

from __future__ import annotations

import torch

from ..core.imageops import minmax
from .scoring import metric_maps


def _saliency(saliency, masks) -> torch.Tensor:
    """The B x H x W map judged: a tensor as given, an Explanation's map at the masks' size."""
    hw = tuple(masks.shape[-2:]) if isinstance(masks, torch.Tensor) and masks.dim() >= 2 else None
    return metric_maps(saliency, hw=hw).heat


def _masks(masks, s: torch.Tensor) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks: expected a tensor B x H x W, got {type(masks).__name__}")
    m = masks.detach()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.shape != s.shape:
        raise ValueError(f"masks: expected the saliency's shape {tuple(s.shape)}, got {tuple(masks.shape)}")
    return (m > 0.5 if m.dtype.is_floating_point else m.bool()).to(s.device)


def pointing_game(saliency, masks: torch.Tensor, tolerance: float = 15) -> torch.Tensor:
    """1.0 for a hit, 0.0 for a miss, per image."""
    s = _saliency(saliency, masks)
    m = _masks(masks, s)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"tolerance: expected a non-negative number, got {tolerance!r}")
    b, h, w = s.shape
    arg = s.reshape(b, -1).argmax(1)
    py, px = (arg // w).float(), (arg % w).float()
    ys = torch.arange(h, device=s.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=s.device, dtype=torch.float32).view(1, 1, w)
    d2 = (ys - py.view(b, 1, 1)) ** 2 + (xs - px.view(b, 1, 1)) ** 2
    d2 = torch.where(m, d2, torch.full_like(d2, float("inf")))
    hit = (d2.reshape(b, -1).amin(1) <= float(tolerance) ** 2).float()
    return torch.where(m.reshape(b, -1).any(1), hit, torch.full_like(hit, float("nan")))


def _share_inside(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    b = v.shape[0]
    tot = v.reshape(b, -1).sum(1)
    ins = (v * m).reshape(b, -1).sum(1)
    out = torch.where(tot > 0, ins / torch.where(tot > 0, tot, torch.ones_like(tot)), torch.zeros_like(tot))
    return torch.where(m.reshape(b, -1).any(1), out, torch.full_like(out, float("nan")))


def energy_pointing_game(saliency, masks: torch.Tensor) -> torch.Tensor:
    """Share of the min-max normalised map's energy inside the mask, per image."""
    s = _saliency(saliency, masks)
    m = _masks(masks, s)
    b = s.shape[0]
    n = minmax(s.reshape(b, -1)).view_as(s)
    return _share_inside(n, m)


def relevance_mass(saliency, masks: torch.Tensor) -> torch.Tensor:
    """Share of positive relevance inside the mask (relevance mass accuracy), per image."""
    s = _saliency(saliency, masks)
    return _share_inside(s.clamp(min=0), _masks(masks, s))


def relevance_rank(saliency, masks: torch.Tensor) -> torch.Tensor:
    """Share of the K most relevant pixels (K = mask size) inside the mask, per image."""
    s = _saliency(saliency, masks)
    m = _masks(masks, s)
    b = s.shape[0]
    order = torch.sort(s.reshape(b, -1), dim=1, descending=True, stable=True).indices
    k = m.reshape(b, -1).sum(1)
    inside = m.reshape(b, -1).gather(1, order).float()
    pos = torch.arange(inside.shape[1], device=s.device).view(1, -1)
    hits = (inside * (pos < k.view(-1, 1))).sum(1)
    out = hits / k.clamp(min=1).float()
    return torch.where(k > 0, out, torch.full_like(out, float("nan")))


__all__ = ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"]
