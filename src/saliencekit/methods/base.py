"""Method registry, per-call context and argument checks shared by all methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .. import engine, noise
from ..hooks import capture
from ..models import Preprocessing

REGISTRY: Dict[str, "MethodSpec"] = {}


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


def register(name: str, *, defaults: Dict[str, Any], heatmap: Optional[Dict[str, Any]] = None,
             doc: str = "", stochastic: bool = False, class_target_only: bool = False, clean_pass: bool = False):
    """Register a method; ``defaults`` lists every option it accepts (unknown ones are refused).

    ``clean_pass``: the method's first use of the score is one engine pass over exactly the clean
    batch (one row per image) and it reads neither ``ctx.classes`` nor ``ctx.clean_outputs``; then
    ``explain`` resolves ``target="predicted"`` from that pass instead of a separate clean forward.
    """
    def deco(fn):
        hm = {"sign": "abs", "channels": "sum", "clip": 99, "normalize": True}
        hm.update(heatmap or {})
        REGISTRY[name] = MethodSpec(name, fn, dict(defaults), hm, doc or (fn.__doc__ or "").strip(),
                                    stochastic, class_target_only, clean_pass)
        return fn
    return deco


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

    def chunk(self, total_rows: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return engine.auto_batch_size(self.x, total_rows)

    def run(self, plan: engine.Plan, on_sample: Callable, site: Optional[nn.Module] = None, score=None) -> None:
        total = plan.n_images * plan.n_samples * plan.n_steps
        engine.run(self.model, plan, score if score is not None else self.score, on_sample,
                   batch_size=self.chunk(total), site=site, progress=self.progress)

    def scores_at(self, points: torch.Tensor, image_index: torch.Tensor, score=None) -> torch.Tensor:
        """Selected scores at arbitrary points (no gradient), evaluated in chunks."""
        sc = score if score is not None else self.score
        out = []
        bs = self.chunk(points.shape[0])
        layers = list(getattr(sc, "layers", ()) or ())
        with torch.no_grad():
            for s in range(0, points.shape[0], bs):
                with capture(layers) as captured:
                    o = engine.forward_scores(self.model, points[s:s + bs])
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


# ---- argument checks -------------------------------------------------------------------------

def positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected a positive int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v}")
    return v


def nonneg_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a non-negative number, got {type(v).__name__}")
    if not (v >= 0) or v != v or v == float("inf"):
        raise ValueError(f"{name}: expected a finite non-negative number, got {v}")
    return float(v)


def choice(name: str, v, options) -> str:
    if v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(str, options))}, got {v!r}")
    return v


def noise_sigma(ctx: Context, noise_level, stdev) -> torch.Tensor:
    """Per-image sigma: ``stdev`` (absolute) or ``noise_level * (max(x_i) - min(x_i))``."""
    if stdev is not None:
        return torch.full((ctx.n,), nonneg_float("stdev", stdev), device=ctx.x.device,
                          dtype=engine.acc_dtype(ctx.x.dtype))
    lvl = nonneg_float("noise_level", noise_level)
    flat = ctx.x.detach().reshape(ctx.n, -1).to(engine.acc_dtype(ctx.x.dtype))
    return lvl * (flat.amax(1) - flat.amin(1))
