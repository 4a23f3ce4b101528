"""The methods: one module per family, each registering its methods (``base.register``).

Importing this package registers them all; ``REGISTRY`` maps a name to its ``MethodSpec``. The
built-in families load in the papers' order (the order users see in listings and the demo's grid),
then any other module of this package, so adding a method is adding one file here.
"""

import importlib
import pkgutil

from .base import REGISTRY, MethodSpec, Option, Variant, get, register

_FAMILIES = ("gradient", "smoothgrad", "integrated", "smoothtaylor", "attitude", "cam", "igos")
_HELPERS = ("base", "paths", "adaptive")   # shared machinery, registers nothing


def load_modules() -> None:
    """Import (and so register) every method module of this package; already imported ones are kept."""
    others = sorted(m.name for m in pkgutil.iter_modules(__path__)
                    if m.name not in _FAMILIES + _HELPERS and not m.name.startswith("_"))
    for name in _FAMILIES + tuple(others):
        importlib.import_module(f"{__name__}.{name}")


load_modules()

__all__ = ["REGISTRY", "MethodSpec", "Option", "Variant", "get", "load_modules", "register"]
