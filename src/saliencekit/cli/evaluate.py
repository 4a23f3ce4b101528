"""``saliencekit evaluate``: methods x metrics over a folder of images, resumable, with a report.

The command only turns options into calls of ``saliencekit.evaluation``: the images
(``data.read_folder``), the block store in ``OUT/blocks/`` (``store.BlockStore``), a backend
(``store.evaluate_local`` or ``ray.evaluate_on_ray``), then the tables and the report
(``report``). The default methods and metrics are those the registries mark as defaults.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .options import (apply_threads, check_metric_option_keys, check_named_option_keys, cpu_snapshot, load_model,
                      model_label, model_options, model_spec, parse_named_options, resolve_device, threads_option)


def _load_model(spec, device: str):
    return load_model(spec, device)


def recorded_threads(out_dir: Path):
    """The torch thread count of the finished entries in ``OUT/blocks/`` (the first readable one), or
    None: a resumed run without ``--threads`` keeps it, so its entries stay valid."""
    import json

    blocks = Path(out_dir) / "blocks"
    if not blocks.is_dir():
        return None
    for p in sorted(blocks.glob("*.json")):
        try:
            threads = json.loads(p.read_text())["config"]["threads"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
            return threads
    return None


def _names(text: str | None, defaults) -> list[str]:
    if text is None:
        return list(defaults)
    return [m.strip() for m in text.split(",") if m.strip()]


def _listing() -> None:
    from ..evaluation import variants
    from ..metrics import registry

    click.echo("methods: " + ", ".join(variants.available()))
    click.echo("metrics: " + ", ".join(f"{n} ({s.direction} is better)" for n, s in registry.METRICS.items()))
    click.echo("defaults: --methods " + ",".join(variants.defaults()) + " --metrics " + ",".join(registry.defaults()))


def _check_backend(backend, address, workers, num_gpus_per_worker, device) -> None:
    if backend == "ray":
        from ..evaluation.ray import RAY_MISSING, ray_available

        if not ray_available():
            raise click.ClickException(RAY_MISSING)
        if workers is not None and workers < 1:
            raise click.BadParameter("expected a positive number", param_hint="--workers")
        if not num_gpus_per_worker >= 0:
            raise click.BadParameter("expected a non-negative number", param_hint="--num-gpus-per-worker")
        if device == "cuda" and not num_gpus_per_worker:
            raise click.BadParameter("with --backend ray, use --num-gpus-per-worker F (> 0) for CUDA workers",
                                     param_hint="--device")
        return
    for flag, v in (("--address", address), ("--workers", workers)):
        if v is not None:
            raise click.BadParameter("only with --backend ray", param_hint=flag)
    if num_gpus_per_worker:
        raise click.BadParameter("only with --backend ray", param_hint="--num-gpus-per-worker")


def register(main: click.Group) -> None:
    main.add_command(evaluate_cmd)


@click.command("evaluate")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@model_options
@click.option("--methods", default=None,
              help="Comma-separated evaluation methods (default: the registry's default set; see --list).")
@click.option("--metrics", default=None,
              help="Comma-separated metrics (default: the registry's default set; see --list).")
@click.option("--limit", default=None, type=int, help="Only the first N readable images (sorted by file name; unreadable files are "
                   "skipped and not counted).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise of stochastic methods.")
@click.option("--out", "out_dir", default="eval", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the tables, the report and the block store (blocks/) a re-run resumes from.")
@click.option("--overwrite", is_flag=True, help="Recompute and replace finished results.")
@click.option("--target", default="predicted", show_default=True, type=click.Choice(["predicted", "label"]),
              help="Explain the predicted class or the labels.json class.")
@click.option("--option", "-o", "method_opts", multiple=True,
              help="Method option NAME.KEY=VALUE (NAME: evaluation or registered method), repeatable.")
@click.option("--metric-option", "-M", "metric_opts", multiple=True,
              help="Metric option METRIC.KEY=VALUE, e.g. deletion.step=3136, repeatable.")
@click.option("--block-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Images per block: the unit of work, storage and resume.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Rows per forward chunk (default: automatic).")
@click.option("--channels-last", is_flag=True,
              help="Maps and metrics in channels_last memory layout (faster on CPU for EfficientNet-style "
                   "models; values change by float rounding only).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs (with --backend ray: see --num-gpus-per-worker).")
@threads_option
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="Evaluate in this process, or block by block on a Ray cluster "
                   "(pip install 'saliencekit[ray]'; see docs/distributed.md).")
@click.option("--address", default=None,
              help="Ray cluster: 'auto' (the one started here with `ray start`) or HOST:PORT. Default: "
                   "$RAY_ADDRESS, else a cluster started here, else a new local Ray instance for this run.")
@click.option("--workers", default=None, type=int,
              help="Ray workers (actors). Default: as many as the cluster's CPUs (or GPUs) allow.")
@click.option("--num-gpus-per-worker", default=0.0, show_default=True, type=float,
              help="GPU share per Ray worker (0.5 = two workers per GPU); > 0 runs the workers on CUDA.")
@click.option("--skip-missing", is_flag=True, help="Skip methods that are not registered instead of failing.")
@click.option("--list", "list_only", is_flag=True, help="List evaluation methods and metrics, then exit.")
def evaluate_cmd(directory, model_args, methods, metrics, limit, seed, out_dir, overwrite, target, method_opts,
                 metric_opts, block_size, batch_size, channels_last, device, threads, backend, address, workers,
                 num_gpus_per_worker, skip_missing, list_only):
    """Evaluate saliency methods on DIRECTORY (default: the bundled samples) and write OUT/results.csv
    (long format), OUT/summary.md, OUT/curves.png, OUT/bars.png and OUT/timings.csv; finished work is
    kept in OUT/blocks/, so a re-run with the same OUT resumes (with the thread count recorded there,
    unless --threads is given). With --backend ray, --threads is each worker's (default 1)."""
    if list_only:
        _listing()
        return
    load = cpu_snapshot()     # how busy the CPUs are while this command starts (the default --threads)
    import torch

    from ..evaluation import report, variants
    from ..data import read_folder
    from ..evaluation.run import check_names
    from ..evaluation.store import BlockStore, evaluate_local
    from ..metrics import registry
    from ..models import get_preprocessing
    from .options import THREAD_ENV
    from .progress import Progress

    _check_backend(backend, address, workers, num_gpus_per_worker, device)
    if backend == "ray":  # the driver only reads images; the workers compute
        worker_device, device = ("cuda" if num_gpus_per_worker else "cpu"), "cpu"
    device = resolve_device(device)
    meths = _names(methods, variants.defaults())
    mets = _names(metrics, registry.defaults())
    if skip_missing:
        missing = [m for m in meths if not variants.is_available(m)]
        for m in missing:
            click.echo(f"skipping method {m}: not registered in this version", err=True)
        meths = [m for m in meths if m not in missing]
    if not meths or not mets:
        raise click.BadParameter("expected at least one method and one metric", param_hint="--methods/--metrics")
    mo = parse_named_options(method_opts, "--option")
    ko = parse_named_options(metric_opts, "--metric-option")
    try:
        check_names(meths, mets)
        for name in meths:
            variants.resolve(name, mo)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--methods/--metrics/--option") from None
    check_named_option_keys(mo)
    check_metric_option_keys(ko)
    if limit is not None and limit < 1:
        raise click.BadParameter("expected a positive number", param_hint="--limit")
    if directory is not None and not directory.is_dir():
        raise click.BadParameter(f"not a directory: {directory}", param_hint="DIRECTORY")
    spec = model_spec(model_args)
    model = model_label(spec)
    if backend == "ray":   # the workers' threads: --threads, else one each
        n_threads = threads or 1
    else:
        kept = recorded_threads(out_dir) if threads is None and not overwrite else None
        if kept is not None and not any(os.environ.get(k, "").strip() for k in THREAD_ENV):
            threads = kept
            click.echo(f"resuming with {kept} torch thread(s), as recorded in {out_dir / 'blocks'} "
                       f"(--threads to change)", err=True)
        n_threads, why = apply_threads(threads, load)
        click.echo(f"torch threads: {n_threads} ({why})", err=True)
    net = _load_model(spec, device)
    items, labels, skipped = read_folder(directory, limit, get_preprocessing(net))
    for name, why in skipped:
        click.echo(f"skipping unreadable image {name}: {why}", err=True)
    if not items:
        raise click.ClickException("no readable images")
    names = [n for n, _ in items]
    # the values depend on where they are computed: the device and the torch threads (a Ray worker
    # uses one thread per reserved CPU, one by default)
    where = {"device": worker_device, "threads": n_threads} if backend == "ray" else \
        {"device": device, "threads": torch.get_num_threads()}
    try:
        store = BlockStore(out_dir, names, meths, mets, model=spec.identity(), seed=seed, target=target, labels=labels,
                           method_options=mo, metric_options=ko, block_size=block_size, batch_size=batch_size,
                           channels_last=channels_last, overwrite=overwrite, **where)
    except (ValueError, TypeError) as e:
        raise click.ClickException(str(e)) from None
    if store.finished:
        click.echo(f"resuming: {len(store.finished)} finished (block, method) results kept from {store.dir}", err=True)

    result = None
    t0 = time.perf_counter()
    try:
        with Progress(len(items) * len(meths), "evaluate", unit="image x method") as bar:
            if backend == "ray":
                from ..evaluation.ray import evaluate_on_ray

                # a worker loads the model by name, or from the picklable spec (a file must be reachable there)
                result = evaluate_on_ray(store, spec.name if spec.plain else spec, items, progress=bar.update,
                                         workers=workers, address=address, num_gpus_per_worker=num_gpus_per_worker)
            else:
                result = evaluate_local(store, net, items, progress=bar.update)
    except (ConnectionError, RuntimeError) as e:
        if backend != "ray":
            raise
        raise click.ClickException(str(e)) from None  # a lost cluster, or a block that kept dying
    except (ValueError, TypeError) as e:
        raise click.ClickException(str(e)) from None
    finally:  # after an error or an interruption too, the tables hold everything finished so far
        report.write_tables(out_dir, store.assemble() if result is None else result, names, meths, mets)
    if skipped:
        (out_dir / "skipped.txt").write_text("".join(f"{n}\t{w}\n" for n, w in skipped))
    title = f"saliencekit evaluate: {model}, {len(items)} image(s), seed {seed}"
    report.write_report(out_dir, result.rows, result.curves, meths, mets, title)
    click.echo(f"wrote {out_dir / 'results.csv'} ({len(result.rows)} values, {time.perf_counter() - t0:.1f} s), "
               f"summary.md, curves.png, bars.png, timings.csv to {out_dir}/")
    click.echo((out_dir / "summary.md").read_text())
