"""``saliencekit explain``: saliency maps of images (default: the bundled sample photos) written as
overlays, a grid, tensors and a summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, List

import click

from .options import for_method, parse_channels, parse_options, resolve_device


def default_methods() -> List[str]:
    """The methods explained when none is named: the registry's showcase methods, in registration order."""
    from ..methods import REGISTRY

    return [n for n, s in REGISTRY.items() if s.showcase]


def register(main: click.Group) -> None:
    main.add_command(explain_cmd)


@click.command("explain")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--method", "-m", "method_names", multiple=True,
              help="Method (repeatable). Default: the standard set marked in `saliencekit methods`.")
@click.option("--model", default="efficientnet-lite0", show_default=True, help="Model name.")
@click.option("--target", default="predicted", show_default=True, help="'predicted' or a class index.")
@click.option("--out", "out_dir", default="out", show_default=True, type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--batch-size", default=None, type=int, help="Rows per forward/backward chunk (default: automatic).")
@click.option("--layer", default=None, help="Layer for CAM methods (dotted module name).")
@click.option("--channels", default=None, help="Comma-separated feature-map indices for CAM methods.")
@click.option("--mask-size", default=None, type=int, help="Mask resolution for I-GOS.")
@click.option("--option", "-o", "extra", multiple=True,
              help="Method option KEY=VALUE (JSON value), repeatable; score=logit|softmax|log_softmax sets the "
                   "score space.")
def explain_cmd(images, method_names, model, target, out_dir, seed, device, batch_size, layer, channels, mask_size,
                extra):
    """Explain IMAGES (default: the bundled sample photos) and write overlays, a grid and tensors to --out."""
    import torch
    from tqdm import tqdm

    from .. import data, visualize
    from ..api import explain
    from ..methods import REGISTRY
    from ..models import class_names, get_preprocessing, load_model

    device = resolve_device(device)
    names = list(method_names) or default_methods()
    for n in names:
        if n not in REGISTRY:
            raise click.BadParameter(f"unknown method {n!r}; see `saliencekit methods`", param_hint="--method")
    opts = parse_options(extra)
    if layer is not None:
        opts["layer"] = layer
    ch = parse_channels(channels)
    if ch is not None:
        opts["channels"] = ch
    if mask_size is not None:
        opts["mask_size"] = mask_size
    try:
        tgt: Any = target if target == "predicted" else int(target)
    except ValueError:
        raise click.BadParameter(f"expected 'predicted' or an integer, got {target!r}", param_hint="--target") from None

    try:
        net = load_model(model, device=device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None
    spec = get_preprocessing(net)
    if images:
        items, labels = [], []
        for p in images:
            if p.is_dir():
                for q in data.list_images(p):
                    items.append(q)
                    labels.append(q.stem)
            else:
                items.append(p)
                labels.append(p.stem)
    else:
        samples = data.sample_images()
        items = [a for _, a in samples]
        labels = [n for n, _ in samples]
    loaded, kept = [], []
    for it, lab in zip(items, labels):
        try:
            loaded.append(data.load_images(it, preprocessing=spec, device=device))
            kept.append(lab)
        except (ValueError, FileNotFoundError) as e:
            click.echo(f"skipping {lab}: {e}", err=True)
    if not loaded:
        raise click.ClickException("no readable images")
    x = torch.cat(loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    cls_names = class_names(net)
    with torch.no_grad():
        probs = torch.softmax(net(x).float(), dim=1)
    top5 = probs.topk(min(5, probs.shape[1]), dim=1)
    summary = {"model": model, "seed": seed, "images": [], "methods": {}}
    for i, lab in enumerate(kept):
        summary["images"].append({"name": lab, "top5": [
            {"class_index": int(c), "name": cls_names[int(c)] if cls_names else str(int(c)), "probability": float(p)}
            for p, c in zip(top5.values[i].tolist(), top5.indices[i].tolist())]})
    maps, signed = {}, {}
    for name in tqdm(names, desc="methods", disable=None):
        try:
            e = explain(net, x, name, target=tgt, seed=seed, batch_size=batch_size,
                        **for_method(opts, REGISTRY[name].defaults))
        except (ValueError, TypeError) as err:
            raise click.ClickException(f"{name}: {err}") from None
        written = e.save(out_dir / "tensors", names=kept)
        for png in written[:len(kept)]:  # save() renders one overlay per image first; show them at the top
            shutil.copyfile(png, out_dir / png.name)
        maps[name] = list(e.heatmap().cpu().numpy())
        signed[name] = e.signed
        summary["methods"][name] = e.summary()
    pix = (spec.denormalize(x.detach().float().cpu())).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    titles = [f"{lab}: {summary['images'][i]['top5'][0]['name']}" for i, lab in enumerate(kept)]
    fig = visualize.grid(list(pix), maps, row_titles=titles, signed=signed)
    fig.savefig(out_dir / "grid.png", dpi=110)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"wrote {len(kept)} image(s) x {len(names)} method(s) to {out_dir}/ (grid.png, summary.json)")
    for img in summary["images"]:
        click.echo(f"  {img['name']}: {img['top5'][0]['name']} ({img['top5'][0]['probability']:.3f})")
