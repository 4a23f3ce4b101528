"""The batched gradient engine: the one place where gradients are computed.

Every gradient method evaluates the gradient of chosen scores at many points and reduces. The
points are indexed by ``(image i, sample j, step s)``: ``j`` is a noise sample or a baseline
draw, ``s`` a step along an integration path. The engine walks those triples in order, in
chunks of ``batch_size`` rows; for each chunk it runs one forward pass and one
``torch.autograd.grad`` of the summed selected scores with respect to the gradient *site* (the
input, or a captured layer output). Per sample it forms ``G_ij = sum_s w_s * grad_ijs`` and hands
it to ``on_sample(i, j, G_ij, point)``, where the method folds it into running sums. Memory is
therefore O(chunk) whatever the number of samples.

Rows are folded in a fixed order (one add per row, in (i, j, s) order), and noise is a pure
function of (seed, i, j), so the engine itself adds nothing that depends on the chunk size: maps
are bit-identical for any chunk size whenever the model computes each row independently of the
batch size (float64; float32 with native kernels). PyTorch's CPU float32 convolutions do not
always: ATen picks the kernel by batch size (a batch of 1 with a small input runs the native
kernel, larger batches oneDNN; NNPACK for 16+ rows when oneDNN is off), and those round
differently, so float32 maps for different chunk sizes agree to rounding (where a last-bit change
flips a ReLU kink, locally more). A fixed ``batch_size`` gives bit-identical maps run after run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import speed
from .chunking import ChunkPolicy, drive
from .guard import forward_scores
from .hooks import capture


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else (fp32/fp16/bf16) sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Plan:
    """What to evaluate: ``n_images x n_samples x n_steps`` points; ``make_points(img, smp, stp)``
    builds the chunk's points from its (image, sample, step) indices."""

    n_images: int
    n_samples: int
    make_points: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    n_steps: int = 1
    step_weights: Optional[Sequence[float]] = None

    @property
    def total(self) -> int:
        return self.n_images * self.n_samples * self.n_steps


def run(model: nn.Module, plan: Plan, score, on_sample: Callable, *, policy: ChunkPolicy,
        site: Optional[nn.Module] = None, progress: Optional[Callable[[int], None]] = None) -> None:
    """Evaluate gradients for every point of ``plan`` and hand each sample's sum to ``on_sample``.

    ``score.rows(outputs, image_index, captures)`` returns one score per row; ``score.layers``
    lists modules whose outputs the score needs. ``site`` is the module whose output the gradient
    is taken with respect to (``None``: the input). ``policy`` sizes the chunks (``core.chunking``).
    """
    S = plan.n_steps
    weights = list(plan.step_weights) if plan.step_weights is not None else [1.0] * S
    if len(weights) != S:
        raise ValueError("internal: step_weights must have n_steps entries")
    per_image = plan.n_samples * S
    modules = list(dict.fromkeys(([site] if site is not None else []) + list(getattr(score, "layers", ()) or ())))
    st = speed.active()  # speed settings of the call in progress (None: plain fp32 eager)
    if st is not None and st.model is not model:
        st = None
    fwd = speed.forward_module(model, st, layers=modules)
    partial: Optional[torch.Tensor] = None

    def chunk(start: int, stop: int) -> None:
        nonlocal fwd, partial
        flat = torch.arange(start, stop)
        img = flat // per_image
        rem = flat % per_image
        smp, stp = rem // S, rem % S
        pts = plan.make_points(img, smp, stp)
        if pts.is_inference():
            pts = pts.clone()
        # the gradient is taken to the input, or to the site layer's output (then the input needs
        # no grad, and the forward up to the site records no graph: see hooks.capture)
        pts = speed.prepare_points(pts.detach(), st).requires_grad_(site is None)
        try:
            grad = _chunk_grad(fwd, pts, img, score, site, modules, st, policy.rows if fwd is not model else 0)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:
            if fwd is model:
                raise
            speed.compile_failed(model, err)   # later calls run eager too
            fwd = model
            grad = _chunk_grad(fwd, pts, img, score, site, modules, st)
        # the fold: one add per row in (image, sample, step) order, whatever the chunk size
        grad = grad.detach().to(acc_dtype(grad.dtype))
        for r in range(stop - start):
            s = int(stp[r])
            g = grad[r] if weights[s] == 1.0 else grad[r] * weights[s]
            if s == 0:
                partial = g if S == 1 else g.clone()
            else:
                partial.add_(g)
            if s == S - 1:
                on_sample(int(img[r]), int(smp[r]), partial, pts[r].detach())
                partial = None
        if progress is not None:
            progress(stop - start)

    with torch.enable_grad():
        drive(policy, plan.total, chunk)


def _chunk_grad(fwd, pts, img, score, site, modules, st, pad_to: int = 0, scale: Optional[float] = None):
    """One forward (autocast per the active settings) and one ``autograd.grad`` for a chunk.

    ``pad_to``: for compiled forwards, the chunk is padded with detached copies of its last row
    so every chunk has the same shape (no recompilation); the padding's gradients are dropped.
    fp16 multiplies the summed score by a loss scale and divides it out; on overflow the chunk
    is redone unscaled.
    """
    n = pts.shape[0]
    inp, idx = pts, img
    if pad_to > n:
        extra = pad_to - n
        inp = torch.cat([pts, pts[-1:].detach().expand(extra, *pts.shape[1:])])
        inp = speed.prepare_points(inp, st)
        idx = torch.cat([img, img[-1:].expand(extra)])
    if scale is None:
        scale = speed.loss_scale(st)
    with capture(modules) as captured:
        with speed.autocast(pts.device, st):
            out = forward_scores(fwd, inp)
        rows = score.rows(out, idx.to(out.device), captured)
        wrt = pts if site is None else captured.get(site)
        if wrt is None:
            raise RuntimeError("layer: the chosen layer was not executed in the forward pass")
        loss = rows.to(acc_dtype(rows.dtype)).sum()
        grad, = torch.autograd.grad(loss * scale if scale != 1.0 else loss, wrt)
    if grad.shape[0] != n:
        grad = grad[:n]
    if scale != 1.0:
        grad = grad.to(acc_dtype(grad.dtype)) / scale
        if not torch.isfinite(grad).all():
            return _chunk_grad(fwd, pts, img, score, site, modules, st, pad_to, scale=1.0)
    return grad


__all__ = ["Plan", "run", "acc_dtype"]
