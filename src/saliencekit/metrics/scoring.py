"""What every metric shares: argument checks, the maps an ``Explanation`` gives the metrics
(``explanation_maps``, also used by ``evaluate``), inference under the metrics' settings (model guarded,
float32, the memory layout probed), chunked scoring loops, target resolution, ranking and integration
helpers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core import chunking, checks, speed
from ..core.checks import choice, positive_int
from ..core.guard import forward_scores, model_guard
from ..core.targets import check_class_range, explicit_classes, resolve_classes
from ..explanation import Explanation

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


@dataclass
class Maps:
    """The maps the metrics judge for one batch of explanations.

    ``heat``: B x H x W, the map the pixel and region metrics rank (deletion / insertion, AUPC,
    allegiance, average drop, localisation); ``tv``: B x H x W, the map whose noise AUTVC measures;
    ``cells``: B x h x w or None, the cells the I-GOS deletion / insertion protocol ranks exactly
    (``1 - mask`` of an I-GOS explanation, at the mask's own resolution)."""

    heat: torch.Tensor
    tv: torch.Tensor
    cells: Optional[torch.Tensor] = None


def fit(m: torch.Tensor, hw) -> torch.Tensor:
    """A map as a float B x H x W at size ``hw`` (channels summed, bilinear upsampling when its size differs)."""
    if m.dim() == 4:
        m = m[:, 0] if m.shape[1] == 1 else m.sum(1)
    if tuple(m.shape[-2:]) != tuple(hw):
        m = F.interpolate(m[:, None].float(), size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]
    return m.float()


def _image_channels(e: Explanation) -> Optional[int]:
    """The explained images' channel count, when the explanation knows it."""
    if isinstance(e.inputs, torch.Tensor) and e.inputs.dim() == 4:
        return int(e.inputs.shape[1])
    mean = getattr(e.preprocessing, "mean", None)
    return len(mean) if isinstance(mean, (tuple, list)) else None


def explanation_maps(e: Explanation, hw=None, channels: Optional[int] = None,
                     heatmap: Optional[Mapping[str, Any]] = None) -> Maps:
    """The maps of ``e`` the metrics judge, at the input size ``hw`` (default: the attributions' size).

    - ``heat``: ``e.heatmap(**heatmap)`` when heatmap options are given (an evaluation variant's,
      e.g. ``original``); for signed methods (``e.signed``, SmoothTaylor, the signed CAMs) the
      absolute signed channel sum, ``|sum_c a|``, neither clipped nor normalised; otherwise the
      method's default ``e.heatmap()``. Upsampled bilinearly to ``hw`` when its size differs.
    - ``tv``: for an input-space method (attributions with the image's ``channels`` at size ``hw``)
      the signed channel sum of the raw attributions, as in the SmoothTaylor paper; otherwise
      ``heat``.
    - ``cells``: for I-GOS (``e.method == "igos"`` with ``e.extras["mask"]``, B x 1 x h x w) and no
      heatmap options, ``1 - mask`` at the mask's resolution; None otherwise.

    ``channels``: the images' channel count (default: from ``e.inputs`` or ``e.preprocessing``;
    when neither is known, attributions with more than one channel count as input space).
    ``evaluate`` uses this function, so its rows equal the metric functions called on an
    ``Explanation``.
    """
    if not isinstance(e, Explanation):
        raise TypeError(f"saliency: expected an Explanation, got {type(e).__name__}")
    a = e.attributions
    if not isinstance(a, torch.Tensor) or a.dim() not in (3, 4):
        raise ValueError("saliency: the explanation's attributions are not a B x C x H x W tensor")
    hw = tuple(int(v) for v in (hw if hw is not None else a.shape[-2:]))
    if heatmap:
        heat = e.heatmap(**heatmap)
    elif e.signed:
        heat = e.heatmap(sign="signed", clip=None, normalize=False).abs()
    else:
        heat = e.heatmap()
    heat = fit(heat, hw)
    if channels is None:
        channels = _image_channels(e)
    input_space = (a.dim() == 4 and tuple(a.shape[-2:]) == hw
                   and (a.shape[1] == channels if channels is not None else a.shape[1] > 1))
    tv = a.sum(1).float() if input_space else heat
    cells = None
    mask = e.extras.get("mask") if isinstance(e.extras, dict) else None
    if e.method == "igos" and not heatmap and isinstance(mask, torch.Tensor):
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != a.shape[0]:
            raise ValueError(f"saliency: the I-GOS explanation's mask has shape {tuple(mask.shape)}, "
                             f"expected {a.shape[0]} x 1 x h x w")
        cells = (1 - mask[:, 0].detach()).float()
    return Maps(heat=heat.detach(), tv=tv.detach(), cells=cells)


def metric_maps(saliency, x: Optional[torch.Tensor] = None, hw=None, name: str = "saliency") -> Maps:
    """``saliency`` (a tensor map or an ``Explanation``) as the ``Maps`` a metric judges.

    A tensor is every map at once (``heat`` = ``tv``, no ``cells``). An ``Explanation`` gives
    ``explanation_maps`` at ``x``'s size (or ``hw``); its batch must match ``x``'s (and, when it kept
    its inputs, their size)."""
    if not isinstance(saliency, Explanation):
        s = check_saliency(saliency, x, name)
        return Maps(heat=s, tv=s)
    e = saliency
    n = int(e.attributions.shape[0]) if isinstance(e.attributions, torch.Tensor) else -1
    channels = None
    if x is not None:
        if n != x.shape[0]:
            raise ValueError(f"{name}: the explanation holds {n} maps, x has {x.shape[0]} images")
        if isinstance(e.inputs, torch.Tensor) and tuple(e.inputs.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"{name}: the explanation was computed on {tuple(e.inputs.shape[-2:])} images, "
                             f"x is {tuple(x.shape[-2:])}")
        hw, channels = x.shape[-2:], int(x.shape[1])
    maps = explanation_maps(e, hw=hw, channels=channels)
    heat = check_saliency(maps.heat, x, name)
    tv = check_saliency(maps.tv, x, name)
    cells = None
    if maps.cells is not None:
        cells = check_saliency(maps.cells, None, name)
        cells = cells.to(x.device) if x is not None else cells
    return Maps(heat=heat, tv=tv, cells=cells)


def metric_target(saliency, target: Any) -> Any:
    """The classes a metric judges: ``target`` when given; for ``None`` (the default) the
    explanation's explained classes (``e.targets``) when ``saliency`` is an ``Explanation``, else
    ``"predicted"`` (the top-1 class on the clean image)."""
    if target is not None:
        return target
    if not isinstance(saliency, Explanation):
        return "predicted"
    t = saliency.targets
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError("target: the explanation's targets are not one class index per image; pass target=")
    if (t < 0).any():
        raise ValueError("target: the explanation explains a custom target (a unit or a callable), not a class; "
                         "pass target= with the classes to judge")
    return t.long()


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


def _simpson_odd(y: torch.Tensor, dx: float) -> torch.Tensor:
    """Composite Simpson's rule over an odd number (>= 3) of points along the last dim."""
    return dx / 3.0 * (y[..., 0:-1:2] + 4.0 * y[..., 1::2] + y[..., 2::2]).sum(-1)


def simpson_avg(y: torch.Tensor, dx: float = 1.0) -> torch.Tensor:
    """Simpson's rule of scipy before 1.11 (``scipy.integrate.simps(y, dx=dx)``, default ``even="avg"``),
    along the last dim, in float64.

    An odd number of points: composite Simpson (the same as ``simpson``). An even number N >= 4: the
    mean of (Simpson on the first N - 1 points + the trapezoid on the last interval) and (the
    trapezoid on the first interval + Simpson on the last N - 1 points). Two points: the trapezoid.
    The SmoothTaylor authors' AUTVC and AUPC values were integrated this way."""
    t = y.detach().double()
    n = t.shape[-1]
    if n < 2:
        raise ValueError(f"y: expected at least 2 points to integrate, got {n}")
    if n % 2 == 1:
        return _simpson_odd(t, dx)
    if n == 2:
        return dx * (t[..., 0] + t[..., 1]) / 2
    first = _simpson_odd(t[..., :-1], dx) + dx * (t[..., -2] + t[..., -1]) / 2
    last = dx * (t[..., 0] + t[..., 1]) / 2 + _simpson_odd(t[..., 1:], dx)
    return (first + last) / 2


INTEGRATIONS = ("simpson", "simpson_avg")


def integrate(y: torch.Tensor, integration: str = "simpson") -> torch.Tensor:
    """Unit-spacing integral of ``y`` along the last dim: ``"simpson"`` (today's scipy, ``simpson``)
    or ``"simpson_avg"`` (scipy < 1.11's ``simps``, ``simpson_avg``), float64."""
    choice("integration", integration, INTEGRATIONS)
    return simpson(y) if integration == "simpson" else simpson_avg(y)


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
