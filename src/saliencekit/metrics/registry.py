"""The metric registry: one entry per name that ``evaluate``, the web explorer and the CLI offer.

Each metric module registers its entries with :func:`register`: the public function, which
direction is better, whether it yields a curve or a scalar, whether it perturbs pixels in model
space or in [0, 1] pixel space, the options it fixes (``deletion_igos`` is ``deletion`` with
``protocol="igos"``), ``judge``: how it is applied to one evaluated map (:class:`Judged`), and
``bounds``: the range of its values, when it has one (the report keeps intervals inside it).
Adding a metric is one module in ``metrics/`` that registers itself here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn


@dataclass
class Judged:
    """One evaluated map and what a metric may need to judge it (a batch of images, usually one)."""

    model: nn.Module
    x: torch.Tensor                  # model space, B x C x H x W
    x01: torch.Tensor                # pixels in [0, 1]
    heat: torch.Tensor               # the map judged, B x H x W (scoring.explanation_maps: which map)
    tv: torch.Tensor                 # the map whose noise level is measured (signed channel sum)
    classes: torch.Tensor            # the explained class per image
    image_ids: List[int]             # keys of each image's noise
    seed: int
    batch_size: Optional[int] = None
    cells: Optional[torch.Tensor] = None   # B x h x w cells the I-GOS protocol ranks (I-GOS: 1 - mask), or None


# (per-image values B, curves B x P or None)
Outcome = Tuple[torch.Tensor, Optional[torch.Tensor]]


@dataclass
class MetricSpec:
    name: str
    fn: Callable
    higher_is_better: bool
    kind: str                        # "curve" | "scalar"
    space: str                       # "model" | "pixel": where the metric perturbs the image
    judge: Callable[[Judged, Dict[str, Any]], Outcome]
    options: Mapping[str, Any] = field(default_factory=dict)   # fixed options of this entry
    doc: str = ""
    default: bool = False            # in ``saliencekit evaluate``'s default set
    bounds: Optional[Tuple[float, float]] = None   # (low, high) every value lies in; None: unbounded

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


METRICS: Dict[str, MetricSpec] = {}
KINDS = ("curve", "scalar")
SPACES = ("model", "pixel")


def register(name: str, *, fn: Callable, higher_is_better: bool, kind: str, space: str,
             judge: Callable[[Judged, Dict[str, Any]], Outcome], options: Optional[Mapping[str, Any]] = None,
             doc: str = "", default: bool = False, bounds: Optional[Tuple[float, float]] = None) -> MetricSpec:
    """``bounds``: the (low, high) range every per-image value lies in (AUCs of probabilities in
    [0, 1], percentages in [0, 100]); the report keeps intervals inside it. None: unbounded."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if space not in SPACES:
        raise ValueError(f"space: expected one of {', '.join(SPACES)}, got {space!r}")
    if bounds is not None:
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds: expected (low, high) numbers or None, got {bounds!r}") from None
        if not lo < hi:
            raise ValueError(f"bounds: expected low < high, got {bounds!r}")
        bounds = (lo, hi)
    first = (fn.__doc__ or "").strip().splitlines()
    spec = MetricSpec(name, fn, bool(higher_is_better), kind, space, judge, dict(options or {}),
                      doc or (first[0] if first else ""), default, bounds)
    METRICS[name] = spec
    return spec


def defaults() -> List[str]:
    """The metrics ``saliencekit evaluate`` computes when none are given."""
    return [n for n, s in METRICS.items() if s.default]


def get(name) -> MetricSpec:
    if not isinstance(name, str) or name not in METRICS:
        close = difflib.get_close_matches(str(name), list(METRICS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"metrics: unknown metric {name!r}{hint}; available: {', '.join(METRICS)}")
    return METRICS[name]


__all__ = ["Judged", "MetricSpec", "METRICS", "defaults", "register", "get"]
