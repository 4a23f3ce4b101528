"""Dataset evaluation: methods x metrics over a list of images, in blocks, as long-format rows.

``evaluate_images`` is the library core of ``saliencekit evaluate`` and of every backend: the
local one and the Ray workers call it on one block at a time (``evaluation.store``,
``evaluation.ray``). Every result depends only on ``(seed, image)``: each image is computed on its
own, and its noise (in the methods, through ``explain(image_ids=...)``, and in AUPC) is keyed by a
stable id derived from its name, so any split of the images into blocks or shards gives the same
rows, bit for bit.

Evaluation methods are the names of ``evaluation.variants`` (every registered method, the variants
its spec declares, e.g. ``smoothgrad_square`` or ``ig_blur``, and ``random``, a seeded uniform
map). Metrics are the names of the metric registry (``metrics.registry``).

Maps given to the metrics (``metrics.scoring.explanation_maps``, the same function the metric
functions apply to an ``Explanation``, so ``metrics.deletion(model, x, e)`` equals evaluate's row):
the method's default heatmap (``Explanation.heatmap()``), or the heatmap options of its variant
(``original``: max over channels of |gradient|, Llorente et al. 2023); signed methods (SmoothTaylor)
give |signed channel sum|. ``autvc`` follows the SmoothTaylor paper (Goh et al. 2021) and measures
the signed channel sum of the raw attributions for every input-space method (the heatmap for CAMs /
I-GOS / random). The I-GOS protocol curves of I-GOS rank the cells of its own mask (``1 - mask``).
See docs/evaluation.md.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import explain
from ..core import checks, noise
from ..core.speed import set_defaults
from ..metrics import registry as metric_registry
from ..metrics.scoring import Maps, explanation_maps, guarded, outputs
from ..models import get_preprocessing
from . import variants

TARGETS = ("predicted", "label")
# the tables of an EvalResult and their columns (also the columns of results.csv, curves.csv, ...)
FIELDS = {
    "rows": ("image", "class_index", "method", "metric", "value"),
    "curves": ("image", "method", "metric", "step", "value"),
    "timings": ("image", "method", "stage", "seconds"),
    "extras": ("image", "method", "key", "value"),
}


def image_id(name: str) -> int:
    """A stable 31-bit id for an image name (keys its noise)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@dataclass
class EvalResult:
    """Long-format tables: one dict per line, with the columns of ``FIELDS``."""

    rows: list[dict[str, Any]] = field(default_factory=list)      # image, class_index, method, metric, value
    curves: list[dict[str, Any]] = field(default_factory=list)    # image, method, metric, step, value
    timings: list[dict[str, Any]] = field(default_factory=list)   # image, method, stage, seconds
    extras: list[dict[str, Any]] = field(default_factory=list)    # image, method, key, value (e.g. sigma)

    def extend(self, other: EvalResult) -> None:
        for table in FIELDS:
            getattr(self, table).extend(getattr(other, table))


def _maps(model, x, resolved, classes, ids, seed, batch_size, names=None):
    """(the metrics' ``Maps``: heat B x H x W, TV map B x H x W, I-GOS cells or None; extras per image)
    for one method on one batch; ``resolved`` is the evaluation name's ``variants.resolve`` tuple."""
    hw = x.shape[-2:]
    base, opts, hm, _ = resolved
    if base == variants.RANDOM:
        m = torch.stack([noise.uniform(tuple(hw), seed, i, 0, stream=noise.STREAM_METRIC + 1000, device=x.device)
                         for i in ids])
        return Maps(heat=m, tv=m), [{} for _ in ids]
    e = explain(model, x, base, target=classes, seed=seed, image_ids=ids, batch_size=batch_size,
                keep_inputs=False, names=names, **opts)
    maps = explanation_maps(e, hw=hw, channels=x.shape[1], heatmap=hm or None)
    extras = [{} for _ in ids]
    if "sigma" in e.extras and isinstance(e.extras["sigma"], torch.Tensor):
        for k, v in enumerate(e.extras["sigma"].reshape(-1).tolist()):
            extras[k]["sigma"] = v
    return maps, extras


