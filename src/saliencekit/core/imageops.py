"""Image and map operations used by methods, metrics and the views: blur, min-max, percentile."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x01: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B x C x H x W batch, reflect padding (size-preserving)."""
    if kernel % 2 == 0 or kernel < 1:
        raise ValueError(f"blur_kernel: expected an odd positive size, got {kernel}")
    r = kernel // 2
    t = torch.arange(kernel, dtype=torch.float32, device=x01.device) - r
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = (k / k.sum()).to(x01.dtype)
    c = x01.shape[1]
    h, w = x01.shape[-2:]
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(x01, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


def minmax(flat: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation of a B x N tensor to [0, 1]; a constant row becomes zeros."""
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (flat - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(flat))


def percentile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row percentile of a B x N tensor (linear interpolation, like numpy), float32, B x 1.

    Two order statistics by selection (``kthvalue``, O(N)) instead of ``torch.quantile``, which
    sorts and refuses rows over 2**24 elements.
    """
    v = v.float()
    n = v.shape[1]
    pos = (float(q) / 100.0) * (n - 1)
    lo = min(int(pos), n - 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v_lo = v.kthvalue(lo + 1, dim=1, keepdim=True).values
    if frac == 0.0 or hi == lo:
        return v_lo
    v_hi = v.kthvalue(hi + 1, dim=1, keepdim=True).values
    return v_lo + frac * (v_hi - v_lo)


__all__ = ["gaussian_blur", "minmax", "percentile"]
