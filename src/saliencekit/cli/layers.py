"""``saliencekit layers``: a model's candidate CAM layers with their output shapes."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    main.add_command(layers_cmd)


@click.command("layers")
@click.option("--model", default="efficientnet-lite0", show_default=True, help="Model name.")
@click.option("--size", default=None, type=int, help="Input side in pixels (default: the model's).")
@click.option("--all", "show_all", is_flag=True, help="List every module, not only 4-D / token outputs.")
def layers_cmd(model, size, show_all):
    """Print the model's layers (dotted names usable as --layer) with their output shapes.

    The automatic CAM layer (the last module with a 4-D spatial output) is marked with '*'.
    Token outputs (B x N x C) are listed too: vision transformers need an explicit --layer.
    """
    import torch

    from ..core.layers import find_cam_layer, layer_outputs
    from ..models import get_preprocessing, load_model

    try:
        net = load_model(model)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None
    side = size if size is not None else get_preprocessing(net).size
    if side < 1:
        raise click.BadParameter(f"expected a positive size, got {side}", param_hint="--size")
    x = torch.zeros(1, 3, side, side)
    rows = layer_outputs(net, x)
    try:
        auto = find_cam_layer(net, x)[0]
    except ValueError:
        auto = None
    width = max([len(n) for n, _, _ in rows] + [4])
    click.echo(f"  {'name':<{width}}  {'type':<26} output shape")
    for name, mod, shape in rows:
        if not show_all and len(shape) not in (3, 4):
            continue
        mark = "*" if name == auto else " "
        click.echo(f"{mark} {name:<{width}}  {type(mod).__name__:<26} {' x '.join(map(str, shape))}")
    if auto is not None:
        click.echo(f"* automatic CAM layer: {auto}")
    else:
        click.echo("no 4-D spatial layer: pass --layer explicitly")
