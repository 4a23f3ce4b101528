"""The batched gradient engine.

Every gradient method evaluates the gradient of chosen scores at many points and reduces. The
points are indexed by ``(image i, sample j, step s)``: ``j`` is a noise sample or a baseline
draw, ``s`` a step along an integration path. The engine walks those triples in order, in
chunks of ``batch_size`` rows; for each chunk it runs one forward pass and one
``torch.autograd.grad`` of the summed selected scores with respect to the gradient *site* (the
input, or a captured layer output). Per sample it forms ``G_ij = sum_s w_s * grad_ijs`` and hands
it to ``on_sample(i, j, G_ij, point)``, where the method folds it into running sums. Memory is
therefore O(chunk) whatever the number of samples.

Rows are folded in a fixed order (one add per row, in (i, j, s) order), and noise is a pure
function of (seed, i, j), so results are bit-identical for any chunk size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .hooks import capture

# Rows of a 224x224 RGB image per chunk on CPU (measured: small chunks are fastest there).
_CPU_ELEMENTS_PER_CHUNK = 3 * 224 * 224
_CUDA_DEFAULT_ROWS = 64


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else (fp32/fp16/bf16) sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_batch_size(x: torch.Tensor, total_rows: int) -> int:
    """A simple safe chunk size; the performance work refines it with calibration."""
    per_row = max(1, x[0].numel())
    if x.device.type == "cuda":
        rows = _CUDA_DEFAULT_ROWS
    else:
        rows = max(1, _CPU_ELEMENTS_PER_CHUNK // per_row)
        rows = min(rows, 64)
    return max(1, min(rows, total_rows))


@contextlib.contextmanager
def model_guard(model: nn.Module):
    """Eval mode and frozen parameters for the call; everything restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)
        for p, g in grads:
            p.grad = g


@dataclass
class Plan:
    """What to evaluate: ``n_images x n_samples x n_steps`` points."""

    n_images: int
    n_samples: int
    make_points: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    n_steps: int = 1
    step_weights: Optional[Sequence[float]] = None


def _as_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError("model: expected the model to return a tensor of scores (B x K)")


def forward_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs as a B x K tensor (tuples / HF outputs unwrapped)."""
    out = _as_output(model(x))
    if out.dim() != 2:
        raise ValueError(f"model: expected outputs of shape B x K, got {tuple(out.shape)}")
    return out


def run(model: nn.Module, plan: Plan, score, on_sample: Callable, *, batch_size: int,
        site: Optional[nn.Module] = None, progress: Optional[Callable[[int], None]] = None) -> None:
    """Evaluate gradients for every point of ``plan`` and hand each sample's sum to ``on_sample``.

    ``score.rows(outputs, image_index, captures)`` returns one score per row; ``score.layers``
    lists modules whose outputs the score needs. ``site`` is the module whose output the
    gradient is taken with respect to (``None``: the input).
    """
    S = plan.n_steps
    weights = list(plan.step_weights) if plan.step_weights is not None else [1.0] * S
    if len(weights) != S:
        raise ValueError("internal: step_weights must have n_steps entries")
    total = plan.n_images * plan.n_samples * S
    per_image = plan.n_samples * S
    needed = list(getattr(score, "layers", ()) or ())
    modules = list(dict.fromkeys(([site] if site is not None else []) + needed))
    partial: Optional[torch.Tensor] = None

    with torch.enable_grad():
        start = 0
        while start < total:
            stop = min(total, start + batch_size)
            flat = torch.arange(start, stop)
            img = flat // per_image
            rem = flat % per_image
            smp = rem // S
            stp = rem % S
            pts = plan.make_points(img, smp, stp)
            if pts.is_inference():
                pts = pts.clone()
            pts = pts.detach().requires_grad_(True)
            with capture(modules) as captured:
                out = forward_scores(model, pts)
                dev = out.device
                rows = score.rows(out, img.to(dev), captured)
                wrt = pts if site is None else captured.get(site)
                if wrt is None:
                    raise RuntimeError("layer: the chosen layer was not executed in the forward pass")
                grad, = torch.autograd.grad(rows.sum(), wrt)
            grad = grad.detach().to(acc_dtype(grad.dtype))
            for r in range(stop - start):
                s = int(stp[r])
                w = weights[s]
                g = grad[r] if w == 1.0 else grad[r] * w
                if s == 0:
                    partial = g.clone()
                else:
                    partial.add_(g)
                if s == S - 1:
                    on_sample(int(img[r]), int(smp[r]), partial, pts[r].detach())
                    partial = None
            if progress is not None:
                progress(stop - start)
            start = stop
