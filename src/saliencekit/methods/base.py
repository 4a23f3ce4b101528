"""The method registry and the per-call context every method receives.

A method is one function decorated with :func:`register`. Its :class:`MethodSpec` is the single
source of truth that the rest of the package reads: ``explain`` (defaults, score space, target
rules), the CLI (``saliencekit methods``), the web explorer (the options a page shows and their
ranges, the cost estimate behind its progress bar) and ``evaluate`` (the method's evaluation
variants, e.g. ``smoothgrad_square`` or ``ig_blur``, with their heatmap and metric settings).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..core import chunking, engine, noise
from ..core.checks import nonneg_float
from ..core.guard import forward_scores
from ..core.hooks import capture
from ..core.targets import check_score_space
from ..models import Preprocessing

REGISTRY: Dict[str, "MethodSpec"] = {}
DEFAULT_HEATMAP = {"sign": "abs", "channels": "sum", "clip": 99, "normalize": True}


@dataclass(frozen=True)
class Option:
    """An option a user interface shows (web explorer form, help texts), with its range."""

    kind: str                     # "int" | "float" | "choice" | "layer"
    label: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: Tuple[str, ...] = ()
    help: str = ""

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"kind": self.kind, "label": self.label, "help": self.help}
        if self.lo is not None:
            d["min"], d["max"] = self.lo, self.hi
        if self.choices:
            d["choices"] = list(self.choices)
        return d


# options several methods share (each method lists the ones it shows)
N_SAMPLES = Option("int", "samples", 1, 500, help="noisy copies averaged")
NOISE_LEVEL = Option("float", "noise level", 0.0, 1.0, help="noise sigma as a fraction of the image's range")
N_STEPS = Option("int", "steps", 1, 300, help="points on the integration path")
LAYER = Option("layer", "layer", help="feature layer for the CAM (empty = automatic)")


@dataclass(frozen=True)
class Variant:
    """An evaluation variant: the method with fixed ``options``, heatmap overrides, and options for
    particular metrics (e.g. white instead of black deletion for the allegiance of negative maps)."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    heatmap: Mapping[str, Any] = field(default_factory=dict)
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default: bool = False        # in ``saliencekit evaluate``'s default set


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    defaults: Dict[str, Any]
    heatmap: Dict[str, Any]
    doc: str = ""
    stochastic: bool = False
    class_target_only: bool = False
    clean_pass: bool = False
    score: str = "logit"                                    # default score space
    ui: Dict[str, Option] = field(default_factory=dict)     # options a user interface shows
    cost: Optional[Callable[[Dict[str, Any]], float]] = None  # forward/backward rows per image
    variants: Dict[str, Variant] = field(default_factory=dict)
    showcase: bool = False       # in ``saliencekit explain``'s default set (the demo)

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    def rows_per_image(self, options: Dict[str, Any]) -> Optional[float]:
        """Estimated forward/backward rows per image with ``options`` (for progress), or ``None``."""
        opts = dict(self.defaults)
        opts.update(options)
        try:
            if self.cost is not None:
                return max(1.0, float(self.cost(opts)))
            if any(k in opts for k in ("n_samples", "n_steps")):
                return float(opts.get("n_samples", 1) or 1) * float(opts.get("n_steps", 1) or 1)
        except (TypeError, ValueError):
            pass
        return None


def register(name: str, *, defaults: Dict[str, Any], heatmap: Optional[Dict[str, Any]] = None, doc: str = "",
             stochastic: bool = False, class_target_only: bool = False, clean_pass: bool = False,
             score: str = "logit", ui: Optional[Dict[str, Option]] = None,
             cost: Optional[Callable[[Dict[str, Any]], float]] = None,
             variants: Optional[Dict[str, Variant]] = None, showcase: bool = False):
    """Register a method; ``defaults`` lists every option it accepts (unknown ones are refused).

    ``clean_pass``: the method's first use of the score is one engine pass over exactly the clean
    batch (one row per image) and it reads neither ``ctx.classes`` nor ``ctx.clean_outputs``; then
    ``explain`` resolves ``target="predicted"`` from that pass instead of a separate clean forward.
    ``score``: the default score space (``explain(score=...)`` overrides it). ``ui``: the options a
    user interface shows, with ranges. ``cost(options)``: rows per image. ``variants``: evaluation
    names beyond the method's own (``evaluate`` always offers the plain method under its name; a
    variant under the method's own name sets how the plain method is evaluated). ``showcase``: in
    the default set of ``saliencekit explain``.
    """
    check_score_space(score)
    unknown = sorted(set(ui or {}) - set(defaults))
    if unknown:
        raise ValueError(f"ui: {name!r} shows options it does not accept: {', '.join(unknown)}")

    def deco(fn):
        hm = dict(DEFAULT_HEATMAP)
        hm.update(heatmap or {})
        REGISTRY[name] = MethodSpec(name, fn, dict(defaults), hm, doc or (fn.__doc__ or "").strip(), stochastic,
                                    class_target_only, clean_pass, score, dict(ui or {}), cost,
                                    dict(variants or {}), showcase)
        return fn
    return deco


