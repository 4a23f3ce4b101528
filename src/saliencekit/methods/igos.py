"""I-GOS (Qi, Khorram, Li, AAAI 2020): a low-resolution deletion mask optimised with
integrated-gradient descent directions and an Armijo line search, for a whole batch at once.

Notation (docs/igos.md): ``M`` is the s_h x s_w mask in [0, 1] (1 = keep the pixel), ``up`` the bilinear
upsampling (``align_corners=True``) to the input size, ``x~`` the blurred image and
``Phi(M) = x * up(M) + x~ * (1 - up(M))``. The plain objective per image is

    F(M) = p_c(Phi(M)) + l1 * mean|1 - M| + tv * (mean|dv M|^beta + mean|dh M|^beta)

and the descent direction is the gradient w.r.t. ``M`` of the path-averaged, noisy score

    (1/S) sum_{s=1..S} p_c(x~ + (s/S) up(M) (x - x~) + n_s)  + l1 L1(M) + tv TV(M).

The expensive part, the input gradient at every (image, path step) point, goes through the
engine in chunks; the chain rule gives d/d up(M) = sum_channels (s/S) (x - x~) g_s, which the
engine's step weights ``(s/S)/S`` fold per image, and autograd through the upsampling gives its
adjoint. The noise ``n_s`` is a pure function of (seed, image, iteration * S + s), so maps are
identical for any chunk size or batch composition. The Armijo backtracking is vectorised over
images: each image keeps its own step size and acceptance, and the candidate masks of all
images still searching are evaluated in one batched (chunked) forward per backtracking round.

Presets (``preset=``, docs/igos.md "Presets"): the schedule of the optimisation, as saliencekit
runs it by default or as each authors' code runs it: which objective the Armijo test evaluates
(and with which noise), the path noise (std, channels), the first step, what happens at the step
floor, the AAAI code's lambda1 schedule and its path divisor. A :class:`Schedule` holds them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from ..core import engine, noise
from ..core.checks import nonneg_float, positive_float, positive_int
from ..core.imageops import gaussian_blur
from ..core.targets import RecordingScore
from .base import Context, Option, register

# ``noise``, ``step_init`` and ``line_search`` default to None: the preset's value (saliencekit's:
# 0.2, 200, "path"); a value given overrides the preset's.
IGOS_DEFAULTS = {"mask_size": 28, "iterations": 15, "ig_steps": 20, "l1": 1.0, "tv": 20.0, "tv_beta": 2,
                 "noise": None, "step_init": None, "blur_kernel": 51, "blur_sigma": 50.0,
                 "line_search": None, "preset": "saliencekit"}
LINE_SEARCH = ("path", "plain", "path_fresh")

MASK_MIN, MASK_MAX = 7, 224
ARMIJO_C = 1e-4      # sufficient-decrease constant (both authors' codes)
STEP_SHRINK = 0.2    # backtracking factor (both authors' codes)
STEP_FLOOR = 1e-5    # the step limit; what happens there is the schedule's ``floor`` rule


@dataclass(frozen=True)
class Schedule:
    """The knobs a preset sets (docs/igos.md, "Presets").

    ``line_search``: the function the Armijo test evaluates: ``"path"`` the iteration's
    path-averaged noisy objective with the direction's own noise draws; ``"path_fresh"`` the same
    objective with new draws for the current mask and for every candidate (IGOS_pp); ``"plain"``
    ``F`` (no path, no noise; the AAAI code).
    ``noise``: std of the path noise in model space; ``noise_channels``: ``"all"``, or ``"first"``
    (channel 0 only, as the AAAI code's ``cv2.randn`` with a scalar std draws).
    ``step_init``: the first step of every line search.
    ``floor``: ``"clamp"``: shrinking stops at ``STEP_FLOOR`` and a candidate at that step is taken
    (saliencekit); ``"below"``: shrinking goes on and the first step below ``STEP_FLOOR`` is taken
    after its evaluation (both authors' codes: 200 * 0.2**11 = 1000 * 0.2**12 = 4.096e-6).
    ``l1_schedule``: ``None``, or ``"aaai"`` (lambda1 / 10 and / 5 when the class score has not moved,
    :func:`aaai_l1_update`).
    ``path_divisor``: the path sum of scores is divided by this constant (the AAAI code's 20.0)
    instead of by the number of path steps (``None``).
    """

    line_search: str
    noise: float
    noise_channels: str
    step_init: float
    floor: str
    l1_schedule: str | None
    path_divisor: int | None


PRESETS = {
    "saliencekit": Schedule(line_search="path", noise=0.2, noise_channels="all", step_init=200.0, floor="clamp",
                            l1_schedule=None, path_divisor=None),
    "aaai": Schedule(line_search="plain", noise=0.4, noise_channels="first", step_init=200.0, floor="below",
                     l1_schedule="aaai", path_divisor=20),
    "igos_pp": Schedule(line_search="path_fresh", noise=0.2, noise_channels="all", step_init=1000.0, floor="below",
                        l1_schedule=None, path_divisor=None),
}

# The AAAI code's lambda1 schedule (IGOS_generate_video.py, lines 352-362), checked after the mask
# update of iteration t (0-based) when iterations > 3: (iterations divided by, threshold on
# |p(M_0) - p(M_{t-1})|, lambda1 divided by); the first check whose iteration matches applies.
AAAI_L1_CHECKS = ((2.0, 0.001, 10.0), (1.25, 0.01, 5.0))


# ---- option checks ---------------------------------------------------------------------------

def mask_shape(mask_size, input_hw: tuple[int, int]) -> tuple[int, int]:
    """``mask_size`` (int or (h, w)) -> (h, w), each side in 7..224 and at most the input side."""
    if isinstance(mask_size, (tuple, list)):
        if len(mask_size) != 2:
            raise ValueError(f"mask_size: expected an int or an (h, w) pair, got {mask_size!r}")
        sides = tuple(mask_size)
    else:
        sides = (mask_size, mask_size)
    for v in sides:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"mask_size: expected an int or an (h, w) pair of ints, got {mask_size!r}")
        if not MASK_MIN <= v <= MASK_MAX:
            raise ValueError(f"mask_size: each side must be in {MASK_MIN}..{MASK_MAX}, got {mask_size!r}")
    for v, n, what in zip(sides, input_hw, ("height", "width")):
        if v > n:
            raise ValueError(f"mask_size: the mask {what} {v} exceeds the input {what} {n}")
    return int(sides[0]), int(sides[1])


def resolve_schedule(preset, *, line_search=None, noise=None, step_init=None) -> Schedule:
    """The preset's :class:`Schedule` (``None`` = ``"saliencekit"``), with the options given
    (not ``None``) overriding its ``line_search``, ``noise`` and ``step_init``."""
    name = "saliencekit" if preset is None else preset
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)} (or None), got {preset!r}")
    over = {}
    if line_search is not None:
        if line_search not in LINE_SEARCH:
            raise ValueError(f"line_search: expected one of {', '.join(LINE_SEARCH)} (or None: the preset's), "
                             f"got {line_search!r}")
        over["line_search"] = line_search
    if noise is not None:
        over["noise"] = nonneg_float("noise", noise)
    if step_init is not None:
        over["step_init"] = positive_float("step_init", step_init)
    return replace(PRESETS[name], **over)


# ---- building blocks (also used by the tests) -------------------------------------------------

def upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with ``align_corners=True`` (B x 1 x h x w -> B x 1 x H x W)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=True)


def regulariser(masks: torch.Tensor, l1, tv: float, tv_beta: float) -> torch.Tensor:
    """Per image: ``l1 * mean|1 - M| + tv * (mean|dv M|^beta + mean|dh M|^beta)`` (``l1`` a number
    or one value per image)."""
    b = masks.shape[0]
    r = l1 * (1 - masks).abs().reshape(b, -1).mean(1)
    if tv:
        dv = (masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().pow(tv_beta).reshape(b, -1).mean(1)
        dh = (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().pow(tv_beta).reshape(b, -1).mean(1)
        r = r + tv * (dv + dh)
    return r


def aaai_l1_update(t: int, iterations: int, scores, l1: torch.Tensor) -> torch.Tensor:
    """lambda1 per image after iteration ``t`` (0-based) under the AAAI code's schedule.

    ``scores[k]`` is the class score p(M_k) of the mask after k updates (k = 0 .. t + 1). The code
    keeps ``curve2 = [p(M_0), p(M_0), p(M_1), ...]`` and tests ``curve2[t]``, i.e. p(M_{t-1}): at
    ``t == int(iterations / 2)`` lambda1 is divided by 10 where ``|p(M_0) - p(M_{t-1})| <= 0.001``,
    else at ``t == int(iterations / 1.25)`` by 5 where it is ``<= 0.01``; only when
    ``iterations > 3``. The new lambda1 holds for the later iterations.
    """
    if iterations <= 3:
        return l1
    for div, threshold, factor in AAAI_L1_CHECKS:
        if t == int(iterations / div):
            moved = (scores[0] - scores[t - 1]).abs().to(l1.device)
            return torch.where(moved <= threshold, l1 / factor, l1)
    return l1


class IGOS:
    """One batched I-GOS optimisation (state shared by the direction and the line search).

    ``l1`` is a number, or one value per image (a tensor) when a lambda1 schedule runs.
    ``noise_channels`` and ``path_divisor``: see :class:`Schedule`.
    """

    def __init__(self, ctx: Context, mask_hw: tuple[int, int], *, ig_steps: int, l1, tv: float,
                 tv_beta: float, noise_sigma: float, baseline: torch.Tensor, noise_channels: str = "all",
                 path_divisor: int | None = None):
        self.ctx = ctx
        self.x = ctx.x.detach()
        self.base = baseline.to(dtype=self.x.dtype)
        self.diff = self.x - self.base
        self.size = tuple(self.x.shape[-2:])
        self.mask_hw = mask_hw
        self.S = ig_steps
        self.l1, self.tv, self.tv_beta = l1, tv, tv_beta
        self.sigma = noise_sigma
        self.channels = noise_channels
        self.div = path_divisor

    def _up(self, masks: torch.Tensor) -> torch.Tensor:
        return upsample(masks, self.size).to(self.x.dtype)

    def _l1(self, index: torch.Tensor):
        """lambda1 for the images ``index`` (the number itself when it is one for all)."""
        if isinstance(self.l1, torch.Tensor):
            return self.l1[index.to(self.l1.device)]
        return self.l1

    def _path_mean(self, sc: torch.Tensor) -> torch.Tensor:
        """Rows x S path scores -> the path average (sum / S, or sum / the preset's divisor)."""
        return sc.mean(1) if self.div is None else sc.sum(1) / self.div

    def plain(self, masks: torch.Tensor, index: torch.Tensor):
        """(F(M), p_c(Phi(M))) for the images ``index`` (no noise, no path); masks is len(index) x 1 x h x w."""
        with torch.no_grad():
            pts = self.base[index] + self._up(masks) * self.diff[index]
            s = self.ctx.scores_at(pts, index).float()
            return s + regulariser(masks.float(), self._l1(index), self.tv, self.tv_beta).to(s.device), s

    def objective(self, masks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Plain F(M) (no noise, no path) for the images ``index``; masks is len(index) x 1 x h x w."""
        return self.plain(masks, index)[0]

    def _fresh_normal(self, i: int, iteration: int, draw: int, s: int) -> torch.Tensor:
        """N(0, 1) for image i, keyed by (seed, image id, iteration, draw, path step) (``path_fresh``)."""
        g = noise.generator(self.ctx.seed, noise.STREAM_IGOS, self.ctx.noise_key(i), iteration, draw, s,
                            device=self.x.device)
        return torch.randn(tuple(self.x.shape[1:]), generator=g, device=g.device, dtype=self.x.dtype).to(self.x.device)

    def _points(self, up: torch.Tensor, img: torch.Tensor, stp: torch.Tensor, iteration: int,
                draw: int | None = None) -> torch.Tensor:
        """Path points x~ + (s/S) up (x - x~) + n_s for rows (image img, step index stp = s - 1).

        ``up`` is indexed by ``img``; the noise is a pure function of (seed, the image's id,
        iteration*S + stp), or with ``draw`` of (seed, id, iteration, draw, stp), so neither the
        chunk size nor the rest of the batch changes it.
        """
        x, S = self.x, self.S
        img_d, stp_d = img.to(x.device), stp.to(x.device)
        alpha = (stp_d.to(x.dtype) + 1) / S
        pts = self.base[img_d] + alpha.view(-1, 1, 1, 1) * up * self.diff[img_d]
        if self.sigma > 0:
            if draw is None:
                eps = torch.stack([self.ctx.normal(x.shape[1:], i, iteration * S + s, noise.STREAM_IGOS)
                                   for i, s in zip(img.tolist(), stp.tolist())])
            else:
                eps = torch.stack([self._fresh_normal(i, iteration, draw, s)
                                   for i, s in zip(img.tolist(), stp.tolist())])
            if self.channels == "first":
                eps[:, 1:] = 0
            pts = pts + self.sigma * eps
        return pts

    def path_objective(self, masks: torch.Tensor, index: torch.Tensor, iteration: int,
                       draw: int | None = None) -> torch.Tensor:
        """The function whose gradient is the direction of ``iteration``: the path-averaged noisy
        score plus the regularisers, for the images ``index``; with the direction's noise draws,
        or with the fresh draws ``draw`` (``line_search="path_fresh"``)."""
        S = self.S
        n = index.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=masks.device)
        per = max(1, 64 // S)  # images per group: bounds the memory of the stacked path points
        with torch.no_grad():
            up = self._up(masks)
            for a in range(0, n, per):
                b = min(n, a + per)
                img = index[a:b].cpu().repeat_interleave(S)
                stp = torch.arange(S).repeat(b - a)
                pts = self._points(up[a:b].repeat_interleave(S, 0), img, stp, iteration, draw)
                sc = self._path_mean(self.ctx.scores_at(pts, img.to(pts.device)).float().view(b - a, S))
                out[a:b] = sc.to(out.device)
            return out + regulariser(masks.float(), self._l1(index), self.tv, self.tv_beta).to(out.device)

    def direction(self, masks: torch.Tensor, iteration: int):
        """Gradient w.r.t. M of the noisy path-averaged score plus the regularisers (B x 1 x h x w),
        and the value of that path objective at ``masks`` (B), read off the same forward passes."""
        x, S = self.x, self.S
        n = x.shape[0]
        up = self._up(masks.detach())

        def make(img, smp, stp):
            return self._points(up[img.to(x.device)], img, stp, iteration)

        # d/d up(M) of (1/S) sum_s p(x~ + (s/S) up(M) (x - x~) + n_s) = sum_c (x - x~) sum_s (s/S)/S g_s
        g_up = torch.zeros((n, 1) + self.size, dtype=torch.float32, device=x.device)

        def on_sample(i, j, g, point):
            g_up[i, 0] = (g * self.diff[i].float()).sum(0)

        rec = RecordingScore(self.ctx.score)
        div = S if self.div is None else self.div
        weights = [(s / S) / div for s in range(1, S + 1)]
        self.ctx.run(engine.Plan(n, 1, make, n_steps=S, step_weights=weights), on_sample, score=rec)
        path_scores = self._path_mean(torch.cat(rec.values).float().view(n, S)).to(masks.device)
        with torch.enable_grad():
            m = masks.detach().float().requires_grad_(True)
            u = upsample(m, self.size)
            d_score, = torch.autograd.grad(u, m, grad_outputs=g_up)
            reg = regulariser(m, self.l1, self.tv, self.tv_beta)
            if bool(torch.as_tensor(self.l1).ne(0).any()) or self.tv:
                d_reg, = torch.autograd.grad(reg.sum(), m)
                d_score = d_score + d_reg
        return d_score.detach(), path_scores + reg.detach().to(path_scores.device)

    def line_search(self, masks: torch.Tensor, d: torch.Tensor, f0: torch.Tensor, step_init: float, objective,
                    floor: str = "clamp"):
        """Armijo backtracking per image on ``objective`` (``f0`` its value at ``masks``).

        ``objective(candidates, index, round)`` returns (values, class scores or None) for the images
        ``index``; ``round`` counts the backtracking rounds from 1. ``floor``: see :class:`Schedule`.
        Returns (new masks, their objective values, their class scores or None, accepted steps).
        """
        n = masks.shape[0]
        dev = masks.device
        step = torch.full((n,), float(step_init), device=dev)
        dn2 = d.pow(2).reshape(n, -1).sum(1)
        new_m = masks.clone()
        new_f = f0.clone()
        new_s = None
        pending = torch.ones(n, dtype=torch.bool, device=dev)
        rnd = 0
        while bool(pending.any()):
            rnd += 1
            p = pending.nonzero()[:, 0]
            sp = step[p].view(-1, 1, 1, 1)
            cand = (masks[p] - sp * d[p]).clamp(0, 1)
            fc, sc = objective(cand, p, rnd)
            fc = fc.to(dev)
            ok = fc <= f0[p] - ARMIJO_C * step[p] * dn2[p]
            if floor == "clamp":
                acc = ok | (step[p] <= STEP_FLOOR)
            else:  # "below": the first step under the floor is taken after its evaluation
                acc = ok | (step[p] < STEP_FLOOR)
            pa = p[acc]
            new_m[pa] = cand[acc]
            new_f[pa] = fc[acc]
            if sc is not None:
                if new_s is None:
                    new_s = torch.full((n,), float("nan"), device=dev)
                new_s[pa] = sc.to(dev)[acc]
            pending[pa] = False
            pr = p[~acc]
            if floor == "clamp":
                step[pr] = (step[pr] * STEP_SHRINK).clamp(min=STEP_FLOOR)
            else:
                step[pr] = step[pr] * STEP_SHRINK
        return new_m, new_f, new_s, step


@dataclass
class IGOSRun:
    """What :func:`run_igos` returns: the masks (B x 1 x h x w); per image, the plain F and the class
    score p_c(Phi(M)) before and after every iteration (B x (T+1)), the accepted steps and the
    lambda1 of every iteration (B x T)."""

    masks: torch.Tensor
    objective: torch.Tensor
    score: torch.Tensor
    step: torch.Tensor
    l1: torch.Tensor


def run_igos(ctx: Context, *, mask_hw, iterations: int, ig_steps: int, l1: float, tv: float, tv_beta: float,
             baseline: torch.Tensor, schedule: Schedule | None = None) -> IGOSRun:
    """Optimise all images' masks together under ``schedule`` (default: saliencekit's).

    ``objective[:, t + 1]`` is F(M_{t+1}) with the lambda1 of iteration t. Line searches:
    ``"path"``: Armijo on the iteration's path-averaged noisy objective with the direction's noise
    (its value at M read off the direction's forwards); ``"path_fresh"``: the same objective with
    fresh draws for M (draw 0) and for the candidates of round r (draw r), as IGOS_pp does;
    ``"plain"``: on F (one forward per candidate instead of ``ig_steps``).
    """
    sch = schedule if schedule is not None else PRESETS["saliencekit"]
    opt = IGOS(ctx, mask_hw, ig_steps=ig_steps, l1=l1, tv=tv, tv_beta=tv_beta, noise_sigma=sch.noise,
               baseline=baseline, noise_channels=sch.noise_channels, path_divisor=sch.path_divisor)
    n = ctx.n
    dev = ctx.x.device
    if sch.l1_schedule is not None:
        opt.l1 = torch.full((n,), float(l1), dtype=torch.float32, device=dev)
    masks = torch.ones((n, 1) + tuple(mask_hw), dtype=torch.float32, device=dev)
    idx = torch.arange(n, device=dev)
    f, s = opt.plain(masks, idx)
    f, s = f.to(dev), s.to(dev)
    trace, scores, steps, l1s = [f], [s], [], []
    for it in range(iterations):
        l1s.append(torch.as_tensor(opt.l1, dtype=torch.float32, device=dev).expand(n).clone())
        d, f_path = opt.direction(masks, it)
        if sch.line_search == "plain":
            masks, f, s, step = opt.line_search(masks, d, f, sch.step_init, lambda m, index, r: opt.plain(m, index),
                                                sch.floor)
        else:
            if sch.line_search == "path":
                def obj(m, index, r, it=it):
                    return opt.path_objective(m, index, it), None
                g0 = f_path
            else:  # "path_fresh"
                def obj(m, index, r, it=it):
                    return opt.path_objective(m, index, it, draw=r), None
                g0 = opt.path_objective(masks, idx, it, draw=0).to(dev)
            masks, _, _, step = opt.line_search(masks, d, g0, sch.step_init, obj, sch.floor)
            f, s = opt.plain(masks, idx)
        f, s = f.to(dev), s.to(dev)
        trace.append(f)
        scores.append(s)
        steps.append(step)
        if sch.l1_schedule == "aaai":
            new = aaai_l1_update(it, iterations, scores, opt.l1)
            if not torch.equal(new, opt.l1):
                opt.l1 = new
                # the next Armijo base F(M) with the new lambda1 (the code recomputes it every iteration)
                f = s + regulariser(masks.float(), new, tv, tv_beta).to(dev)
    return IGOSRun(masks, torch.stack(trace, 1), torch.stack(scores, 1), torch.stack(steps, 1), torch.stack(l1s, 1))


def blurred_baseline(ctx: Context, kernel: int, sigma: float) -> torch.Tensor:
    """The blurred image x~: Gaussian blur of the [0, 1] image, normalised back to model space."""
    pp = ctx.preprocessing
    x = ctx.x.detach()
    return pp.normalize(gaussian_blur(pp.denormalize(x), kernel, sigma))


@register("igos", defaults=IGOS_DEFAULTS, stochastic=True, score="softmax",
          heatmap={"sign": "abs", "channels": "sum", "clip": None},
          ui={"mask_size": Option("int", "mask size", 7, 224, help="I-GOS mask resolution (s x s)"),
              "iterations": Option("int", "iterations", 1, 100, help="I-GOS optimisation steps"),
              "preset": Option("choice", "preset", choices=tuple(PRESETS),
                               help="schedule: saliencekit's, the AAAI code's (aaai) or IGOS_pp's (igos_pp)")},
          cost=lambda o: o["iterations"] * o["ig_steps"])
def igos(ctx: Context, mask_size, iterations, ig_steps, l1, tv, tv_beta, noise, step_init, blur_kernel, blur_sigma,
         line_search, preset):
    """I-GOS (Qi et al. 2020): a mask M optimised with integrated-gradient directions; heatmap 1 - M.

    ``mask_size``: int in 7..224 or an (h, w) pair (default 28); ``iterations`` (15) descent
    steps, each with ``ig_steps`` (20) path points plus Gaussian noise of std ``noise`` (model
    space); ``l1`` (1) and ``tv`` (20) weight mean|1 - M| and the total variation with exponent
    ``tv_beta`` (2); Armijo line search from ``step_init`` on the objective ``line_search``. The
    blurred image (kernel ``blur_kernel`` 51, sigma ``blur_sigma`` 50, on [0, 1] pixels) replaces
    deleted pixels. ``preset``: ``"saliencekit"`` (default: noise 0.2, step 200, ``"path"``),
    ``"aaai"`` (the AAAI code's schedule) or ``"igos_pp"`` (IGOS_pp's); ``noise``, ``step_init``
    and ``line_search`` left at None take the preset's value, a value given overrides it
    (docs/igos.md, "Presets"). Extras: ``mask`` (B x 1 x h x w), ``objective`` and ``score``
    (B x (iterations + 1)), ``step`` and ``l1`` (B x iterations), ``schedule`` (the knobs used).
    """
    hw = mask_shape(mask_size, tuple(ctx.x.shape[-2:]))
    positive_int("iterations", iterations)
    positive_int("ig_steps", ig_steps)
    l1 = nonneg_float("l1", l1)
    tv = nonneg_float("tv", tv)
    tv_beta = nonneg_float("tv_beta", tv_beta)
    if tv_beta < 1:
        raise ValueError(f"tv_beta: expected a number >= 1 (the TV term must be differentiable), got {tv_beta}")
    sched = resolve_schedule(preset, line_search=line_search, noise=noise, step_init=step_init)
    positive_int("blur_kernel", blur_kernel)
    if blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel: expected an odd positive size, got {blur_kernel}")
    blur_sigma = positive_float("blur_sigma", blur_sigma)
    base = blurred_baseline(ctx, blur_kernel, blur_sigma)
    res = run_igos(ctx, mask_hw=hw, iterations=iterations, ig_steps=ig_steps, l1=l1, tv=tv, tv_beta=tv_beta,
                   baseline=base, schedule=sched)
    attr = 1 - upsample(res.masks, tuple(ctx.x.shape[-2:]))
    return {"attributions": attr,
            "extras": {"mask": res.masks, "objective": res.objective, "score": res.score, "step": res.step,
                       "l1": res.l1, "schedule": dict(asdict(sched), preset=preset or "saliencekit")}}
