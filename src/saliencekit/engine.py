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
function of (seed, i, j), so the engine itself adds nothing that depends on the chunk size: maps
are bit-identical for any chunk size whenever the model computes each row independently of the
batch size (float64; float32 with native kernels). PyTorch's CPU float32 convolutions do not
always: ATen picks the kernel by batch size (a batch of 1 with a small input runs the native
kernel, larger batches oneDNN; NNPACK for 16+ rows when oneDNN is off), and those round
differently, so float32 maps for different chunk sizes agree to rounding (where a last-bit change
flips a ReLU kink, locally more). A fixed ``batch_size`` gives bit-identical maps run after run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import perf
from .hooks import capture



def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else (fp32/fp16/bf16) sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_batch_size(x: torch.Tensor, total_rows: int) -> int:
    """Automatic chunk size for ``total_rows`` rows shaped like ``x[0]`` (see ``perf``).

    Inside an ``explain`` call: on CPU a cached short calibration (when the call is large enough
    to amortise it), on CUDA from free memory; otherwise a safe fixed rule. The returned int is a
    ``perf.AutoBatch``: ``run`` halves it and retries on out-of-memory.
    """
    return perf.auto_rows(x, total_rows)


@contextlib.contextmanager
def model_guard(model: nn.Module):
    """Eval mode and frozen parameters for the call; everything restored afterwards."""
    # one traversal each; only what is not already in the wanted state is touched (a model already
    # in eval mode with frozen weights costs two list walks, not a recursive train() per call)
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
    st = perf.active()  # speed settings of the explain call in progress (None: plain fp32 eager)
    if st is not None and st.model is not model:
        st = None
    fwd = perf.forward_module(model, st, layers=modules)
    calib = getattr(batch_size, "calibrator", None)  # online CPU calibration (perf.Calibrator)
    if calib is not None and (st is None or calib.st is not st):
        calib = None

    with torch.enable_grad():
        start = 0
        while start < total:
            if calib is not None:
                rows = calib.next(total - start)
                t0 = calib.timer()
            else:
                rows = batch_size
            stop = min(total, start + rows)
            flat = torch.arange(start, stop)
            img = flat // per_image
            rem = flat % per_image
            smp = rem // S
            stp = rem % S
            pts = plan.make_points(img, smp, stp)
            if pts.is_inference():
                pts = pts.clone()
            # the gradient is taken to the input, or to the site layer's output (then the input needs
            # no grad, and the forward up to the site records no graph: see hooks.capture)
            pts = perf.prepare_points(pts.detach(), st).requires_grad_(site is None)
            try:
                pad_to = int(batch_size) if fwd is not model else 0
                grad = _chunk_grad(fwd, pts, img, score, site, modules, st, pad_to)
            except Exception as err:
                if perf.is_oom(err):
                    if calib is not None:  # stop calibrating; back off from the size that failed
                        calib.finish()
                        batch_size = perf.with_size(batch_size, rows)
                        calib = None
                    smaller = perf.back_off(batch_size)
                    if smaller is None:
                        raise
                    batch_size = smaller  # same rows again, in smaller chunks
                    continue
                if fwd is model:
                    raise
                perf.compile_failed(model, err)
                fwd = model
                continue
            grad = grad.detach().to(acc_dtype(grad.dtype))
            for r in range(stop - start):
                s = int(stp[r])
                w = weights[s]
                g = grad[r] if w == 1.0 else grad[r] * w
                if s == 0:
                    partial = g if S == 1 else g.clone()  # a fresh tensor per chunk: no copy needed
                else:
                    partial.add_(g)
                if s == S - 1:
                    on_sample(int(img[r]), int(smp[r]), partial, pts[r].detach())
                    partial = None
            if calib is not None:
                calib.report(calib.timer() - t0)
            if progress is not None:
                progress(stop - start)
            start = stop
    if calib is not None:
        calib.finish()


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
        inp = perf.prepare_points(inp, st)
        idx = torch.cat([img, img[-1:].expand(extra)])
    if scale is None:
        scale = perf.loss_scale(st)
    with capture(modules) as captured:
        with perf.autocast(pts.device, st):
            out = forward_scores(fwd, inp)
        dev = out.device
        rows = score.rows(out, idx.to(dev), captured)
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
