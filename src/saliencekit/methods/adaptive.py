"""Adaptive noising (Goh et al. 2021, section 3.3): a per-image search for the noise scale.

Per image, the noise scale sigma of SmoothTaylor is chosen to minimise an objective A(sigma):
``"aupc"`` (region perturbation, ``metrics.aupc`` on the signed channel-sum heatmap) or
``"autvc"`` (multi-scale total variation, ``metrics.total_variation``), or a callable
``A(attributions, sigma) -> one value per image`` (attributions B x C x H x W, sigma B).

Search (per image; all still-searching images are evaluated together in one batch):
start at ``sigma = mean(|x|)`` and ``lr = 0.1``. Each iteration tries ``|sigma + lr|``; if A got
worse (strictly larger) than the current value it tries ``|sigma - lr|`` instead. If that is
still worse, ``lr *= 0.9`` and a failure is counted (the search stops after 3 consecutive
failures); otherwise the step is taken (ties count as not worse), the failure count resets and
the new sigma is the best seen. At most 20 iterations. The result is the map at the best sigma,
with ``extras["sigma"]`` (per image) and ``extras["objective_trace"]`` (per image, the list of
``[sigma, A, accepted]`` triples in evaluation order, starting with the initial sigma).

The map at each sigma comes from the caller (``smoothtaylor`` passes its fixed-sigma map with the
same noise keys), so the returned map equals the method run with the chosen sigma.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..core.checks import nonneg_float, positive_float, positive_int
from ..core.targets import ClassScore
from ..metrics.aupc import aupc
from ..metrics.total_variation import total_variation
from .base import Context

ADAPTIVE_DEFAULTS = {"lr": 0.1, "max_iter": 20, "patience": 3, "decay": 0.9, "sigma0": None,
                     "window": 15, "regions": 30, "draws": 50, "downscale": 1.5, "min_size": 30}
OBJECTIVES = ("aupc", "autvc")


def _sub_context(ctx: Context, idx: list[int]) -> Context:
    sel = torch.tensor(idx, device=ctx.x.device)
    classes = ctx.classes[sel]
    space = getattr(ctx.score, "space", "logit")
    return dataclasses.replace(ctx, x=ctx.x[sel], classes=classes, clean_outputs=ctx.clean_outputs[sel],
                               score=ClassScore(classes, space), image_ids=[ctx.noise_key(i) for i in idx],
                               extras={})


def _objective_fn(ctx: Context, objective, opts: dict[str, Any]) -> Callable:
    if callable(objective):
        def custom(sub: Context, attr: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = objective(attr, sigma)
            v = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
            if v.numel() != attr.shape[0]:
                raise ValueError("objective: a callable objective must return one value per image")
            return v
        return custom
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected 'aupc', 'autvc' or a callable, got {objective!r}")

    if objective == "aupc":
        def fa(sub: Context, attr: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            heat = attr.sum(1)  # the SmoothTaylor heatmap: signed sum over channels
            return aupc(sub.model, sub.x, heat, target=sub.classes, window=opts["window"], regions=opts["regions"],
                        draws=opts["draws"], seed=sub.seed, image_ids=sub.image_ids,
                        batch_size=sub.batch_size).double()
        return fa

    def ft(sub: Context, attr: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return total_variation(attr.sum(1), downscale=opts["downscale"], min_size=opts["min_size"])["autvc"].double()
    return ft


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise TypeError(f"adaptive_options: expected a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(ADAPTIVE_DEFAULTS))
    if unknown:
        raise TypeError(f"adaptive_options: unknown option {unknown[0]!r}; valid: {', '.join(ADAPTIVE_DEFAULTS)}")
    o = dict(ADAPTIVE_DEFAULTS)
    o.update(options)
    for k in ("max_iter", "patience", "window", "regions", "draws", "min_size"):
        positive_int(f"adaptive_options[{k!r}]", o[k])
    for k in ("lr", "decay"):
        positive_float(f"adaptive_options[{k!r}]", o[k])
    if o["sigma0"] is not None:
        nonneg_float("adaptive_options['sigma0']", o["sigma0"])
    return o


def adaptive_noising(ctx: Context, map_at: Callable[[Context, torch.Tensor], torch.Tensor], objective="aupc",
                     options: dict[str, Any] | None = None):
    """The per-image sigma search; ``map_at(sub_context, sigma)`` gives the attributions of the
    sub-batch at one sigma per image. Returns attributions at the best sigma, sigma and the traces."""
    if ctx.classes is None:
        raise ValueError("target: adaptive noising explains a class; unit / callable targets are not supported")
    o = _check_options(options or {})
    fn = _objective_fn(ctx, objective, o)
    n = ctx.n
    x = ctx.x.detach()
    if o["sigma0"] is None:
        sigma = x.reshape(n, -1).abs().mean(1).double().cpu()
    else:
        sigma = torch.full((n,), float(o["sigma0"]), dtype=torch.float64)
    lr = torch.full((n,), float(o["lr"]), dtype=torch.float64)
    fails = [0] * n
    iters = [0] * n
    phase = ["plus"] * n
    done = [False] * n
    traces: list[list[list[float]]] = [[] for _ in range(n)]

    def evaluate(idx: list[int], sig: torch.Tensor):
        sub = _sub_context(ctx, idx)
        s = sig.to(device=x.device, dtype=x.dtype)
        attr = map_at(sub, s)
        return attr, fn(sub, attr, s).cpu()

    all_idx = list(range(n))
    best_attr, value = evaluate(all_idx, sigma)
    best_attr = best_attr.clone()
    for i in all_idx:
        traces[i].append([float(sigma[i]), float(value[i]), True])
    while True:
        active = [i for i in all_idx if not done[i]]
        if not active:
            break
        trial = torch.tensor([abs(float(sigma[i]) + (lr[i] if phase[i] == "plus" else -lr[i]).item())
                              for i in active], dtype=torch.float64)
        attr, val = evaluate(active, trial)
        for k, i in enumerate(active):
            v = float(val[k])
            worse = v > float(value[i])
            traces[i].append([float(trial[k]), v, not worse])
            if not worse:
                sigma[i], value[i] = trial[k], v
                best_attr[i] = attr[k]
                fails[i] = 0
                phase[i] = "plus"
                iters[i] += 1
            elif phase[i] == "plus":
                phase[i] = "minus"
                continue
            else:
                lr[i] *= float(o["decay"])
                fails[i] += 1
                phase[i] = "plus"
                iters[i] += 1
            if fails[i] >= o["patience"] or iters[i] >= o["max_iter"]:
                done[i] = True
    return {"attributions": best_attr,
            "extras": {"sigma": sigma.to(device=x.device, dtype=torch.float32),
                       "objective_value": value.to(torch.float32),
                       "objective_trace": traces}}


__all__ = ["adaptive_noising", "ADAPTIVE_DEFAULTS", "OBJECTIVES"]
