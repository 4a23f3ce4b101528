"""``explain``: one entry point for every method."""

from __future__ import annotations

import time
import warnings
from typing import Any, List, Optional, Sequence

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


class NonFiniteWarning(RuntimeWarning):
    """The model's outputs or the gradients are NaN or infinite for some images: their maps are not
    meaningful (the warning names the images)."""


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
            names: Optional[Sequence[str]] = None, **options) -> Explanation:
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

    ``x`` is converted to the model's floating-point dtype (that of its first floating-point
    parameter or buffer) when they differ: a float64 or half batch explains a float32 model, and the
    explanation's inputs and attributions are in the model's dtype. The model must return one row
    of scores per image (anything else is refused, naming the model and both counts). NaN or
    infinite outputs or gradients give a ``NonFiniteWarning`` naming the images. ``names`` (one
    string per image; default: ``x.image_names`` set by ``load_images``) names the images in
    warnings and in the files ``Explanation.save`` writes.
    """
    checks.model(model)
    x = checks.image_batch(x)
    names = _image_names(names, x)
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
        x = _as_model_dtype(model, x.detach())
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
            _warn_non_finite(method, clean, result["attributions"], names)
            return _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp,
                                model, time.perf_counter() - t0, space, names)
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
    _warn_non_finite(method, clean if classes is not None else clean_scores, result["attributions"], names)
    return _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp, model,
                        time.perf_counter() - t0, space, names)


def _image_names(names, x: torch.Tensor) -> Optional[List[str]]:
    """``names`` checked (one string per image), or the batch's ``image_names`` from ``load_images``."""
    n = x.shape[0]
    if names is None:
        carried = getattr(x, "image_names", None)
        if isinstance(carried, (list, tuple)) and len(carried) == n and all(isinstance(v, str) for v in carried):
            return list(carried)
        return None
    if isinstance(names, str) or not all(isinstance(v, str) for v in names):
        raise TypeError("names: expected a sequence of strings, one per image")
    names = list(names)
    if len(names) != n:
        raise ValueError(f"names: expected {n} names (one per image), got {len(names)}")
    return names


def _model_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter or buffer (``None`` if it has none)."""
    for t in model.parameters():
        if t.dtype.is_floating_point:
            return t.dtype
    for t in model.buffers():
        if t.dtype.is_floating_point:
            return t.dtype
    return None


def _as_model_dtype(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the model's floating-point dtype (a new tensor; the caller's is left as it is)."""
    dtype = _model_dtype(model)
    if dtype is None or dtype == x.dtype:
        return x
    y = x.to(dtype)
    if not torch.isfinite(y).all():
        raise ValueError(f"x: has dtype {x.dtype} and the model {type(model).__name__} has dtype {dtype}; "
                         f"converting x to {dtype} overflows (values beyond its range): rescale x or convert the "
                         f"model (model.to({x.dtype}))")
    return y


def _which(bad: torch.Tensor, names: Optional[List[str]]) -> str:
    idx = bad.nonzero().flatten().tolist()
    shown = [f"{i} ({names[i]})" if names else str(i) for i in idx[:10]]
    more = f" and {len(idx) - 10} more" if len(idx) > 10 else ""
    return ", ".join(shown) + more


def _warn_non_finite(method: str, outputs: torch.Tensor, attributions: torch.Tensor,
                     names: Optional[List[str]]) -> None:
    """A ``NonFiniteWarning`` naming the images whose outputs or attributions hold NaN or inf."""
    n = attributions.shape[0]
    bad_out = ~torch.isfinite(outputs.detach().reshape(n, -1)).all(1).cpu()
    bad_attr = ~torch.isfinite(attributions.detach().reshape(n, -1)).all(1).cpu()
    if bad_out.any():
        warnings.warn(f"{method}: the model's outputs are NaN or infinite for image(s) {_which(bad_out, names)}; "
                      f"their targets, scores and maps are not meaningful", NonFiniteWarning, stacklevel=3)
    only_grad = bad_attr & ~bad_out
    if only_grad.any():
        warnings.warn(f"{method}: the gradients are NaN or infinite for image(s) {_which(only_grad, names)} "
                      f"(finite outputs): their attributions hold NaN or inf and their maps are not meaningful",
                      NonFiniteWarning, stacklevel=3)


def _explanation(method, spec, result, classes, clean_scores, opts, seed_int, x, keep_inputs, spec_pp, model,
                 elapsed, space, names=None) -> Explanation:
    targets = classes.detach().clone() if classes is not None else torch.full((x.shape[0],), -1, dtype=torch.long)
    attr = result["attributions"]
    return Explanation(method=method, attributions=attr.to(x.device), targets=targets, scores=clean_scores,
                       params=dict(opts, score=space), seed=seed_int, inputs=x if keep_inputs else None,
                       delta=result.get("delta"), extras=result.get("extras", {}),
                       heatmap_defaults=dict(result.get("heatmap", spec.heatmap)), preprocessing=spec_pp,
                       class_names=class_names(model), time_s=elapsed, names=names)


__all__ = ["NonFiniteWarning", "explain", "list_methods"]
