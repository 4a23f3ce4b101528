"""Model-parameter randomisation test (Adebayo et al. 2018), cascading from the top.

The model is deep-copied (the user's model is never touched). Layers that own parameters are
listed in module order; from the last (the output end) backwards, each is re-initialised in
turn (cumulatively: layer k's randomisation keeps layers above it random) with seeded Gaussian
weights of the original tensor's standard deviation. After each step the method's map is
recomputed (same class, seed and options) and compared with the original map: Spearman rank
correlation and SSIM (``skimage.metrics.structural_similarity``, data range 1) per image. A
faithful method's maps must change, i.e. both numbers fall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from ..api import explain
from ..core.checks import optional_positive_int
from ..metrics.scoring import check_model, check_x, guarded, resolve_target
from ..models import copy_model


def parameter_layers(model: torch.nn.Module) -> list[str]:
    """Names of modules that own parameters directly, in module order (input end first)."""
    return [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.detach().float().std()) if p.numel() > 1 else float(p.detach().abs().mean())
            std = std if std > 0 else 0.01
            p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.dtype).to(p.device))


def _map(model, x, method, classes, seed, options) -> np.ndarray:
    e = explain(model, x, method, target=classes, seed=seed, keep_inputs=False, **options)
    return e.heatmap().detach().float().cpu().numpy()


def sanity_check(model, x: torch.Tensor, method: str = "gradient", target: Any = "predicted", seed: int = 0,
                 layers: int | None = None, **method_options) -> dict[str, Any]:
    """Cascading randomisation from the top.

    ``layers``: randomise only the top ``layers`` parameter-owning modules (default: all).
    Returns ``{"layers": [names, top first], "spearman": L x B, "ssim": L x B}``.
    """
    check_model(model)
    x = check_x(x)
    names = parameter_layers(model)
    if not names:
        raise ValueError("model: has no parameters to randomise")
    if optional_positive_int("layers", layers) is not None:
        names_top = names[::-1][:layers]
    else:
        names_top = names[::-1]
    with guarded(model):
        classes, _ = resolve_target(model, x, target)
    classes = classes.clone()
    ref = _map(model, x, method, classes, seed, method_options)
    work = copy_model(model)
    mods = dict(work.named_modules())
    gen = torch.Generator().manual_seed(int(seed))
    rho, ssim = [], []
    for name in names_top:
        _randomise(mods[name], gen)
        m = _map(work, x, method, classes, seed, method_options)
        r_row, s_row = [], []
        for i in range(x.shape[0]):
            a, b = ref[i].ravel(), m[i].ravel()
            if np.ptp(a) == 0 or np.ptp(b) == 0:
                r_row.append(float("nan"))
            else:
                r_row.append(float(spearmanr(a, b).statistic))
            s_row.append(float(structural_similarity(ref[i], m[i], data_range=1.0)))
        rho.append(r_row)
        ssim.append(s_row)
    return {"layers": names_top, "spearman": torch.tensor(rho), "ssim": torch.tensor(ssim)}


__all__ = ["sanity_check", "parameter_layers"]
