"""``saliencekit layers``: a model's candidate CAM layers with their output shapes."""

from __future__ import annotations

import click

from .options import hookable, load_model, model_options, model_spec


def register(main: click.Group) -> None:
    main.add_command(layers_cmd)


@click.command("layers")
@model_options
@click.option("--size", default=None, type=click.IntRange(min=1),
              help="Side of the blank probe image in pixels (default: the model's input size).")
@click.option("--all", "show_all", is_flag=True, help="List every module, not only 4-D / token outputs.")
def layers_cmd(model_args, size, show_all):
    """Print the model's layers (dotted names usable as --layer) with their output shapes.

    The automatic CAM layer (the last module with a 4-D spatial output) is marked with '*'.
    Token outputs (B x N x C) are listed too: vision transformers need an explicit --layer.
    A torch.export program (.pt2) keeps its layer names; a TorchScript module takes no forward
    hooks, so its layers cannot be captured (the gradient methods still work on it).
    """
    spec = model_spec(model_args)
    import torch

    from ..core.layers import find_cam_layer, layer_outputs
    from ..models import get_preprocessing

    net = load_model(spec, "cpu")
    if not hookable(net):
        from ..methods import REGISTRY

        cams = [n for n, s in REGISTRY.items() if "layer" in s.defaults]
        rest = [n for n in REGISTRY if n not in cams]
        raise click.ClickException(
            f"{spec.name} is a TorchScript module: it takes no forward hooks, so its layers cannot be captured and "
            f"the methods that capture a layer ({', '.join(cams)}) cannot run on it; the others "
            f"({', '.join(rest)}) work. For CAMs, load the model as a torch.export program (torch.export.save, "
            f".pt2) or as package.module:callable.")
    side = size if size is not None else get_preprocessing(net).size
    x = torch.zeros(1, 3, side, side)
    try:
        rows = layer_outputs(net, x)
    except Exception as e:
        raise click.ClickException(f"{spec.name} fails on a 1 x 3 x {side} x {side} probe ({type(e).__name__}: "
                                   f"{e}); set --size or --input-size") from None
    try:
        auto = find_cam_layer(net, x)[0]
    except ValueError:
        auto = None
    own_types = getattr(net, "saliencekit_layer_types", None) or {}   # a torch.export program's original classes
    width = max([len(n) for n, _, _ in rows] + [4])
    click.echo(f"  {'name':<{width}}  {'type':<26} output shape")
    for name, mod, shape in rows:
        if not show_all and len(shape) not in (3, 4):
            continue
        mark = "*" if name == auto else " "
        click.echo(f"{mark} {name:<{width}}  {own_types.get(name, type(mod).__name__):<26} {' x '.join(map(str, shape))}")
    if auto is not None:
        click.echo(f"* automatic CAM layer: {auto}")
    else:
        click.echo("no 4-D spatial layer: pass --layer explicitly")
