"""``saliencekit evaluate``: methods x metrics over a folder of images, resumable, with a report."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_METHODS = "gradient,smoothgrad,ig_black,smoothtaylor,positive,negative,random"
DEFAULT_METRICS = "deletion,insertion,autvc,allegiance,average_drop,increase_in_confidence"
RESULT_FIELDS = ("image", "class_index", "method", "metric", "value")
CURVE_FIELDS = ("image", "method", "metric", "step", "value")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.8g}"
    return str(v)


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows, fields, key) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    seen = set()
    for r in sorted(rows, key=key):
        line = tuple(_fmt(r[f]) for f in fields)
        k = line[:-1]
        if k in seen:
            continue
        seen.add(k)
        w.writerow(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def _parse_opts(pairs, what: str) -> dict[str, dict[str, Any]]:
    from . import _parse_value

    out: dict[str, dict[str, Any]] = {}
    for p in pairs:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise click.BadParameter(f"expected NAME.KEY=VALUE, got {p!r}", param_hint=what)
        lhs, v = p.split("=", 1)
        name, k = lhs.split(".", 1)
        out.setdefault(name.strip(), {})[k.strip().replace("-", "_")] = _parse_value(v)
    return out


def _load_model(name: str, device: str):
    from ..models import load_model

    return load_model(name, device=device)


def _collect(directory: Path | None, limit: int | None, spec):
    """[(name, pixels)], labels, [(name, reason)] skipped."""
    from .. import data

    items, skipped, labels = [], [], {}
    if directory is None:
        for name, arr in data.sample_images():
            items.append((name, data.load_images(arr, preprocessing=spec, normalize=False)[0]))
        return items[:limit] if limit else items, labels, skipped
    files = data.list_images(directory)
    raw = data.load_labels(directory)
    if limit:
        files = files[:limit]
    for p in files:
        try:
            t = data.load_images(p, preprocessing=spec, normalize=False)[0]
        except (ValueError, FileNotFoundError, OSError) as e:
            skipped.append((p.name, str(e)))
            continue
        items.append((p.name, t))
        if p.name in raw:
            labels[p.name] = raw[p.name]
    return items, labels, skipped


def write_report(out: Path, rows, curves, methods, metrics, title: str) -> None:
    """summary.md (mean and 95% interval per method and metric) and the plots."""
    from ..evaluation.run import summarize
    from ..metrics.registry import METRICS

    summ = summarize(rows, methods, metrics)
    lines = [f"# {title}", "",
             "Mean over images and 95% Student-t interval. "
             + ", ".join(f"{m} {METRICS[m].direction} is better" for m in metrics) + ".", ""]
    head = "| method | " + " | ".join(f"{m} {METRICS[m].arrow}" for m in metrics) + " |"
    lines += [head, "|" + "---|" * (len(metrics) + 1)]
    for meth in methods:
        cells = []
        for m in metrics:
            if (meth, m) in summ:
                mean, lo, hi, n = summ[(meth, m)]
                cells.append(f"{mean:.4g} [{lo:.4g}, {hi:.4g}]" if n > 1 else f"{mean:.4g}")
            else:
                cells.append("–")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    ns = sorted({v[3] for v in summ.values()})
    lines += ["", f"Images per cell: {', '.join(map(str, ns)) if ns else 0}.", ""]
    (out / "summary.md").write_text("\n".join(lines))
    _plots(out, summ, curves, methods, metrics)


def _plots(out: Path, summ, curves, methods, metrics) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = [m for m in ("deletion", "insertion", "deletion_igos", "insertion_igos") if m in metrics]
    if cm:
        fig, axes = plt.subplots(1, len(cm), figsize=(5 * len(cm), 4), squeeze=False)
        for ax, metric in zip(axes[0], cm):
            for meth in methods:
                per: dict[str, dict[int, float]] = {}
                for c in curves:
                    if c["method"] == meth and c["metric"] == metric:
                        per.setdefault(c["image"], {})[int(c["step"])] = float(c["value"])
                if not per:
                    continue
                n = max(len(v) for v in per.values())
                arr = np.array([[v.get(s, np.nan) for s in range(n)] for v in per.values()])
                ax.plot(np.linspace(0, 1, n), np.nanmean(arr, 0), label=meth)
            ax.set_title(metric)
            ax.set_xlabel("fraction of pixels moved")
            ax.set_ylabel("class probability")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)
        plt.close(fig)
    cols = min(3, len(metrics))
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.5 * rows_n), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics):
        ms = [m for m in methods if (m, metric) in summ]
        means = [summ[(m, metric)][0] for m in ms]
        err = [[summ[(m, metric)][0] - summ[(m, metric)][1] for m in ms],
               [summ[(m, metric)][2] - summ[(m, metric)][0] for m in ms]]
        err = np.nan_to_num(np.array(err, dtype=float)) if ms else None
        ax.bar(range(len(ms)), means, yerr=err, capsize=3)
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels(ms, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "bars.png", dpi=100)
    plt.close(fig)


def register(main: click.Group) -> None:
    @main.command("evaluate")
    @click.argument("directory", required=False, type=click.Path(path_type=Path))
    @click.option("--model", default="efficientnet-lite0", show_default=True, help="Model name.")
    @click.option("--methods", default=DEFAULT_METHODS, show_default=True,
                  help="Comma-separated evaluation methods (see `saliencekit evaluate --list`).")
    @click.option("--metrics", default=DEFAULT_METRICS, show_default=True, help="Comma-separated metrics.")
    @click.option("--limit", default=None, type=int, help="Only the first N images (sorted by file name).")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--out", "out_dir", default="eval", show_default=True, type=click.Path(path_type=Path))
    @click.option("--overwrite", is_flag=True, help="Recompute and replace finished results.")
    @click.option("--target", default="predicted", show_default=True, type=click.Choice(["predicted", "label"]),
                  help="Explain the predicted class or the labels.json class.")
    @click.option("--option", "-o", "method_opts", multiple=True,
                  help="Method option NAME.KEY=VALUE (NAME: evaluation or registered method), repeatable.")
    @click.option("--metric-option", "-M", "metric_opts", multiple=True,
                  help="Metric option METRIC.KEY=VALUE, e.g. deletion.step=3136, repeatable.")
    @click.option("--block-size", default=8, show_default=True, type=int, help="Images per block.")
    @click.option("--batch-size", default=None, type=int, help="Rows per forward chunk (default: automatic).")
    @click.option("--channels-last", is_flag=True,
                  help="Maps and metrics in channels_last memory layout (about 2x faster on CPU for "
                       "EfficientNet-style models; values change by float rounding only).")
    @click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
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
    def evaluate_cmd(directory, model, methods, metrics, limit, seed, out_dir, overwrite, target, method_opts,
                     metric_opts, block_size, batch_size, channels_last, device, backend, address, workers, num_gpus_per_worker,
                     skip_missing, list_only):
        """Evaluate saliency methods on DIRECTORY (default: the bundled samples) and write OUT/results.csv
        (long format), OUT/summary.md, OUT/curves.png, OUT/bars.png and OUT/timings.csv."""
        from tqdm import tqdm

        from ..evaluation import run as ev
        from ..evaluation import variants
        from ..metrics.registry import METRICS
        from . import resolve_device
        from ..models import get_preprocessing

        if list_only:
            click.echo("methods: " + ", ".join(variants.available()))
            click.echo("metrics: " + ", ".join(METRICS))
            return
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
            worker_device, device = ("cuda" if num_gpus_per_worker else "cpu"), "cpu"  # the driver only preprocesses
        else:
            for flag, v in (("--address", address), ("--workers", workers)):
                if v is not None:
                    raise click.BadParameter("only with --backend ray", param_hint=flag)
            if num_gpus_per_worker:
                raise click.BadParameter("only with --backend ray", param_hint="--num-gpus-per-worker")
        device = resolve_device(device)
        meths = [m.strip() for m in methods.split(",") if m.strip()]
        mets = [m.strip() for m in metrics.split(",") if m.strip()]
        if skip_missing:
            missing = [m for m in meths if not variants.is_available(m)]
            for m in missing:
                click.echo(f"skipping method {m}: not registered in this version", err=True)
            meths = [m for m in meths if m not in missing]
        if not meths or not mets:
            raise click.BadParameter("expected at least one method and one metric", param_hint="--methods/--metrics")
        mo = _parse_opts(method_opts, "--option")
        ko = _parse_opts(metric_opts, "--metric-option")
        try:
            ev.check_names(meths, mets)
            for name in meths:
                variants.resolve(name, mo)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--methods/--metrics/--option") from None
        if limit is not None and limit < 1:
            raise click.BadParameter("expected a positive number", param_hint="--limit")
        if directory is not None and not directory.is_dir():
            raise click.BadParameter(f"not a directory: {directory}", param_hint="DIRECTORY")
        try:
            net = _load_model(model, device)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--model") from None
        spec = get_preprocessing(net)
        items, labels, skipped = _collect(directory, limit, spec)
        for name, why in skipped:
            click.echo(f"skipping unreadable image {name}: {why}", err=True)
        if not items:
            raise click.ClickException("no readable images")
        out_dir.mkdir(parents=True, exist_ok=True)
        res_path, cur_path, tim_path = out_dir / "results.csv", out_dir / "curves.csv", out_dir / "timings.csv"
        ext_path = out_dir / "extras.csv"
        old_rows = [] if overwrite else _read(res_path)
        old_curves = [] if overwrite else _read(cur_path)
        old_times = [] if overwrite else _read(tim_path)
        old_extras = [] if overwrite else _read(ext_path)
        names = [n for n, _ in items]
        requested = set(mets)
        have: dict[tuple[str, str], set] = {}
        for r in old_rows:
            have.setdefault((r["image"], r["method"]), set()).add(r["metric"])
        done = {k for k, v in have.items() if requested <= v and k[0] in names}
        if overwrite:
            redo = set()
        else:
            # partial pairs are recomputed: drop their old rows so no value is duplicated
            redo = {(n, m) for n in names for m in meths if (n, m) not in done}
            old_rows = [r for r in old_rows if (r["image"], r["method"]) not in redo]
            old_curves = [r for r in old_curves if (r["image"], r["method"]) not in redo]
            old_extras = [r for r in old_extras if (r["image"], r["method"]) not in redo]
        if done:
            click.echo(f"resuming: {len(done)} finished (image, method) pairs kept", err=True)
        img_rank = {n: k for k, n in enumerate(names)}
        meth_rank = {m: k for k, m in enumerate(meths)}
        met_rank = {m: k for k, m in enumerate(mets)}

        def key(r):
            return (img_rank.get(r["image"], len(img_rank)), r["image"], meth_rank.get(r["method"], len(meth_rank)),
                    r["method"], met_rank.get(r["metric"], len(met_rank)), r["metric"], int(r.get("step", 0) or 0))

        def tkey(r):
            return (img_rank.get(r["image"], len(img_rank)), r["image"], r["method"], r["stage"])

        def ekey(r):
            return (img_rank.get(r["image"], len(img_rank)), r["image"], r["method"], r["key"])

        all_rows, all_curves, all_times, all_extras = list(old_rows), list(old_curves), list(old_times), list(old_extras)
        all_times = [t for t in all_times if (t["image"], t["method"]) not in redo]

        def flush(res):
            all_rows.extend(res.rows)
            all_curves.extend(res.curves)
            all_times.extend(res.timings)
            all_extras.extend(res.extras)
            _write(res_path, all_rows, RESULT_FIELDS, key)
            _write(cur_path, all_curves, CURVE_FIELDS, key)
            _write(tim_path, all_times, ("image", "method", "stage", "seconds"), tkey)
            _write(ext_path, all_extras, ("image", "method", "key", "value"), ekey)

        t0 = time.perf_counter()
        with tqdm(total=len(items) * len(meths), desc="evaluate", unit="img x method", disable=None) as bar:
            try:
                if backend == "ray":
                    from ..evaluation.ray import evaluate_images_ray

                    evaluate_images_ray(model, items, meths, mets, seed=seed, labels=labels, target=target,
                                        method_options=mo, metric_options=ko, block_size=block_size, done=done,
                                        batch_size=batch_size, progress=bar.update, on_block=flush,
                                        channels_last=channels_last, out_dir=out_dir,
                                        device=worker_device, workers=workers, address=address,
                                        num_gpus_per_worker=num_gpus_per_worker, overwrite=overwrite)
                else:
                    ev.evaluate_images(net, items, meths, mets, seed=seed, labels=labels, target=target,
                                       method_options=mo, metric_options=ko, block_size=block_size, done=done,
                                       batch_size=batch_size, progress=bar.update, on_block=flush,
                                       channels_last=channels_last)
            except (ConnectionError, RuntimeError) as e:
                if backend != "ray":
                    raise
                raise click.ClickException(str(e)) from None  # a lost cluster, or a block that kept dying
            except (ValueError, TypeError) as e:
                raise click.ClickException(str(e)) from None
        flush(ev.EvalResult())
        if skipped:
            (out_dir / "skipped.txt").write_text("".join(f"{n}\t{w}\n" for n, w in skipped))
        title = (f"saliencekit evaluate: {model}, {len(items)} image(s), seed {seed}")
        current = [r for r in all_rows if r["image"] in img_rank and r["method"] in meth_rank
                   and r["metric"] in met_rank]
        write_report(out_dir, current, [c for c in all_curves if c["image"] in img_rank], meths, mets, title)
        click.echo(f"wrote {res_path} ({len(current)} values, {time.perf_counter() - t0:.1f} s), "
                   f"summary.md, curves.png, bars.png, timings.csv to {out_dir}/")
        click.echo((out_dir / "summary.md").read_text())
