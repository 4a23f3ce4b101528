"""Option parsing shared by the commands: ``KEY=VALUE`` method options, ``NAME.KEY=VALUE`` per-name
options, comma-separated integers, and the ``--device`` check.

Values are read as JSON when they parse (``n_samples=50`` is an int, ``layer=null`` is ``None``,
``channels=[0,5]`` a list) and kept as text otherwise (``baseline=blur``). Keys take ``-`` or
``_`` alike (``noise-level`` is ``noise_level``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional

import click

# ``score`` is an argument of ``explain`` that every method takes (the score space of a class target)
EXPLAIN_ARGUMENTS = ("score",)


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key(text: str) -> str:
    return text.strip().replace("-", "_")


def parse_options(pairs: Iterable[str], param_hint: str = "--option") -> Dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{key: value}``; a pair without ``=`` is refused."""
    out: Dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=param_hint)
        k, v = p.split("=", 1)
        out[_key(k)] = parse_value(v)
    return out


def parse_named_options(pairs: Iterable[str], param_hint: str) -> Dict[str, Dict[str, Any]]:
    """``["NAME.KEY=VALUE", ...]`` -> ``{name: {key: value}}`` (e.g. ``smoothgrad.n_samples=20``)."""
    out: Dict[str, Dict[str, Any]] = {}
    for p in pairs:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise click.BadParameter(f"expected NAME.KEY=VALUE, got {p!r}", param_hint=param_hint)
        lhs, v = p.split("=", 1)
        name, k = lhs.split(".", 1)
        out.setdefault(name.strip(), {})[_key(k)] = parse_value(v)
    return out


def for_method(options: Mapping[str, Any], accepted: Iterable[str]) -> Dict[str, Any]:
    """The ``options`` one method takes: those among its ``accepted`` options (its spec's
    ``defaults``) and the ``explain`` arguments every method takes (``score``)."""
    keep = set(accepted) | set(EXPLAIN_ARGUMENTS)
    return {k: v for k, v in options.items() if k in keep}


def parse_channels(text: Optional[str], param_hint: str = "--channels") -> Optional[List[int]]:
    """``"0,5,7"`` -> ``[0, 5, 7]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=param_hint) from None


def resolve_device(device: str, param_hint: str = "--device") -> str:
    """``device``, refused when it is ``cuda`` and this machine has no CUDA device."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint=param_hint)
    return device


__all__ = ["EXPLAIN_ARGUMENTS", "for_method", "parse_channels", "parse_named_options", "parse_options", "parse_value",
           "resolve_device"]