def check_names(methods: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise a ValueError naming the first unknown evaluation method or metric."""
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
    ``done``: a set of ``(image, method)`` pairs to skip. ``progress(k)`` is called after each
    (block, method) with the number of images; ``on_block(result)`` after each (block, method)
    with its rows (for incremental writing). ``channels_last``: run the maps and the metrics in
    channels_last memory layout (faster on CPU for depthwise-convolution models; the values change
    by float rounding only, and stay reproducible byte for byte with the same setting). Returns all
    rows, block by block, then method by method, image by image, metric by metric.
    """
    check_names(methods, metrics)
    checks.choice("target", target, TARGETS)
    checks.positive_int("block_size", block_size)
    checks.boolean("channels_last", channels_last)
    mopts = metric_options or {}
    for k in mopts:
        if k not in metric_registry.METRICS:
            raise ValueError(f"metric_options: unknown metric {k!r}")
    # results must be reproducible byte for byte across processes: a timed layout probe can decide
    # differently run to run (and the layouts round differently), so evaluation turns it off
    previous = set_defaults(channels_last=channels_last, calibrate=False)
    try:
        return _evaluate_blocks(model, images, methods, metrics, seed, labels, target, method_options, mopts,
                                block_size, done or set(), progress, on_block, batch_size)
    finally:
        set_defaults(previous)


def _classes(model, x, names, labels, target) -> torch.Tensor:
    """The explained class of each image of a block."""
    if target == "label":
        missing = next((n for n in names if labels is None or n not in labels), None)
        if missing is not None:
            raise ValueError(f"target: 'label' needs a label for every image (none for {missing!r})")
        return torch.tensor([labels[n] for n in names], device=x.device)
    with guarded(model):
        return torch.cat([outputs(model, x[k:k + 1]).argmax(1) for k in range(len(names))])


def _evaluate_blocks(model, images, methods, metrics, seed, labels, target, method_options, mopts, block_size,
                     done, progress, on_block, batch_size) -> EvalResult:
    preprocessing = get_preprocessing(model)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = EvalResult()
    for b0 in range(0, len(images), block_size):
        block = images[b0:b0 + block_size]
        names = [n for n, _ in block]
        x01 = torch.stack([t for _, t in block]).float().to(dev)
        x = preprocessing.normalize(x01)
        classes = _classes(model, x, names, labels, target)
        for name in methods:
            res = EvalResult()
            resolved = variants.resolve(name, method_options)   # once per method, not per image
            variant_metric_options = resolved[3]
            # one image at a time: every forward chunk holds rows of a single image, so the values
            # (to the last bit) do not depend on which images share the block
            for k, image in enumerate(names):
                if (image, name) in done:
                    continue
                xs, x01s, cls = x[k:k + 1], x01[k:k + 1], classes[k:k + 1]
                ids = [image_id(image)]
                t0 = time.perf_counter()
                maps, extras = _maps(model, xs, resolved, cls, ids, seed, batch_size, names=[image])
                res.timings.append({"image": image, "method": name, "stage": "explain",
                                    "seconds": time.perf_counter() - t0})
                for key, v in extras[0].items():
                    res.extras.append({"image": image, "method": name, "key": key, "value": float(v)})
                judged = metric_registry.Judged(model=model, x=xs, x01=x01s, heat=maps.heat, tv=maps.tv, classes=cls,
                                                image_ids=ids, seed=seed, batch_size=batch_size, cells=maps.cells)
                for metric in metrics:
                    t0 = time.perf_counter()
                    opts = dict(variant_metric_options.get(metric) or {})
                    opts.update(mopts.get(metric) or {})
                    vals, curves = metric_registry.get(metric).judge(judged, opts)
                    res.rows.append({"image": image, "class_index": int(cls[0]), "method": name,
                                     "metric": metric, "value": float(vals.detach().double().cpu()[0])})
                    res.timings.append({"image": image, "method": name, "stage": metric,
                                        "seconds": time.perf_counter() - t0})
                    if curves is not None:
                        for step, v in enumerate(curves[0].detach().double().cpu().tolist()):
                            res.curves.append({"image": image, "method": name, "metric": metric,
                                               "step": step, "value": v})
            if progress:
                progress(len(names))
            if on_block:  # hand over each (block, method) as soon as it is finished
                on_block(res)
            out.extend(res)
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


__all__ = ["EvalResult", "FIELDS", "TARGETS", "check_names", "evaluate_images", "image_id", "summarize"]
