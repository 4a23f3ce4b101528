"""Layer capture: forward hooks that are always removed.

``capture(modules)`` registers a forward hook on each module. The hook records the module's
output (the tensor that the method differentiates to; under grad mode made a leaf that requires
grad when nothing upstream does) and hands the rest of the network a clone, so in-place
operations downstream (``ReLU(inplace=True)``) never modify the captured tensor or invalidate
its gradient. The hooks are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn


class Captured(dict):
    """module -> captured output tensor of the last forward."""


@contextlib.contextmanager
def capture(modules: Iterable[nn.Module]):
    store = Captured()
    handles = []

    def make_hook(mod):
        def hook(_module, _inputs, output):
            seq = output if isinstance(output, (tuple, list)) else None
            if seq is not None:
                output = seq[0] if seq else None
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer: the output of {type(mod).__name__} is not a tensor")
            if torch.is_grad_enabled() and not output.requires_grad and output.is_leaf:
                # nothing upstream needs a gradient (the engine feeds an input that does not
                # require grad when it differentiates to this layer, and the weights are frozen):
                # the layer's output becomes the leaf the gradient is taken to, so the trunk
                # before it ran without recording an autograd graph
                output.requires_grad_(True)
            store[mod] = output
            # Downstream always gets a clone (with or without grad), so an in-place op after the
            # layer never changes the stored tensor; tuple outputs keep their structure.
            if seq is None:
                return output.clone()
            items = [output.clone(), *seq[1:]]
            if type(seq) in (tuple, list):
                return type(seq)(items)
            return type(seq)(*items)  # a namedtuple
        return hook

    try:
        for m in modules:
            handles.append(add_forward_hook(m, make_hook(m)))
        yield store
    finally:
        for h in handles:
            h.remove()


TORCHSCRIPT_LAYERS = ("layer: this is a TorchScript module, which takes no forward hooks, so its layers cannot be "
                      "captured: CAM methods and layer= need a Python nn.Module (package.module:callable, or an "
                      "architecture with a state_dict) or a torch.export program (.pt2); the gradient methods work")


def add_forward_hook(module: nn.Module, hook):
    """``module.register_forward_hook(hook)``; a TorchScript module (which takes no hooks) is a
    ``TypeError`` that says what works instead."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(TORCHSCRIPT_LAYERS)
    return module.register_forward_hook(hook)


def resolve_layer(model: nn.Module, layer) -> nn.Module:
    """A layer given by dotted name or by module; unknown names list close candidates."""
    if isinstance(layer, nn.Module):
        for m in model.modules():
            if m is layer:
                return layer
        raise ValueError("layer: the given module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a module name (str) or an nn.Module, got {type(layer).__name__}")
    names = dict(model.named_modules())
    if layer in names and layer != "":
        return names[layer]
    import difflib
    close = difflib.get_close_matches(layer, [n for n in names if n], n=5, cutoff=0.5)
    hint = f"; close candidates: {', '.join(close)}" if close else ""
    raise ValueError(f"layer: no module named {layer!r} in the model{hint}")
