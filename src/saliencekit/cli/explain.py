"""``saliencekit explain``: saliency maps of images (default: the bundled sample photos) written as
overlays, a grid, tensors and a summary.

Every option is checked before the model loads (an unknown ``-o`` key is refused with the known
ones listed, exit code 2). The files are written to a temporary folder and moved into ``--out``
at the end: an early error or an interruption leaves nothing; a method that fails is named in
``summary.json`` (``failed``) and on stderr, the others' files are written, and the exit code is 1.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import click

from .options import (OutputFolder, apply_threads, check_option_keys, cpu_snapshot, for_method, hookable,
                      load_model, model_label, model_options, model_spec, parse_channels, parse_options,
                      resolve_device, threads_option)


def default_methods() -> List[str]:
    """The methods explained when none is named: the registry's showcase methods, in registration order."""
    from ..methods import REGISTRY

    return [n for n, s in REGISTRY.items() if s.showcase]


def register(main: click.Group) -> None:
    main.add_command(explain_cmd)


class ExplainCommand(click.Command):
    """``explain``, whose help names the default methods (read from the registry when shown)."""

    def format_help_text(self, ctx, formatter):
        original = self.help
        self.help = (f"{inspect.cleandoc(original or '')}\n\nDefault methods (without --method): {', '.join(default_methods())}. "
                     f"`saliencekit methods` lists every method with its options and default score space.")
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = original


# method options that have their own flag
FLAG_OPTIONS = (("--layer", "layer"), ("--channels", "channels"), ("--mask-size", "mask_size"))


@click.command("explain", cls=ExplainCommand)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--method", "-m", "method_names", multiple=True,
              help="Method (repeatable). Default: the standard set named below; see `saliencekit methods`.")
@model_options
@click.option("--target", default="predicted", show_default=True,
              help="Class to explain: 'predicted' (each image's top class) or a class index.")
@click.option("--out", "out_dir", default="out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the overlays, grid.png, summary.json and tensors/ (created; files of the same "
                   "name are replaced).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise of stochastic methods.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Rows per forward/backward chunk (default: automatic).")
@click.option("--layer", default=None, help="Layer for CAM methods (dotted module name; see `saliencekit layers`).")
@click.option("--channels", default=None, help="Comma-separated feature-map indices for CAM methods.")
@click.option("--mask-size", default=None, type=click.IntRange(min=1), help="Mask resolution for I-GOS.")
@click.option("--option", "-o", "extra", multiple=True,
              help="Method option KEY=VALUE (JSON value), repeatable; a key no chosen method takes is refused. "
                   "score=logit|softmax|log_softmax sets the score space.")
@threads_option
def explain_cmd(images, method_names, model_args, target, out_dir, seed, device, batch_size, layer, channels,
                mask_size, extra, threads):
    """Explain IMAGES (files or folders; default: the bundled sample photos) and write overlays, a grid,
    tensors and summary.json to --out."""
    load = cpu_snapshot()     # how busy the CPUs are while this command starts (the default --threads)

    from ..methods import REGISTRY

    # -- every option, before anything loads --
    names = list(dict.fromkeys(method_names)) or default_methods()
    for n in names:
        if n not in REGISTRY:
            raise click.BadParameter(f"unknown method {n!r}; see `saliencekit methods`", param_hint="--method")
    opts = parse_options(extra)
    check_option_keys(opts, names)
    given = {"layer": layer, "channels": parse_channels(channels), "mask_size": mask_size}
    for flag, key in FLAG_OPTIONS:
        value = given[key]
        if value is None:
            continue
        owners = [n for n, s in REGISTRY.items() if key in s.defaults]
        if not any(n in owners for n in names):
            raise click.BadParameter(f"none of the methods ({', '.join(names)}) takes {key}; it is an option of "
                                     f"{', '.join(owners)}", param_hint=flag)
        opts[key] = value
    try:
        tgt: Any = target if target == "predicted" else int(target)
    except ValueError:
        raise click.BadParameter(f"expected 'predicted' or an integer, got {target!r}", param_hint="--target") from None
    for p in images:
        if not p.exists():
            raise click.BadParameter(f"no such file or folder: {p}", param_hint="IMAGES")
    spec = model_spec(model_args)
    device = resolve_device(device)
    with OutputFolder(out_dir) as out:
        n_threads, why = apply_threads(threads, load)
        click.echo(f"torch threads: {n_threads} ({why})", err=True)
        _explain(images, names, bool(method_names), spec, opts, tgt, out, seed, device, batch_size, n_threads)


