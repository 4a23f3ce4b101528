"""Dataset evaluation: methods x metrics over a list of images, in blocks, as long-format rows.

``evaluate_images`` is the library core of ``saliencekit evaluate``. Every result depends only on
``(seed, image)``: an image's noise (in the methods, through ``explain(image_ids=...)``, and in
AUPC) is keyed by a stable id derived from its name, so any split of the images into blocks or
shards (e.g. a later Ray backend) gives the same rows.

Evaluation methods are the names of ``evaluation.variants`` (every registered method, the variants
its spec declares, e.g. ``smoothgrad_square`` or ``ig_blur``, and ``random``, a seeded uniform
map). Metrics are the names of the metric registry (``metrics.registry``).

Maps given to the metrics: the method's default heatmap (``Explanation.heatmap()``), except
``original`` (max over channels of |gradient|, Llorente et al.) and signed methods (SmoothTaylor),
whose map is |signed channel sum|. ``autvc`` follows the SmoothTaylor paper and measures the
signed channel sum of the raw attributions for every input-space method (the heatmap for CAMs /
I-GOS / random).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..api import explain
from ..core import noise
from ..core.speed import set_defaults
from ..metrics import registry as metric_registry
from ..metrics._common import guarded, outputs
from ..models import get_preprocessing
from . import variants


def image_id(name: str) -> int:
    """A stable 31-bit id for an image name (keys its noise)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@dataclass
class EvalResult:
    rows: list[dict[str, Any]] = field(default_factory=list)      # image, class_index, method, metric, value
    curves: list[dict[str, Any]] = field(default_factory=list)    # image, method, metric, step, value
    timings: list[dict[str, Any]] = field(default_factory=list)   # image, method, stage, seconds
    extras: list[dict[str, Any]] = field(default_factory=list)    # image, method, key, value (e.g. sigma)


def _fit(m: torch.Tensor, hw) -> torch.Tensor:
    if m.dim() == 4:
        m = m[:, 0] if m.shape[1] == 1 else m.sum(1)
    if tuple(m.shape[-2:]) != tuple(hw):
        m = F.interpolate(m[:, None].float(), size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]
    return m.float()


def _maps(model, x, name, classes, ids, seed, method_options, batch_size):
    """(metric map B x H x W, TV map B x H x W, extras per image) for one method on one block."""
    hw = x.shape[-2:]
    if name == variants.RANDOM:
        m = torch.stack([noise.uniform(tuple(hw), seed, i, 0, stream=noise.STREAM_METRIC + 1000, device=x.device)
                         for i in ids])
        return m, m, [{} for _ in ids]
    base, opts, hm, _ = variants.resolve(name, method_options)
    e = explain(model, x, base, target=classes, seed=seed, image_ids=ids, batch_size=batch_size,
                keep_inputs=False, **opts)
    if hm:
        heat = e.heatmap(**hm)
    elif e.signed:
        heat = e.heatmap(sign="signed", clip=None, normalize=False).abs()
    else:
        heat = e.heatmap()
    heat = _fit(heat, hw)
    a = e.attributions
    tv = a.sum(1).float() if (a.dim() == 4 and a.shape[1] == x.shape[1] and tuple(a.shape[-2:]) == tuple(hw)) \
        else heat
    extras = [{} for _ in ids]
    if "sigma" in e.extras and isinstance(e.extras["sigma"], torch.Tensor):
        for k, v in enumerate(e.extras["sigma"].reshape(-1).tolist()):
            extras[k]["sigma"] = v
    return heat, tv, extras


def check_names(methods: Sequence[str], metrics: Sequence[str]) -> None:
    for m in methods:
        variants.resolve(m)
    for k in metrics:
        metric_registry.get(k)


