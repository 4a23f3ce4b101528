"""The files of ``saliencekit evaluate``: the CSV tables, summary.md (mean and 95% interval per method
and metric) and the plots (curves.png, bars.png).

The CSV files are long format, sorted by image (evaluation order), method and metric (run order)
and step, numbers with 8 significant digits: the same results give the same bytes whichever
backend, block size or resume history produced them. What a metric means for the report (which
direction is better, whether it has a curve) comes from the metric registry.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics.registry import METRICS
from .run import FIELDS, EvalResult, summarize
from .store import atomic_write_text

# file name of each table of an EvalResult
FILES = {"rows": "results.csv", "curves": "curves.csv", "timings": "timings.csv", "extras": "extras.csv"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.8g}"
    return str(v)


def _write(path: Path, rows, fields, key) -> None:
    """``rows`` sorted by ``key`` as CSV with the columns ``fields``, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in sorted(rows, key=key):
        w.writerow([_fmt(r[f]) for f in fields])
    atomic_write_text(path, buf.getvalue())


def write_tables(out: Path, result: EvalResult, images: Sequence[str], methods: Sequence[str],
                 metrics: Sequence[str]) -> None:
    """results.csv, curves.csv, timings.csv and extras.csv of ``result`` in ``out``.

    Values and curves are sorted by image (in ``images`` order), method and metric (in the
    orders given) and step; timings and extras by image, then method and stage / key by name.
    """
    img = {n: k for k, n in enumerate(images)}
    meth = {m: k for k, m in enumerate(methods)}
    met = {m: k for k, m in enumerate(metrics)}
    keys = {
        "rows": lambda r: (img[r["image"]], meth[r["method"]], met[r["metric"]]),
        "curves": lambda r: (img[r["image"]], meth[r["method"]], met[r["metric"]], r["step"]),
        "timings": lambda r: (img[r["image"]], r["method"], r["stage"]),
        "extras": lambda r: (img[r["image"]], r["method"], r["key"]),
    }
    for table, fields in FIELDS.items():
        _write(Path(out) / FILES[table], getattr(result, table), fields, keys[table])


def write_report(out: Path, rows, curves, methods: Sequence[str], metrics: Sequence[str], title: str) -> None:
    """summary.md (mean and 95% Student-t interval per method and metric) and the plots."""
    out = Path(out)
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
    atomic_write_text(out / "summary.md", "\n".join(lines))
    _plots(out, summ, curves, methods, metrics)


def _plots(out: Path, summ, curves, methods: Sequence[str], metrics: Sequence[str]) -> None:
    """curves.png (mean curve per method, one panel per curve metric) and bars.png (mean and 95%
    interval per method, one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curve_metrics = [m for m, spec in METRICS.items() if spec.kind == "curve" and m in metrics]
    if curve_metrics:
        fig, axes = plt.subplots(1, len(curve_metrics), figsize=(5 * len(curve_metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], curve_metrics):
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


__all__ = ["FILES", "write_report", "write_tables"]