def _explain(images, names, named, spec, opts, tgt, out: OutputFolder, seed, device, batch_size, n_threads):
    import torch

    from .. import data, visualize
    from ..api import explain
    from ..core.guard import forward_scores
    from ..methods import REGISTRY
    from ..models import class_names, get_preprocessing
    from .progress import method_progress

    net = load_model(spec, device)
    if not hookable(net):
        cams = [n for n in names if "layer" in REGISTRY[n].defaults]
        if cams and named:
            raise click.BadParameter(f"{', '.join(cams)} capture a layer, and {spec.name} is a TorchScript module, "
                                     f"which takes no forward hooks; for CAMs load the model as a torch.export "
                                     f"program (.pt2) or package.module:callable", param_hint="--method")
        if cams:
            click.echo(f"skipping {', '.join(cams)}: a TorchScript module takes no forward hooks, so no layer can "
                       f"be captured", err=True)
            names = [n for n in names if n not in cams]
    pre = get_preprocessing(net)
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
            loaded.append(data.load_images(it, preprocessing=pre, device=device))
            kept.append(lab)
        except (ValueError, FileNotFoundError) as e:
            click.echo(f"skipping {lab}: {e}", err=True)
    if not loaded:
        raise click.ClickException("no readable images")
    x = torch.cat(loaded)
    cls_names = class_names(net)
    with torch.no_grad():
        probs = torch.softmax(forward_scores(net, x).float(), dim=1)
    top5 = probs.topk(min(5, probs.shape[1]), dim=1)
    summary: Dict[str, Any] = {"model": model_label(spec), "seed": seed, "threads": n_threads, "images": [],
                               "methods": {}}
    for i, lab in enumerate(kept):
        summary["images"].append({"name": lab, "top5": [
            {"class_index": int(c), "name": cls_names[int(c)] if cls_names else str(int(c)), "probability": float(p)}
            for p, c in zip(top5.values[i].tolist(), top5.indices[i].tolist())]})
    maps, signed, failed = {}, {}, {}
    for k, name in enumerate(names, 1):
        method_opts = for_method(opts, REGISTRY[name].defaults)
        with method_progress(REGISTRY[name], method_opts, len(kept), f"[{k}/{len(names)}] {name}") as prog:
            try:
                e = explain(net, x, name, target=tgt, seed=seed, batch_size=batch_size, progress=prog.update,
                            **method_opts)
            except Exception as err:   # named in the summary and on stderr; the other methods still run
                prog.abandon()
                failed[name] = str(err) if isinstance(err, (ValueError, TypeError)) else f"{type(err).__name__}: {err}"
                click.echo(f"{name} failed: {failed[name]}", err=True)
                continue
        written = e.save(out.tmp / "tensors", names=kept)
        for png in written[:len(kept)]:  # save() renders one overlay per image first; show them at the top
            shutil.copyfile(png, out.tmp / png.name)
        maps[name] = list(e.heatmap().cpu().numpy())
        signed[name] = e.signed
        summary["methods"][name] = e.summary()
    if not maps:
        raise click.ClickException("every method failed: " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
    if failed:
        summary["failed"] = failed
    pix = (pre.denormalize(x.detach().float().cpu())).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    titles = [f"{lab}: {summary['images'][i]['top5'][0]['name']}" for i, lab in enumerate(kept)]
    fig = visualize.grid(list(pix), maps, row_titles=titles, signed=signed)
    fig.savefig(out.tmp / "grid.png", dpi=110)
    (out.tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    out.commit(last=("grid.png", "summary.json"))
    out_dir = out.out
    click.echo(f"wrote {len(kept)} image(s) x {len(maps)} method(s) to {out_dir}/ (grid.png, summary.json)")
    for img in summary["images"]:
        click.echo(f"  {img['name']}: {img['top5'][0]['name']} ({img['top5'][0]['probability']:.3f})")
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(names)} method(s) failed ({', '.join(failed)}); the "
                                   f"others were written, and {out_dir}/summary.json says why")
