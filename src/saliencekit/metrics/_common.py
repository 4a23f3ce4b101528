"""Shared helpers of the metrics: argument checks, target resolution, batched scoring."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from .. import engine, perf
from ..methods.base import positive_int  # noqa: F401  (re-exported to the metric modules)
from ..targets import check_class_range, explicit_classes, resolve_classes

# Rows per forward pass for the metrics' inference-only passes: about 4 images of 3x224x224 on
# CPU, 128 on CUDA. On CPU small chunks stay in cache: EfficientNet-Lite0 inference on 2 cores runs
# at ~110 images/s in chunks of 4 vs ~46 in chunks of 16 (benchmarks/bench_metrics.py).
_CPU_ELEMENTS = 4 * 3 * 224 * 224
_CUDA_ROWS = 128


def check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model


def check_x(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a float tensor of shape B x C x H x W, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D batch B x C x H x W, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x.detach()


def check_saliency(saliency, x: Optional[torch.Tensor] = None, name: str = "saliency") -> torch.Tensor:
    """B x H x W or B x 1 x H x W -> a float B x H x W tensor (on x's device)."""
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape B x H x W or B x 1 x H x W, "
                        f"got {type(saliency).__name__}")
    s = saliency.detach()
    if s.dim() == 4:
        if s.shape[1] != 1:
            raise ValueError(f"{name}: expected B x H x W or B x 1 x H x W, got shape {tuple(s.shape)} "
                             f"(reduce the channels first, e.g. Explanation.heatmap())")
        s = s[:, 0]
    if s.dim() != 3:
        raise ValueError(f"{name}: expected B x H x W or B x 1 x H x W, got shape {tuple(saliency.shape)}")
    if s.dtype.is_complex or s.dtype == torch.bool:
        raise TypeError(f"{name}: expected a real tensor, got dtype {s.dtype}")
    s = s.float()
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if x is not None:
        if s.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected one map per image ({x.shape[0]}), got {s.shape[0]}")
        if tuple(s.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"{name}: spatial size {tuple(s.shape[-2:])} differs from the input's "
                             f"{tuple(x.shape[-2:])}; upsample the map first")
        s = s.to(x.device)
    return s


def chunk_rows(x: torch.Tensor, total: int, batch_size: Optional[int]) -> int:
    if batch_size is not None:
        return positive_int("batch_size", batch_size)
    if x.device.type == "cuda":
        rows = _CUDA_ROWS
    else:
        rows = max(1, _CPU_ELEMENTS // max(1, x[0].numel()))
    return max(1, min(rows, total))


@contextlib.contextmanager
def guarded(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters and inference mode for the call; the model restored after.

    The metrics follow the process-wide ``channels_last`` default (``saliencekit.set_defaults``).
    With ``"auto"`` (and ``calibrate=True``) a long scoring loop times its own first chunks in
    both layouts and keeps the faster (cached per model and row shape, apart from the explain
    calls' decisions); ``calibrate=False`` (as ``evaluate`` sets) runs contiguous. A memory layout
    only changes the scores by float rounding. Precision stays float32 and
    nothing is compiled: a metric should not depend on the speed switches of the maps it judges.
    """
    defaults = perf.get_defaults()
    layout = defaults.channels_last if defaults.calibrate else defaults.channels_last is True
    settings = perf.Settings(channels_last=layout, calibrate=False, retain_memory=defaults.retain_memory)
    with engine.model_guard(model), perf.call_scope(model, settings), torch.inference_mode():
        yield model


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``engine.forward_scores`` with the active memory layout; call inside ``guarded``."""
    return engine.forward_scores(model, perf.prepare_points(x, perf.active()))


def outputs(model: nn.Module, x: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Model outputs (B x K, float) in chunks; call inside ``guarded``."""
    bs = chunk_rows(x, x.shape[0], batch_size)
    return torch.cat([forward(model, x[s:s + bs]).float() for s in range(0, x.shape[0], bs)])


def resolve_target(model: nn.Module, x: torch.Tensor, target: Any, batch_size: Optional[int] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(classes per image, clean outputs); call inside ``guarded``."""
    out = outputs(model, x, batch_size)
    return resolve_classes(target, out), out


def target_classes(model: nn.Module, x: torch.Tensor, target: Any, batch_size: Optional[int] = None
                   ) -> torch.Tensor:
    """Classes per image without a forward when ``target`` already names them (their upper bound is
    checked against the model's outputs when the first chunk is scored, see ``scored_rows``);
    ``"predicted"`` costs one forward of the clean batch. Call inside ``guarded``."""
    if isinstance(target, str) and target == "predicted":
        return resolve_target(model, x, target, batch_size)[0]
    return explicit_classes(target, x.shape[0], x.device)


def select(out: torch.Tensor, classes: torch.Tensor, space: str) -> torch.Tensor:
    if space == "softmax":
        s = torch.softmax(out.float(), dim=1)
    elif space == "logit":
        s = out.float()
    else:
        raise ValueError(f"score: expected 'softmax' or 'logit', got {space!r}")
    return s.gather(1, classes.to(s.device).view(-1, 1))[:, 0]


def scored_rows(model: nn.Module, total: int, build: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
                classes: torch.Tensor, space: str, rows: int) -> torch.Tensor:
    """Scores of ``total`` rows; ``build(row_index)`` -> (inputs, image index) for one chunk of rows."""
    res = []
    probe = None
    for s in range(0, total, rows):
        idx = torch.arange(s, min(total, s + rows))
        inp, img = build(idx)
        if s == 0:  # channels_last="auto": a cached layout, or the first chunks probe both
            probe = perf.inference_layout(model, inp[0], total, rows)
        if probe is not None:
            probe.next(total - s)  # the size stays ``rows``; this sets the chunk's layout
            t0 = probe.timer()
        out = forward(model, inp)
        if s == 0:
            check_class_range(classes, out.shape[1])
        res.append(select(out, classes[img.to(classes.device)], space))
        if probe is not None:
            probe.report(probe.timer() - t0)
    if probe is not None:
        probe.finish()
    return torch.cat(res) if res else torch.zeros(0)


def stable_order(saliency_flat: torch.Tensor) -> torch.Tensor:
    """Indices of each row sorted by descending saliency, ties broken by position (stable)."""
    return torch.sort(saliency_flat, dim=1, descending=True, stable=True).indices


def ranks(saliency_flat: torch.Tensor) -> torch.Tensor:
    """rank[i, p] = position of pixel p in image i's descending, stable order."""
    order = stable_order(saliency_flat)
    r = torch.empty_like(order)
    r.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return r


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """AUC on [0, 1] of B x (n + 1) curves sampled at equal spacing."""
    n = curves.shape[1] - 1
    if n < 1:
        return curves[:, 0].clone()
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / n


def simpson(y: torch.Tensor, dx: float = 1.0) -> torch.Tensor:
    """Composite Simpson's rule along the last dim (scipy.integrate.simpson's rule for odd
    point counts; for an even count the last interval uses scipy's >=1.11 correction)."""
    import numpy as np
    from scipy.integrate import simpson as _simpson

    arr = y.detach().double().cpu().numpy()
    return torch.from_numpy(np.asarray(_simpson(arr, dx=dx, axis=-1))).to(torch.float64)


def broadcast_image(t, x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return torch.full_like(x, float(t))
        raise TypeError(f"{name}: expected a tensor broadcastable to {tuple(x.shape)} or a number, "
                        f"got {type(t).__name__}")
    try:
        return torch.broadcast_to(t.detach().to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"{name}: expected a tensor broadcastable to the input shape {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}") from None
