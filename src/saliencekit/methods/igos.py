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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import engine, noise
from ..core.checks import nonneg_float, positive_float, positive_int
from ..core.imageops import gaussian_blur
from ..core.targets import RecordingScore
from .base import Context, Option, register

IGOS_DEFAULTS = {"mask_size": 28, "iterations": 15, "ig_steps": 20, "l1": 1.0, "tv": 20.0, "tv_beta": 2,
                 "noise": 0.2, "step_init": 200.0, "blur_kernel": 51, "blur_sigma": 50.0,
                 "line_search": "path"}
LINE_SEARCH = ("path", "plain")

MASK_MIN, MASK_MAX = 7, 224
ARMIJO_C = 1e-4      # sufficient-decrease constant
STEP_SHRINK = 0.2    # backtracking factor
STEP_FLOOR = 1e-5    # smallest step; taken unconditionally when reached (as the authors' code does)


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


# ---- building blocks (also used by the tests) -------------------------------------------------

def upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with ``align_corners=True`` (B x 1 x h x w -> B x 1 x H x W)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=True)


def regulariser(masks: torch.Tensor, l1: float, tv: float, tv_beta: float) -> torch.Tensor:
    """Per image: ``l1 * mean|1 - M| + tv * (mean|dv M|^beta + mean|dh M|^beta)``."""
    b = masks.shape[0]
    r = l1 * (1 - masks).abs().reshape(b, -1).mean(1)
    if tv:
        dv = (masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().pow(tv_beta).reshape(b, -1).mean(1)
        dh = (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().pow(tv_beta).reshape(b, -1).mean(1)
        r = r + tv * (dv + dh)
    return r


class IGOS:
    """One batched I-GOS optimisation (state shared by the direction and the line search)."""

    def __init__(self, ctx: Context, mask_hw: tuple[int, int], *, ig_steps: int, l1: float, tv: float,
                 tv_beta: float, noise_sigma: float, baseline: torch.Tensor):
        self.ctx = ctx
        self.x = ctx.x.detach()
        self.base = baseline.to(dtype=self.x.dtype)
        self.diff = self.x - self.base
        self.size = tuple(self.x.shape[-2:])
        self.mask_hw = mask_hw
        self.S = ig_steps
        self.l1, self.tv, self.tv_beta = l1, tv, tv_beta
        self.sigma = noise_sigma

    def _up(self, masks: torch.Tensor) -> torch.Tensor:
        return upsample(masks, self.size).to(self.x.dtype)

    def objective(self, masks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Plain F(M) (no noise, no path) for the images ``index``; masks is len(index) x 1 x h x w."""
        with torch.no_grad():
            pts = self.base[index] + self._up(masks) * self.diff[index]
            s = self.ctx.scores_at(pts, index)
            return s.float() + regulariser(masks.float(), self.l1, self.tv, self.tv_beta).to(s.device)

    def _points(self, up: torch.Tensor, img: torch.Tensor, stp: torch.Tensor, iteration: int) -> torch.Tensor:
        """Path points x~ + (s/S) up (x - x~) + n_s for rows (image img, step index stp = s - 1).

        ``up`` is indexed by ``img``; the noise is a pure function of (seed, the image's id,
        iteration*S + stp), so neither the chunk size nor the rest of the batch changes it.
        """
        x, S = self.x, self.S
        img_d, stp_d = img.to(x.device), stp.to(x.device)
        alpha = (stp_d.to(x.dtype) + 1) / S
        pts = self.base[img_d] + alpha.view(-1, 1, 1, 1) * up * self.diff[img_d]
        if self.sigma > 0:
            eps = torch.stack([self.ctx.normal(x.shape[1:], i, iteration * S + s, noise.STREAM_IGOS)
                               for i, s in zip(img.tolist(), stp.tolist())])
            pts = pts + self.sigma * eps
        return pts

    def path_objective(self, masks: torch.Tensor, index: torch.Tensor, iteration: int) -> torch.Tensor:
        """The function whose gradient is the direction of ``iteration``: the path-averaged noisy
        score (same noise draws) plus the regularisers, for the images ``index``."""
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
                pts = self._points(up[a:b].repeat_interleave(S, 0), img, stp, iteration)
                sc = self.ctx.scores_at(pts, img.to(pts.device)).float().view(b - a, S).mean(1)
                out[a:b] = sc.to(out.device)
            return out + regulariser(masks.float(), self.l1, self.tv, self.tv_beta).to(out.device)

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
        weights = [(s / S) / S for s in range(1, S + 1)]
        self.ctx.run(engine.Plan(n, 1, make, n_steps=S, step_weights=weights), on_sample, score=rec)
        path_scores = torch.cat(rec.values).float().view(n, S).mean(1).to(masks.device)
        with torch.enable_grad():
            m = masks.detach().float().requires_grad_(True)
            u = upsample(m, self.size)
            d_score, = torch.autograd.grad(u, m, grad_outputs=g_up)
            reg = regulariser(m, self.l1, self.tv, self.tv_beta)
            if self.l1 or self.tv:
                d_reg, = torch.autograd.grad(reg.sum(), m)
                d_score = d_score + d_reg
        return d_score.detach(), path_scores + reg.detach().to(path_scores.device)

    def line_search(self, masks: torch.Tensor, d: torch.Tensor, f0: torch.Tensor, step_init: float, objective):
        """Armijo backtracking per image on ``objective(masks, index)`` (``f0`` its value at
        ``masks``): returns (new masks, their objective values, accepted steps)."""
        n = masks.shape[0]
        dev = masks.device
        step = torch.full((n,), float(step_init), device=dev)
        dn2 = d.pow(2).reshape(n, -1).sum(1)
        new_m = masks.clone()
        new_f = f0.clone()
        pending = torch.ones(n, dtype=torch.bool, device=dev)
        while bool(pending.any()):
            p = pending.nonzero()[:, 0]
            sp = step[p].view(-1, 1, 1, 1)
            cand = (masks[p] - sp * d[p]).clamp(0, 1)
            fc = objective(cand, p).to(dev)
            ok = fc <= f0[p] - ARMIJO_C * step[p] * dn2[p]
            acc = ok | (step[p] <= STEP_FLOOR)
            pa = p[acc]
            new_m[pa] = cand[acc]
            new_f[pa] = fc[acc]
            pending[pa] = False
            pr = p[~acc]
            step[pr] = (step[pr] * STEP_SHRINK).clamp(min=STEP_FLOOR)
        return new_m, new_f, step


def run_igos(ctx: Context, *, mask_hw, iterations: int, ig_steps: int, l1: float, tv: float, tv_beta: float,
             noise_sigma: float, step_init: float, baseline: torch.Tensor, line_search: str = "path"):
    """Optimise all images' masks together.

    Returns (masks, plain objective F per iteration B x (T+1), accepted steps B x T).
    ``line_search="path"``: Armijo on the iteration's path-averaged noisy objective, the function
    whose gradient the direction is (the authors' code); ``"plain"``: on F (one forward per
    candidate instead of ``ig_steps``).
    """
    opt = IGOS(ctx, mask_hw, ig_steps=ig_steps, l1=l1, tv=tv, tv_beta=tv_beta, noise_sigma=noise_sigma,
               baseline=baseline)
    n = ctx.n
    dev = ctx.x.device
    masks = torch.ones((n, 1) + tuple(mask_hw), dtype=torch.float32, device=dev)
    idx = torch.arange(n, device=dev)
    f = opt.objective(masks, idx).to(dev)
    trace, steps = [f], []
    for it in range(iterations):
        d, f_path = opt.direction(masks, it)
        if line_search == "plain":
            masks, f, step = opt.line_search(masks, d, f, step_init, opt.objective)
        else:
            def obj(m, index, it=it):
                return opt.path_objective(m, index, it)

            masks, _, step = opt.line_search(masks, d, f_path, step_init, obj)
            f = opt.objective(masks, idx).to(dev)
        trace.append(f)
        steps.append(step)
    return masks, torch.stack(trace, 1), torch.stack(steps, 1)


def blurred_baseline(ctx: Context, kernel: int, sigma: float) -> torch.Tensor:
    """The blurred image x~: Gaussian blur of the [0, 1] image, normalised back to model space."""
    pp = ctx.preprocessing
    x = ctx.x.detach()
    return pp.normalize(gaussian_blur(pp.denormalize(x), kernel, sigma))


@register("igos", defaults=IGOS_DEFAULTS, stochastic=True, score="softmax",
          heatmap={"sign": "abs", "channels": "sum", "clip": None},
          ui={"mask_size": Option("int", "mask size", 7, 224, help="I-GOS mask resolution (s x s)"),
              "iterations": Option("int", "iterations", 1, 100, help="I-GOS optimisation steps")},
          cost=lambda o: o["iterations"] * o["ig_steps"])
def igos(ctx: Context, mask_size, iterations, ig_steps, l1, tv, tv_beta, noise, step_init, blur_kernel, blur_sigma,
         line_search):
    """I-GOS (Qi et al. 2020): a mask M optimised with integrated-gradient directions; heatmap 1 - M.

    ``mask_size``: int in 7..224 or an (h, w) pair (default 28); ``iterations`` (15) descent
    steps, each with ``ig_steps`` (20) path points plus Gaussian noise of std ``noise`` (0.2, model
    space); ``l1`` (1) and ``tv`` (20) weight mean|1 - M| and the total variation with exponent
    ``tv_beta`` (2); Armijo line search from ``step_init`` (200). The blurred image (kernel
    ``blur_kernel`` 51, sigma ``blur_sigma`` 50, on [0, 1] pixels) replaces deleted pixels.
    Extras: ``mask`` (B x 1 x h x w), ``objective`` (B x (iterations + 1)), ``step`` (B x iterations).
    """
    hw = mask_shape(mask_size, tuple(ctx.x.shape[-2:]))
    positive_int("iterations", iterations)
    positive_int("ig_steps", ig_steps)
    l1 = nonneg_float("l1", l1)
    tv = nonneg_float("tv", tv)
    tv_beta = nonneg_float("tv_beta", tv_beta)
    if tv_beta < 1:
        raise ValueError(f"tv_beta: expected a number >= 1 (the TV term must be differentiable), got {tv_beta}")
    sigma = nonneg_float("noise", noise)
    step_init = positive_float("step_init", step_init)
    positive_int("blur_kernel", blur_kernel)
    if blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel: expected an odd positive size, got {blur_kernel}")
    blur_sigma = positive_float("blur_sigma", blur_sigma)
    if line_search not in LINE_SEARCH:
        raise ValueError(f"line_search: expected one of {', '.join(LINE_SEARCH)}, got {line_search!r}")
    base = blurred_baseline(ctx, blur_kernel, blur_sigma)
    masks, trace, steps = run_igos(ctx, mask_hw=hw, iterations=iterations, ig_steps=ig_steps, l1=l1, tv=tv,
                                   tv_beta=tv_beta, noise_sigma=sigma, step_init=step_init, baseline=base,
                                   line_search=line_search)
    attr = 1 - upsample(masks, tuple(ctx.x.shape[-2:]))
    return {"attributions": attr, "extras": {"mask": masks, "objective": trace, "step": steps}}
