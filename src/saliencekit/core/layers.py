"""Layer discovery: the modules of a model with their output shapes, and the automatic CAM layer.

Used by the CAM methods (``layer=None``), ``saliencekit layers`` and the web explorer's layer list.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .guard import model_guard
from .hooks import add_forward_hook


def _trace(model: nn.Module, x: torch.Tensor):
    order: dict[nn.Module, tuple[str, tuple[int, ...], torch.Tensor]] = {}
    names = {m: n for n, m in model.named_modules() if n}
    handles = []

    def make(mod):
        def hook(_m, _i, out):
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor):
                order.pop(mod, None)
                order[mod] = (names[mod], tuple(out.shape), out)
        return hook

    with model_guard(model):
        try:
            for m in names:
                handles.append(add_forward_hook(m, make(m)))
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
    return [(n, m, s, o) for m, (n, s, o) in order.items()]


def layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``(name, module, output shape)`` of every submodule, in the order their forwards finish.

    One no-grad forward of ``x`` with the model in eval mode; hooks are removed and the model's
    state is restored afterwards. A module called several times is listed at its last call.
    """
    return [(n, m, s) for n, m, s, _ in _trace(model, x)]


def is_spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] > 1


_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def find_cam_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The automatic CAM layer: the last module (in execution order) with a 4-D spatial output.

    Modules after global pooling have 1 x 1 or 2-D outputs, so this is the last feature layer
    before pooling. Cached per model and input shape.
    """
    key = (tuple(x.shape[1:]), x.dtype, str(x.device))
    cache = _AUTO_CACHE.setdefault(model, {})
    if key in cache:
        name = cache[key]
        mod = dict(model.named_modules()).get(name)
        if mod is not None:
            return name, mod
    found = [(n, m, o) for n, m, s, o in _trace(model, x[:1]) if is_spatial(s)]
    if not found:
        raise ValueError("layer: the model has no module with a 4-D spatial output (B x C x H x W); pass layer= "
                         "(for a vision transformer, a block's token output, e.g. 'blocks.11.norm1'); "
                         "`saliencekit layers` lists the candidates")
    k = len(found) - 1
    # A container (Sequential, a block) returning its last child's output tensor: name the child.
    while k > 0 and found[k - 1][0].startswith(found[k][0] + ".") and found[k - 1][2] is found[k][2]:
        k -= 1
    name, mod = found[k][0], found[k][1]
    cache[key] = name
    return name, mod


__all__ = ["layer_outputs", "is_spatial", "find_cam_layer"]
