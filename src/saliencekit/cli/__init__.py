"""The ``saliencekit`` command line: the click group and its commands, one module per command.

Each command module defines its command and a ``register(main)`` that attaches it; a module
imports only click at load time (the package and torch load inside the command), so
``saliencekit --help`` stays fast. Adding a command: a module here with ``register`` and one
line below.
"""

from __future__ import annotations

import click

from . import bench, evaluate, explain, layers, methods, serve


@click.group()
@click.version_option(package_name="saliencekit")
def main():
    """saliencekit: explain PyTorch image classifiers with saliency maps."""


explain.register(main)
methods.register(main)
layers.register(main)
evaluate.register(main)
bench.register(main)
serve.register(main)

__all__ = ["main"]
