"""``explain``: one entry point for every method."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn

from . import methods
from .core import checks, noise, speed
from .core.guard import forward_scores, model_guard
from .explanation import Explanation
from .methods.base import REGISTRY, Context
from .models import Preprocessing, class_names, get_preprocessing
from .core.targets import (ClassScore, CustomScore, ClassInPass, check_score_space, is_custom_target,
                      resolve_classes)


def list_methods(details: bool = False):
    """The registered methods' names (sorted); with ``details``, name -> defaults, default score space,
    heatmap reduction, whether it draws noise, and its documentation."""
    if not details:
        return sorted(REGISTRY)
    return {name: {"defaults": dict(spec.defaults), "score": spec.score, "heatmap": dict(spec.heatmap),
                   "doc": spec.doc, "stochastic": spec.stochastic} for name, spec in sorted(REGISTRY.items())}


def explain(model: nn.Module, x: torch.Tensor, method: str, target: Any = "predicted", seed: Any = 0,
            batch_size: Optional[int] = None, preprocessing: Optional[Preprocessing] = None,
            keep_inputs: bool = True, progress=None, image_ids=None, precision: Optional[str] = None,
            channels_last: Any = None, compile: Optional[bool] = None, score: Optional[str] = None,
            **options) -> Explanation:
    """Explain ``model``'s scores for the batch ``x`` with ``method``.

    ``target``: ``"predicted"`` (top-1 of the clean input, resolved once), an int, a sequence or
    tensor of one class index per image, or a unit target / callable. ``score``: the score space of a
    class target, ``"logit" | "softmax" | "log_softmax"`` (default: the method's, logit except
    I-GOS's softmax). ``seed`` (int or
    ``torch.Generator``) fixes every random draw: the same seed gives the same map for any
    ``batch_size`` (rows per forward/backward chunk; ``None`` = automatic). ``options`` are the
    method's options (see ``saliencekit.list_methods(details=True)``); unknown ones are refused.
    ``image_ids`` (one int per image, default 0..B-1) key each image's noise, so an image gets the
    same noise whatever batch it is explained in (dataset evaluation passes global indices).
    ``precision`` (``"fp32" | "bf16" | "fp16"``: autocast forward/backward, float32 sums),
    ``channels_last`` (True, False or ``"auto"``: timed on CPU with the chunk size) and ``compile``
    (``torch.compile`` of the forward) are speed settings;
    ``None`` takes the process default (``saliencekit.set_defaults``), see ``saliencekit.core.speed``.
    """
    checks.model(model)
    x = checks.image_batch(x)
    spec = methods.get(method)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise TypeError(f"{unknown[0]}: unknown option for method {method!r}; "
                        f"valid options: {', '.join(sorted(spec.defaults)) or '(none)'}")
    opts = dict(spec.defaults)
    opts.update(options)
    checks.optional_positive_int("batch_size", batch_size)
    settings = speed.resolve(precision, channels_last, compile)
    seed_int = noise.resolve_seed(seed)
    if image_ids is not None:
        try:
            image_ids = [int(v) for v in (image_ids.tolist() if isinstance(image_ids, torch.Tensor) else image_ids)]
        except (TypeError, ValueError):
            raise TypeError("image_ids: expected one integer per image") from None
        if len(image_ids) != x.shape[0]:
            raise ValueError(f"image_ids: expected {x.shape[0]} ids (one per image), got {len(image_ids)}")
    space = check_score_space(spec.score if score is None else score)
    if space != "logit" and is_custom_target(target):
        raise ValueError(f"score: {space!r} applies to class targets; a callable or unit target receives the "
                         f"model's raw outputs (apply {space} inside it)")
    spec_pp = preprocessing if preprocessing is not None else get_preprocessing(model)

    t0 = time.perf_counter()
    # inference_mode(False): a caller's torch.inference_mode() block would otherwise forbid autograd
    with torch.inference_mode(False), model_guard(model), speed.call_scope(model, settings):
        if x.is_inference():
            x = x.clone()  # a normal tensor (outside inference mode) that autograd may record
        x = x.detach()
        # Methods whose pass is one forward of the clean batch resolve a class target from that pass
        # (fp32 only: a bf16/fp16 forward could flip a near-tied argmax relative to other methods).
        if spec.clean_pass and not is_custom_target(target) and settings.precision == "fp32":
            in_pass = ClassInPass(target, x.shape[0], space)
            ctx = Context(model=model, x=x, score=in_pass, classes=None, clean_outputs=None, seed=seed_int,
                          batch_size=batch_size, preprocessing=spec_pp, progress=progress, image_ids=image_ids)
            result = spec.fn(ctx, **opts)
            classes, clean = in_pass.resolved()
            classes = classes.to(x.device)
            clean_scores = ClassScore(classes, space).rows(clean.to(x.device), torch.arange(x.shape[0],
                                                                                            device=x.device)).float()
            return _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp,
                                model, time.perf_counter() - t0, space)
        with torch.no_grad():
            clean = forward_scores(model, x)
        if is_custom_target(target):
            if spec.class_target_only:
                raise ValueError(f"target: method {method!r} explains a class; pass a class index or 'predicted'")
            score = CustomScore(target.bind(model) if hasattr(target, "bind") else target)  # Units by name
            classes = None
        else:
            classes = resolve_classes(target, clean)
            score = ClassScore(classes, space)
        ctx = Context(model=model, x=x, score=score, classes=classes, clean_outputs=clean.detach(),
                      seed=seed_int, batch_size=batch_size, preprocessing=spec_pp, progress=progress,
                      image_ids=image_ids)
        if classes is not None:  # class scores come from the clean forward above (no second forward)
            clean_scores = score.rows(clean, torch.arange(x.shape[0], device=clean.device)).float()
        else:
            clean_scores = ctx.scores_at(x, torch.arange(x.shape[0]))
        result = spec.fn(ctx, **opts)
    return _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp, model,
                        time.perf_counter() - t0, space)


def _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp, model,
                 elapsed, space) -> Explanation:
    targets = classes.detach().clone() if classes is not None else torch.full((x.shape[0],), -1, dtype=torch.long)
    attr = result["attributions"]
    return Explanation(method=method, attributions=attr.to(x.device), targets=targets, scores=clean_scores,
                       params=dict(opts, score=space), seed=seed_int, inputs=x if keep_inputs else None,
                       delta=result.get("delta"), extras=result.get("extras", {}),
                       heatmap_defaults=dict(result.get("heatmap", spec.heatmap)), preprocessing=spec_pp,
                       class_names=class_names(model), time_s=elapsed)


__all__ = ["explain", "list_methods"]
