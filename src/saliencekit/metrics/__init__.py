"""Faithfulness and quality metrics of the five papers, batched, with a registry (``registry``).

Every metric takes ``(model, x, saliency, target=..., **options)`` with ``x`` in model space
(except ``allegiance``, which takes pixels in [0, 1]) and ``saliency`` B x H x W or
B x 1 x H x W or an ``Explanation`` (the map ``evaluate`` judges, ``scoring.explanation_maps``;
``target=None`` then means its explained classes), and returns per-image values (a tensor of B, or a dict / ``CurveResult`` whose
``auc`` is that tensor when curves are asked for).

Each module is importable under its own name; the functions whose names differ from their module's
are also exported here: ``deletion``, ``insertion``, ``average_drop``, ``increase_in_confidence``,
the pointing games and relevance measures. ``aupc``, ``total_variation`` and ``allegiance`` are
modules here; their functions are ``aupc.aupc``, ``total_variation.total_variation`` and
``allegiance.allegiance`` (``registry.get(name).fn`` reaches every registered metric).

Importing a metric module registers it: the built-in ones load in the order users see (``evaluate
--list``, the report), then any other module of this package, so adding a metric is adding one file.
"""

import importlib
import pkgutil

from . import deletion_insertion, aupc, total_variation, allegiance, confidence, localization  # noqa: F401,I001
from .confidence import average_drop, increase_in_confidence
from .deletion_insertion import CurveResult, deletion, insertion
from .localization import energy_pointing_game, pointing_game, relevance_mass, relevance_rank
from .registry import METRICS, Judged, MetricSpec, get, register

_BUILT_IN = ("deletion_insertion", "aupc", "total_variation", "allegiance", "confidence", "localization")
_HELPERS = ("registry", "scoring")


def load_modules() -> None:
    """Import (and so register) every metric module of this package; already imported ones are kept."""
    for name in sorted(m.name for m in pkgutil.iter_modules(__path__)
                       if m.name not in _BUILT_IN + _HELPERS and not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{name}")


load_modules()

__all__ = ["CurveResult", "METRICS", "Judged", "MetricSpec", "allegiance", "aupc", "average_drop", "deletion",
           "energy_pointing_game", "get", "increase_in_confidence", "insertion", "load_modules", "localization",
           "pointing_game",
           "register", "registry", "relevance_mass", "relevance_rank", "total_variation"]
