"""Average Drop % and Increase in Confidence % (Chattopadhyay et al., Grad-CAM++).

The explanation map is the saliency min-max normalised per image (to [0, 1]) times the image
in pixel space, normalised again for the model: ``E = normalize(s01 * x01)``. With ``Y`` the
softmax probability of the explained class on ``x`` and ``O`` on ``E``: per image
``drop = 100 * max(0, Y - O) / Y`` and ``increase = 100 * [O > Y]``; their means over images are
the paper's Average Drop % (lower is better) and Increase in Confidence % (higher is better).

``saliency`` is a map or an ``Explanation`` (the map ``evaluate`` judges, ``scoring.metric_maps``);
with ``target=None`` (default) an explanation's classes are judged, the predicted ones for a map.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.imageops import minmax
from ..models import get_preprocessing
from .scoring import check_model, check_x, guarded, metric_maps, metric_target, outputs, resolve_target, select
from .registry import Judged, register


def confidence_scores(model, x: torch.Tensor, saliency, target: Any = None,
                      batch_size: int | None = None):
    """(Y, O, classes): class probability on the image and on the explanation map."""
    check_model(model)
    x = check_x(x)
    s = metric_maps(saliency, x).heat
    target = metric_target(saliency, target)
    s = minmax(s.reshape(s.shape[0], -1)).view_as(s)
    spec = get_preprocessing(model)
    e = spec.normalize(s[:, None] * spec.denormalize(x))
    with guarded(model):
        classes, out = resolve_target(model, x, target, batch_size)
        y = select(out, classes, "softmax")
        o = select(outputs(model, e, batch_size), classes, "softmax")
    return y, o, classes


def average_drop(model, x: torch.Tensor, saliency, target: Any = None,
                 batch_size: int | None = None) -> torch.Tensor:
    """Per-image drop in % (B values; their mean is the Average Drop %; lower is better)."""
    y, o, _ = confidence_scores(model, x, saliency, target, batch_size)
    return 100.0 * (y - o).clamp(min=0) / y.clamp(min=1e-12)


def increase_in_confidence(model, x: torch.Tensor, saliency, target: Any = None,
                           batch_size: int | None = None) -> torch.Tensor:
    """Per-image 100 * [O > Y] (their mean is the Increase in Confidence %; higher is better)."""
    y, o, _ = confidence_scores(model, x, saliency, target, batch_size)
    return 100.0 * (o > y).float()


def _judge(fn):
    def judge(j: Judged, opts):
        return fn(j.model, j.x, j.heat, target=j.classes, batch_size=j.batch_size, **opts), None
    return judge


register("average_drop", fn=average_drop, higher_is_better=False, kind="scalar", space="model",
         judge=_judge(average_drop), default=True, bounds=(0, 100))
register("increase_in_confidence", fn=increase_in_confidence, higher_is_better=True, kind="scalar", space="model",
         judge=_judge(increase_in_confidence), default=True, bounds=(0, 100))

__all__ = ["average_drop", "increase_in_confidence", "confidence_scores"]
