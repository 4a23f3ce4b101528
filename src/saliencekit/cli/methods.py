"""``saliencekit methods``: every registered method with its summary, options and score space."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    main.add_command(methods_cmd)


@click.command("methods")
def methods_cmd():
    """List the methods, their default options and default score space."""
    from ..api import list_methods
    from ..methods import REGISTRY

    for name, info in list_methods(details=True).items():
        opts = ", ".join(f"{k}={v!r}" for k, v in info["defaults"].items()) or "(no options)"
        first = info["doc"].splitlines()[0] if info["doc"] else ""
        shown = "; in the default set of `saliencekit explain`" if REGISTRY[name].showcase else ""
        click.echo(f"{name}\n    {first}\n    options: {opts}\n    score: {info['score']} (default; -o score=...)"
                   f"{shown}")
