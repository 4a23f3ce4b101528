"""Adaptive noising (Goh et al. 2021, section 3.3): a per-image search for the noise scale.

Per image, the noise scale sigma of SmoothTaylor is chosen to minimise an objective A(sigma):
``"aupc"`` (region perturbation, ``metrics.aupc`` on the signed channel-sum heatmap) or
``"autvc"`` (multi-scale total variation, ``metrics.total_variation``), or a callable
``A(attributions, sigma) -> one value per image`` (attributions B x C x H x W, sigma B).

The search is that of the authors' code (garygsw/smooth-taylor, ``adapt_noise`` in
``experiment_adaptive_noising.py``), per image. Start at ``sigma = mean(|x|)`` (model space) with
``A_cur = A(sigma)``, ``lr = 0.1``, best = (sigma, A_cur), no failures. Each iteration:

- evaluate ``|sigma + lr|``; if its value is worse (strictly larger) than ``A_cur``, evaluate
  ``|sigma - lr|``. The search moves to the last sigma evaluated **either way**;
- if the value reached is worse than ``A_cur`` (a failure): while fewer than ``patience`` (3)
  failures are counted in a row, ``lr *= decay`` (0.9) and one more is counted; otherwise the
  search stops, so the 4th consecutive failure stops it;
- else (ties included): the failure count resets to 0 (``lr`` keeps its decayed value) and the
  best becomes the sigma reached if its value is strictly below the best value;
- ``A_cur`` becomes the value reached (also after a failure: the next iteration compares with it).

At most ``max_iter`` (20) iterations, each of one or two evaluations, so at most
``1 + 2 * max_iter`` maps per image. The result is the map of the best evaluation, with
``extras["sigma"]`` (best sigma per image), ``extras["objective_value"]`` (its value) and
``extras["objective_trace"]``: per image, one ``[sigma, A, step, improved]`` entry per evaluation
in order, ``step`` ``"start"``, ``"+"`` (``|sigma + lr|``) or ``"-"`` (``|sigma - lr|``) and
``improved`` whether A was not worse than ``A_cur`` (``True`` for the start). The search moves to
every entry's sigma except a ``"+"`` entry with ``improved`` False (the ``"-"`` entry follows it);
a ``"-"`` entry with ``improved`` False is a failure. A NaN objective value counts as worse (the
authors' code, comparing with ``>``, would count it as an improvement).

Noise (``adaptive_options["noise"]``): ``"common"`` (default) gives every evaluation of an image
the same noise keys, those of a fixed-sigma call (common random numbers: values at different
sigmas differ by sigma alone, and the returned map equals ``smoothtaylor`` run with the chosen
sigma). ``"fresh"`` draws new noise for every evaluation, as the authors' code does (it calls
``torch.randn`` each time): evaluation k (0 = the start) of image id i draws from keys derived from
(seed, i, k), so it stays reproducible from the seed and independent of the chunk size and of the
other images in the batch; the objective's own draws (AUPC's perturbations) are fresh as well.
The map at each sigma comes from the caller (``smoothtaylor`` passes its fixed-sigma map).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..core import noise as _noise
from ..core.checks import choice, integer, nonneg_float, positive_float, positive_int
from ..core.targets import ClassScore
from ..metrics.aupc import aupc
from ..metrics.total_variation import total_variation
from .base import Context

ADAPTIVE_DEFAULTS = {"lr": 0.1, "max_iter": 20, "patience": 3, "decay": 0.9, "sigma0": None, "noise": "common",
                     "window": 15, "regions": 30, "draws": 50, "downscale": 1.5, "min_size": 30}
OBJECTIVES = ("aupc", "autvc")
NOISE_MODES = ("common", "fresh")
_FRESH_TAG = 0x5EED_F4E5  # separates the derived fresh-noise keys from plain image ids


def _sub_context(ctx: Context, idx: list[int], evals: list[int] | None = None) -> Context:
    """The images ``idx`` of ``ctx``; with ``evals`` (fresh noise), image ``idx[k]``'s noise keys
    derive from (its id, ``evals[k]``), else they are its id (common noise)."""
    sel = torch.tensor(idx, device=ctx.x.device)
    classes = ctx.classes[sel]
    space = getattr(ctx.score, "space", "logit")
    ids = [ctx.noise_key(i) for i in idx]
    if evals is not None:
        ids = [_noise.mix_seed(_FRESH_TAG, key, k) for key, k in zip(ids, evals)]
    return dataclasses.replace(ctx, x=ctx.x[sel], classes=classes, clean_outputs=ctx.clean_outputs[sel],
                               score=ClassScore(classes, space), image_ids=ids, extras={})


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
    for k in ("max_iter", "window", "regions", "draws", "min_size"):
        positive_int(f"adaptive_options[{k!r}]", o[k])
    if integer("adaptive_options['patience']", o["patience"]) < 0:
        raise ValueError(f"adaptive_options['patience']: expected an int >= 0, got {o['patience']}")
    for k in ("lr", "decay"):
        positive_float(f"adaptive_options[{k!r}]", o[k])
    if o["sigma0"] is not None:
        nonneg_float("adaptive_options['sigma0']", o["sigma0"])
    choice("adaptive_options['noise']", o["noise"], NOISE_MODES)
    return o


def _worse(v: float, ref: float) -> bool:
    """The authors' ``v > ref``, with NaN counted as worse (never as an improvement)."""
    return not v <= ref


