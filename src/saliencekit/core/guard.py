"""How the library calls a user's model: guarded (eval mode, frozen weights, all restored) and with
its outputs unwrapped to a B x K tensor."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def model_guard(model: nn.Module):
    """Eval mode and frozen parameters for the call; everything restored afterwards."""
    # one traversal each; only what is not already in the wanted state is touched
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [(p, p.requires_grad) for p in params]
    grads = [(p, p.grad) for p in params]
    try:
        if any(t for _, t in modes):
            model.eval()
        for p, f in flags:
            if f:
                p.requires_grad_(False)
        yield model
    finally:
        for m, t in modes:
            if m.training != t:
                m.training = t
        for p, f in flags:
            if p.requires_grad != f:
                p.requires_grad_(f)
        for p, g in grads:
            if p.grad is not g:
                p.grad = g


def as_output(out) -> torch.Tensor:
    """The score tensor of a model's output (tuples and Hugging Face outputs unwrapped)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError("model: expected the model to return a tensor of scores (B x K)")


def forward_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs as a B x K tensor: one row of scores per input row, or a ``ValueError``."""
    out = as_output(model(x))
    if out.dim() != 2:
        raise ValueError(f"model: expected outputs of shape B x K, got {tuple(out.shape)}")
    if out.shape[0] != x.shape[0]:
        name = type(getattr(model, "_orig_mod", model)).__name__   # a compiled module's own class
        raise ValueError(f"model: {name} returned {out.shape[0]} rows of scores for an input batch of "
                         f"{x.shape[0]} images; expected one row per image")
    return out


__all__ = ["model_guard", "as_output", "forward_scores"]
