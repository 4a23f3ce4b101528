"""What every metric shares: argument checks, inference under the metrics' settings (model guarded, float32, the
memory layout probed), chunked scoring loops, target resolution, ranking and integration helpers."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from ..core import chunking, checks, speed
from ..core.checks import positive_int
from ..core.guard import forward_scores, model_guard
from ..core.targets import check_class_range, explicit_classes, resolve_classes

check_model = checks.model


def check_x(x, name: str = "x") -> torch.Tensor:
    return checks.image_batch(x, name).detach()


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
        positive_int("batch_size", batch_size)
    return chunking.inference_rows(x, total, batch_size)


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
    defaults = speed.get_defaults()
    layout = defaults.channels_last if defaults.calibrate else defaults.channels_last is True
    settings = speed.Settings(channels_last=layout, calibrate=False, retain_memory=defaults.retain_memory)
    with model_guard(model), speed.call_scope(model, settings), torch.inference_mode():
        yield model


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``forward_scores`` with the active memory layout; call inside ``guarded``."""
    return forward_scores(model, speed.prepare_points(x, speed.active()))


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
    """Scores of ``total`` rows; ``build(row_index)`` -> (inputs, image index) for one chunk of rows.
    With ``channels_last="auto"`` the loop's first chunks may probe the two memory layouts
    (``chunking.for_inference``)."""
    if total == 0:
        return torch.zeros(0)
    res = []
    first = build(torch.arange(0, min(rows, total)))   # its row shape keys the layout decision
    policy = chunking.for_inference(model, first[0][0], total, rows)

    def chunk(start: int, stop: int) -> None:
        nonlocal first
        if first is not None and start == 0 and stop == first[0].shape[0]:
            (inp, img), first = first, None
        else:
            inp, img = build(torch.arange(start, stop))
        out = forward(model, inp)
        if start == 0:
            check_class_range(classes, out.shape[1])
        res.append(select(out, classes[img.to(classes.device)], space))

    chunking.drive(policy, total, chunk)
    return torch.cat(res)


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
