"""Evaluation names: the registered methods, their evaluation variants, and the random baseline.

Every registered method is evaluated under its own name; a method's spec may add variants
(``smoothgrad_square``, ``ig_blur``, ``original``, ...) with fixed options, heatmap overrides and
metric options (``methods.base.Variant``). ``random`` is a seeded uniform map: the baseline every
faithful method should beat. Nothing here lists method names: the registry does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..methods import REGISTRY, Variant

RANDOM = "random"
RANDOM_VARIANT = Variant(RANDOM, default=True)


def table() -> Dict[str, Variant]:
    """Evaluation name -> variant, in registration order, each method followed by its variants."""
    out: Dict[str, Variant] = {}
    for name, spec in REGISTRY.items():
        out[name] = spec.variants.get(name, Variant(name))
        for vname, v in spec.variants.items():
            out.setdefault(vname, v)
    out[RANDOM] = RANDOM_VARIANT
    return out


def available() -> List[str]:
    return list(table())


def defaults() -> List[str]:
    """The evaluation names ``saliencekit evaluate`` runs when none are given."""
    return [n for n, v in table().items() if v.default]


def is_available(name: str) -> bool:
    return name in table()


def resolve(name: str, method_options: Optional[Dict[str, Dict[str, Any]]] = None
            ) -> Tuple[str, Dict[str, Any], Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """(registered method, options, heatmap overrides, metric options) for an evaluation name.

    ``method_options`` maps a registered method or an evaluation name to options: those given for
    the method apply to all its variants where it accepts them, those for the evaluation name must
    be accepted (``score`` is accepted by every method)."""
    t = table()
    if name not in t:
        raise ValueError(f"methods: unknown method {name!r}; available: {', '.join(t)}")
    v = t[name]
    if name == RANDOM:
        return RANDOM, {}, {}, {}
    base = v.method
    accepted = set(REGISTRY[base].defaults) | {"score"}
    opts = dict(v.options)
    mo = method_options or {}
    for key in (base, name):  # options for the registered method, then for the evaluation name
        for k, val in (mo.get(key) or {}).items():
            if k in accepted:
                opts[k] = val
            elif key == name:
                raise ValueError(f"method option {name}.{k}: {base!r} has no option {k!r}")
    return base, opts, dict(v.heatmap), {k: dict(o) for k, o in v.metric_options.items()}


__all__ = ["RANDOM", "available", "defaults", "is_available", "resolve", "table"]
