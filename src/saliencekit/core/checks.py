"""Argument validation shared by every public function: each error names the argument and what
was expected, so a user never sees a stack trace from deep inside torch."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn


def positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected a positive int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v}")
    return v


def integer(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return v


def optional_positive_int(name: str, v) -> Optional[int]:
    """``None`` or a positive int (chunk sizes, limits)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected a positive int or None, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected a positive int or None, got {v}")
    return v


def optional_nonneg_int(name: str, v) -> Optional[int]:
    """``None`` or an int >= 0 (token counts, offsets)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ValueError(f"{name}: expected a non-negative int or None, got {v!r}")
    return v


def nonneg_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a non-negative number, got {type(v).__name__}")
    if not (v >= 0) or v != v or v == float("inf"):
        raise ValueError(f"{name}: expected a finite non-negative number, got {v}")
    return float(v)


def positive_float(name: str, v) -> float:
    v = nonneg_float(name, v)
    if v <= 0:
        raise ValueError(f"{name}: expected a positive number, got {v}")
    return v


def boolean(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {type(v).__name__}")
    return v


def choice(name: str, v, options: Iterable[Any]):
    options = tuple(options)
    if v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(str, options))}, got {v!r}")
    return v


def model(m, name: str = "model") -> nn.Module:
    if not isinstance(m, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(m).__name__}")
    return m


def image_batch(x, name: str = "x") -> torch.Tensor:
    """A non-empty, finite, floating-point B x C x H x W tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a float tensor of shape B x C x H x W, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D batch B x C x H x W, got {x.dim()}-D shape {tuple(x.shape)} "
                         f"(add a batch dimension with x[None])")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor in model space, got dtype {x.dtype} "
                        f"(use saliencekit.load_images to normalise images)")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


__all__ = ["integer", "positive_int", "optional_positive_int", "optional_nonneg_int", "nonneg_float", "positive_float", "boolean", "choice", "model",
           "image_batch"]