def get(name) -> MethodSpec:
    """The spec of a registered method; an unknown name lists close ones and every method."""
    if not isinstance(name, str):
        raise TypeError(f"method: expected a method name, got {type(name).__name__}")
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"method: unknown method {name!r}{hint}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


@dataclass
class Context:
    """What a method needs: the guarded model, the batch, the resolved score, seed and chunking."""

    model: nn.Module
    x: torch.Tensor
    score: Any                      # ClassScore / CustomScore (has .rows and .layers)
    classes: Optional[torch.Tensor]  # resolved class per image (None for unit targets)
    clean_outputs: torch.Tensor
    seed: int
    batch_size: Optional[int]
    preprocessing: Preprocessing
    progress: Optional[Callable[[int], None]] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    image_ids: Optional[List[int]] = None  # noise key per image (default: position in the batch)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def noise_key(self, i: int) -> int:
        """The integer that keys image i's noise: its id, so batch composition never matters."""
        return self.image_ids[i] if self.image_ids is not None else i

    def normal(self, shape, i: int, j: int, stream: int) -> torch.Tensor:
        """N(0, 1) noise for (image i of this batch, sample j): a pure function of (seed, id, j, stream)."""
        return noise.normal(shape, self.seed, self.noise_key(i), j, stream=stream, device=self.x.device,
                            dtype=self.x.dtype)

    def uniform(self, shape, i: int, j: int, stream: int) -> torch.Tensor:
        """U[0, 1) noise for (image i of this batch, sample j)."""
        return noise.uniform(shape, self.seed, self.noise_key(i), j, stream=stream, device=self.x.device,
                             dtype=self.x.dtype)

    def policy(self, total_rows: int) -> chunking.ChunkPolicy:
        """The chunk policy for a loop of ``total_rows`` rows shaped like the input."""
        return chunking.for_gradients(self.x, total_rows, self.batch_size)

    def run(self, plan: engine.Plan, on_sample: Callable, site: Optional[nn.Module] = None, score=None) -> None:
        engine.run(self.model, plan, score if score is not None else self.score, on_sample,
                   policy=self.policy(plan.total), site=site, progress=self.progress)

    def scores_at(self, points: torch.Tensor, image_index: torch.Tensor, score=None) -> torch.Tensor:
        """Selected scores at arbitrary points (no gradient), evaluated in chunks."""
        sc = score if score is not None else self.score
        out = []
        bs = self.policy(points.shape[0]).rows
        layers = list(getattr(sc, "layers", ()) or ())
        with torch.no_grad():
            for s in range(0, points.shape[0], bs):
                with capture(layers) as captured:
                    o = forward_scores(self.model, points[s:s + bs])
                    out.append(sc.rows(o, image_index[s:s + bs].to(o.device), captured))
        return torch.cat(out).to(engine.acc_dtype(self.x.dtype))


class Moments:
    """Running per-image sums of a per-sample attribution and of its square."""

    def __init__(self, n_images: int, shape, device, need_square: bool, dtype: torch.dtype = torch.float32):
        self.s1 = torch.zeros((n_images,) + tuple(shape), device=device, dtype=engine.acc_dtype(dtype))
        self.s2 = torch.zeros_like(self.s1) if need_square else None
        self.count = torch.zeros(n_images, device=device)

    def add(self, i: int, a: torch.Tensor) -> None:
        self.s1[i].add_(a)
        if self.s2 is not None:
            self.s2[i].addcmul_(a, a)
        self.count[i] += 1

    def result(self, estimator: str) -> torch.Tensor:
        c = self.count.view((-1,) + (1,) * (self.s1.dim() - 1)).clamp(min=1)
        mean = self.s1 / c
        if estimator == "mean":
            return mean
        if estimator == "square":
            return self.s2 / c
        if estimator == "var":
            return self.s2 / c - mean * mean
        raise ValueError(f"estimator: expected mean, square or var, got {estimator!r}")


def noise_sigma(ctx: Context, noise_level, stdev) -> torch.Tensor:
    """Per-image sigma: ``stdev`` (absolute) or ``noise_level * (max(x_i) - min(x_i))``."""
    if stdev is not None:
        return torch.full((ctx.n,), nonneg_float("stdev", stdev), device=ctx.x.device,
                          dtype=engine.acc_dtype(ctx.x.dtype))
    lvl = nonneg_float("noise_level", noise_level)
    flat = ctx.x.detach().reshape(ctx.n, -1).to(engine.acc_dtype(ctx.x.dtype))
    return lvl * (flat.amax(1) - flat.amin(1))
