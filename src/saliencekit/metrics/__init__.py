"""Faithfulness and quality metrics of the five papers (METHODS.md section 6), batched.

Every metric takes ``(model, x, saliency, target=..., **options)`` with ``x`` in model space
(except ``allegiance``, which takes pixels in [0, 1]) and ``saliency`` B x H x W or
B x 1 x H x W, and returns per-image values.
"""

from .deletion_insertion import CurveResult, deletion, insertion

__all__ = ["deletion", "insertion", "CurveResult"]