def evaluate_images(model, images: Sequence[tuple[str, torch.Tensor]], methods: Sequence[str],
                    metrics: Sequence[str], seed: int = 0, labels: dict[str, int] | None = None,
                    target: str = "predicted", method_options: dict[str, dict[str, Any]] | None = None,
                    metric_options: dict[str, dict[str, Any]] | None = None, block_size: int = 8,
                    done: set | None = None, batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None,
                    on_block: Callable[[EvalResult], None] | None = None,
                    channels_last: bool = False) -> EvalResult:
    """Evaluate ``methods`` x ``metrics`` on ``images`` (a list of ``(name, pixels C x H x W in [0, 1])``).

    ``target``: ``"predicted"`` (top-1 on the clean image) or ``"label"`` (``labels[name]``).
    ``done``: a set of ``(image, method)`` pairs to skip (resume). ``progress(k)`` is called after
    each (block, method) with the number of images; ``on_block(result)`` after each (block, method)
    with its rows (for incremental writing). ``channels_last``: run the maps and the metrics in
    channels_last memory layout (faster on CPU for depthwise-convolution models; the values change
    by float rounding only, and stay reproducible byte for byte with the same setting). Returns all rows.
    """
    check_names(methods, metrics)
    if target not in ("predicted", "label"):
        raise ValueError(f"target: expected 'predicted' or 'label', got {target!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    mopts = metric_options or {}
    for k in mopts:
        if k not in metric_registry.METRICS:
            raise ValueError(f"metric_options: unknown metric {k!r}")
    done = done or set()
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last: expected True or False, got {type(channels_last).__name__}")
    # results must be reproducible byte for byte across processes: the automatic chunk size may
    # come from a timing calibration (which can differ run to run, and float32 convolutions round
    # differently per chunk size), so evaluation pins the deterministic fixed rule
    previous = set_defaults(channels_last=channels_last, calibrate=False)
    try:
        return _evaluate_blocks(model, images, methods, metrics, seed, labels, target, method_options, mopts,
                                block_size, done, progress, on_block, batch_size)
    finally:
        set_defaults(previous)


def _evaluate_blocks(model, images, methods, metrics, seed, labels, target, method_options, mopts, block_size,
                     done, progress, on_block, batch_size=None) -> EvalResult:
    spec = get_preprocessing(model)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = EvalResult()
    for b0 in range(0, len(images), block_size):
        block = images[b0:b0 + block_size]
        names = [n for n, _ in block]
        x01 = torch.stack([t for _, t in block]).float().to(dev)
        x = spec.normalize(x01)
        if target == "label":
            if labels is None or any(n not in labels for n in names):
                missing = next(n for n in names if labels is None or n not in labels)
                raise ValueError(f"target: 'label' needs a label for every image (none for {missing!r})")
            classes_all = torch.tensor([labels[n] for n in names], device=dev)
        else:
            with guarded(model):
                classes_all = torch.cat([outputs(model, x[k:k + 1]).argmax(1) for k in range(len(names))])
        res = EvalResult()
        for name in methods:
            variant_metric_options = variants.resolve(name)[3]
            sel = [k for k, n in enumerate(names) if (n, name) not in done]
            # one image at a time: every forward chunk holds rows of a single image, so the values
            # (to the last bit) do not depend on which images share the block
            for k in sel:
                xs, x01s, cls = x[k:k + 1], x01[k:k + 1], classes_all[k:k + 1]
                ids = [image_id(names[k])]
                t0 = time.perf_counter()
                heat, tv, extras = _maps(model, xs, name, cls, ids, seed, method_options, batch_size)
                res.timings.append({"image": names[k], "method": name, "stage": "explain",
                                    "seconds": time.perf_counter() - t0})
                for key, v in extras[0].items():
                    res.extras.append({"image": names[k], "method": name, "key": key, "value": float(v)})
                judged = metric_registry.Judged(model=model, x=xs, x01=x01s, heat=heat, tv=tv, classes=cls,
                                                image_ids=ids, seed=seed, batch_size=batch_size)
                for metric in metrics:
                    t0 = time.perf_counter()
                    spec = metric_registry.get(metric)
                    opts = dict(variant_metric_options.get(metric) or {})
                    opts.update(mopts.get(metric) or {})
                    vals, curves = spec.judge(judged, opts)
                    res.rows.append({"image": names[k], "class_index": int(cls[0]), "method": name,
                                     "metric": metric, "value": float(vals.detach().double().cpu()[0])})
                    res.timings.append({"image": names[k], "method": name, "stage": metric,
                                        "seconds": time.perf_counter() - t0})
                    if curves is not None:
                        for st, v in enumerate(curves[0].detach().double().cpu().tolist()):
                            res.curves.append({"image": names[k], "method": name, "metric": metric,
                                               "step": st, "value": v})
            if progress:
                progress(len(names))
            if on_block:  # hand over each (block, method) as soon as it is finished
                on_block(res)
            out.rows += res.rows
            out.curves += res.curves
            out.timings += res.timings
            out.extras += res.extras
            res = EvalResult()
    return out


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None) -> dict[tuple[str, str], tuple[float, float, float, int]]:
    """(method, metric) -> (mean, 95% low, 95% high, n), Student-t interval over images (NaNs dropped)."""
    from scipy.stats import t as student

    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        v = float(r["value"])
        if math.isnan(v):
            continue
        groups.setdefault((r["method"], r["metric"]), []).append(v)
    out = {}
    for key, vals in groups.items():
        if methods is not None and key[0] not in methods:
            continue
        if metrics is not None and key[1] not in metrics:
            continue
        n = len(vals)
        mean = sum(vals) / n
        if n > 1:
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
            half = float(student.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        else:
            half = float("nan")
        out[key] = (mean, mean - half, mean + half, n)
    return out


__all__ = ["EvalResult", "check_names", "evaluate_images", "image_id", "summarize"]
