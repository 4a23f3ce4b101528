"""The ``saliencekit`` command line: the click group and its commands, one module per command.

Each command module defines its command and a ``register(main)`` that attaches it; a module
imports only click at load time (the package and torch load inside the command), so
``saliencekit --help`` stays fast. Adding a command: a module here with ``register`` and one
line below.
"""

from __future__ import annotations

import contextlib
import warnings

import click

from . import bench, evaluate, explain, layers, methods, samples, serve


@contextlib.contextmanager
def _package_warnings_as_lines():
    """The package's own warnings (an image upscaled many times, NaN maps) as one plain line each on
    stderr; other warnings as Python shows them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.split(".")[0] == "saliencekit":
                kind = "note" if category.__name__ == "ImageNote" else "warning"
                click.echo(f"{kind}: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@click.group()
@click.version_option(package_name="saliencekit")
@click.pass_context
def main(ctx: click.Context):
    """saliencekit: explain PyTorch image classifiers with saliency maps."""
    ctx.with_resource(_package_warnings_as_lines())


explain.register(main)
methods.register(main)
layers.register(main)
evaluate.register(main)
bench.register(main)
serve.register(main)
samples.register(main)

__all__ = ["main"]