def _better(v: float, best: float) -> bool:
    """Strictly below the best value (a NaN best is beaten by any number)."""
    return v < best or (best != best and v == v)


def adaptive_noising(ctx: Context, map_at: Callable[[Context, torch.Tensor], torch.Tensor], objective="aupc",
                     options: dict[str, Any] | None = None):
    """The per-image sigma search; ``map_at(sub_context, sigma)`` gives the attributions of the
    sub-batch at one sigma per image. Returns attributions at the best sigma, sigma and the traces.

    Every round evaluates each image still searching once (its ``+`` or ``-`` trial) in one batch;
    an image's decisions depend on its own values only, so its search is the same in any batch."""
    if ctx.classes is None:
        raise ValueError("target: adaptive noising explains a class; unit / callable targets are not supported")
    o = _check_options(options or {})
    fn = _objective_fn(ctx, objective, o)
    fresh = o["noise"] == "fresh"
    patience, max_iter, decay = o["patience"], o["max_iter"], float(o["decay"])
    n = ctx.n
    x = ctx.x.detach()
    if o["sigma0"] is None:
        sigma = x.reshape(n, -1).abs().mean(1).double().cpu()
    else:
        sigma = torch.full((n,), float(o["sigma0"]), dtype=torch.float64)
    cur = sigma.tolist()                # the sigma the search stands at
    lr = [float(o["lr"])] * n
    fails = [0] * n                     # consecutive failures
    iteration = [1] * n                 # the iteration under way (1-based, as the authors count)
    minus = [False] * n                 # the "+" trial of this iteration was worse: try "-"
    done = [False] * n
    traces: list[list[list[Any]]] = [[] for _ in range(n)]

    def evaluate(idx: list[int], sig: list[float]):
        sub = _sub_context(ctx, idx, [len(traces[i]) for i in idx] if fresh else None)
        s = torch.tensor(sig, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        attr = map_at(sub, s)
        return attr, fn(sub, attr, s).cpu().tolist()

    all_idx = list(range(n))
    attr, value = evaluate(all_idx, cur)
    best_attr = attr.clone()
    cur_val = list(value)
    best_sigma, best_val = list(cur), list(value)
    for i in all_idx:
        traces[i].append([cur[i], cur_val[i], "start", True])
    while True:
        active = [i for i in all_idx if not done[i]]
        if not active:
            break
        trial = [abs(cur[i] - lr[i]) if minus[i] else abs(cur[i] + lr[i]) for i in active]
        attr, val = evaluate(active, trial)
        for k, i in enumerate(active):
            t, v = trial[k], float(val[k])
            worse = _worse(v, cur_val[i])
            traces[i].append([t, v, "-" if minus[i] else "+", not worse])
            if worse and not minus[i]:
                minus[i] = True         # same iteration: evaluate |sigma - lr| next round
                continue
            minus[i] = False
            cur[i] = t                  # the move is taken whether or not it improved
            if worse:
                if fails[i] >= patience:
                    done[i] = True
                    continue
                lr[i] *= decay
                fails[i] += 1
            else:
                fails[i] = 0
                if _better(v, best_val[i]):
                    best_sigma[i], best_val[i] = t, v
                    best_attr[i] = attr[k]
            cur_val[i] = v
            iteration[i] += 1
            if iteration[i] > max_iter:
                done[i] = True
    return {"attributions": best_attr,
            "extras": {"sigma": torch.tensor(best_sigma, dtype=torch.float64).to(device=x.device,
                                                                                  dtype=torch.float32),
                       "objective_value": torch.tensor(best_val, dtype=torch.float32),
                       "objective_trace": traces}}


__all__ = ["adaptive_noising", "ADAPTIVE_DEFAULTS", "OBJECTIVES", "NOISE_MODES"]
