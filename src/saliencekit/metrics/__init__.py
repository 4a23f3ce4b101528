"""Faithfulness and quality metrics of the five papers (METHODS.md section 6), batched.

Every metric takes ``(model, x, saliency, target=..., **options)`` with ``x`` in model space
(except ``allegiance``, which takes pixels in [0, 1]) and ``saliency`` B x H x W or
B x 1 x H x W, and returns per-image values (a tensor of B, or a dict / ``CurveResult`` whose
``auc`` is that tensor when curves are asked for).
"""

from .allegiance import FRACTIONS, allegiance
from .aupc import aupc
from .confidence import average_drop, increase_in_confidence
from .deletion_insertion import CurveResult, deletion, insertion
from .localization import energy_pointing_game, pointing_game, relevance_mass, relevance_rank
from .sanity import sanity_check
from .total_variation import total_variation

__all__ = ["FRACTIONS", "CurveResult", "allegiance", "aupc", "average_drop", "deletion", "energy_pointing_game",
           "increase_in_confidence", "insertion", "pointing_game", "relevance_mass", "relevance_rank",
           "sanity_check", "total_variation"]
