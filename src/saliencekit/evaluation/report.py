"""The files of ``saliencekit evaluate``: the CSV tables, summary.md (mean and 95% interval per method
and metric) and the plots (curves.png, bars.png).

The CSV files are long format, sorted by image (evaluation order), method and metric (run order)
and step, numbers with 8 significant digits: the same results give the same bytes whichever
backend, block size or resume history produced them. ``SHA256SUMS`` (the format of ``sha256sum``)
holds the digest of each table as written. What a metric means for the report (which direction
is better, whether it has a curve, its range) comes from the metric registry.

``evaluate`` never reads its CSV files back: they are assembled from the block store at the end of
every run. Tools that read ``results.csv`` use :func:`read_results`, which refuses a damaged file
with the file and line named rather than returning a truncated or empty value.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics.registry import METRICS
from .run import FIELDS, EvalResult, summarize
from .store import atomic_write_text

# file name of each table of an EvalResult
FILES = {"rows": "results.csv", "curves": "curves.csv", "timings": "timings.csv", "extras": "extras.csv"}
SUMS = "SHA256SUMS"      # digests of the tables, one "HEX  NAME" line each (``sha256sum -c SHA256SUMS``)
CONFIDENCE = 0.95


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.8g}"
    return str(v)


def _write(path: Path, rows, fields, key) -> str:
    """``rows`` sorted by ``key`` as CSV with the columns ``fields``, written atomically; returns
    the sha256 of the bytes written."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in sorted(rows, key=key):
        w.writerow([_fmt(r[f]) for f in fields])
    text = buf.getvalue()
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def write_tables(out: Path, result: EvalResult, images: Sequence[str], methods: Sequence[str],
                 metrics: Sequence[str]) -> None:
    """results.csv, curves.csv, timings.csv and extras.csv of ``result`` in ``out``, and their
    digests in ``SHA256SUMS``.

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
    sums = ""
    for table, fields in FIELDS.items():
        digest = _write(Path(out) / FILES[table], getattr(result, table), fields, keys[table])
        sums += f"{digest}  {FILES[table]}\n"
    atomic_write_text(Path(out) / SUMS, sums)


def _within(value: float, bounds: tuple[float, float]) -> bool:
    """``value`` in ``bounds``, allowing float32 rounding at the ends (an AUC of 1.0000001)."""
    lo, hi = bounds
    tol = 1e-5 * (hi - lo)
    return lo - tol <= value <= hi + tol


def _recorded_digest(path: Path) -> str | None:
    """The sha256 that ``SHA256SUMS`` beside ``path`` records for it, if any."""
    sums = path.parent / SUMS
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        if m and m.group(2) == path.name:
            return m.group(1)
    return None


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` written by ``saliencekit evaluate``: dicts with ``image``,
    ``class_index`` (int), ``method``, ``metric`` and ``value`` (float; ``nan`` where undefined).

    A file that is not exactly what ``evaluate`` writes is refused with a ``ValueError`` naming the
    file and the line: bytes that are not UTF-8 text or NUL bytes, a missing or different header, a
    line cut short (no end of line), a wrong number of columns, an empty or non-numeric value, a
    value outside its metric's range (``MetricSpec.bounds``). When ``SHA256SUMS`` beside it records
    a digest for it, the file must match it: a value cut short or edited that still looks like a
    number is refused too.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not raw:
        raise ValueError(f"{path}: line 1: the file is empty (expected the header "
                         f"{','.join(FIELDS['rows'])})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line_no}: bytes that are not UTF-8 text (binary data?)") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    else:
        raise ValueError(f"{path}: line {len(lines)}: cut short (the file does not end with an end of line)")
    header = ",".join(FIELDS["rows"])
    rows: list[dict[str, Any]] = []
    for no, line in enumerate(lines, start=1):
        where = f"{path}: line {no}"
        if "\x00" in line:
            raise ValueError(f"{where}: holds NUL bytes (binary data)")
        if no == 1:
            if line != header:
                raise ValueError(f"{where}: expected the header {header!r}, got {line[:80]!r}")
            continue
        cells = next(csv.reader([line]))
        if len(cells) != len(FIELDS["rows"]):
            raise ValueError(f"{where}: expected {len(FIELDS['rows'])} columns ({header}), got {len(cells)}")
        r = dict(zip(FIELDS["rows"], cells, strict=True))
        for f in ("image", "method", "metric", "value"):
            if not r[f].strip():
                raise ValueError(f"{where}: the {f} is empty")
        try:
            r["class_index"] = int(r["class_index"])
        except ValueError:
            raise ValueError(f"{where}: class_index: expected an integer, got {r['class_index'][:40]!r}") from None
        try:
            value = float(r["value"])
        except ValueError:
            raise ValueError(f"{where}: value: expected a number, got {r['value'][:40]!r}") from None
        if _fmt(value) != r["value"]:
            raise ValueError(f"{where}: value: {r['value'][:40]!r} is not a number as evaluate writes it "
                             f"(8 significant digits: {_fmt(value)!r})")
        spec = METRICS.get(r["metric"])
        if spec is not None and spec.bounds is not None and not math.isnan(value) \
                and not _within(value, spec.bounds):
            raise ValueError(f"{where}: value {r['value']} is outside the range of {r['metric']} "
                             f"[{spec.bounds[0]:g}, {spec.bounds[1]:g}]")
        r["value"] = value
        rows.append(r)
    recorded = _recorded_digest(path)
    if recorded is not None and recorded != hashlib.sha256(raw).hexdigest():
        raise ValueError(f"{path}: does not match the sha256 that {SUMS} records for it (a value was edited or "
                         f"cut short after saliencekit evaluate wrote it); re-run saliencekit evaluate with the same "
                         f"--out to write it again from the stored results")
    return rows


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` of ``n``), inside [0, 1]."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at p = 0 (or 1) the end is exactly 0 (or 1); the formula leaves a rounding residue
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def intervals(rows, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None
              ) -> dict[tuple[str, str], tuple[float, float, float, int, str]]:
    """(method, metric) -> (mean, 95% low, 95% high, n, how), NaNs dropped, inside the metric's range.

    ``how`` names the interval: ``"t"``, the Student-t interval of
    :func:`~saliencekit.evaluation.run.summarize`; for a metric with ``bounds`` whose values all lie
    at the two ends of its range (increase in confidence: 0 or 100 per image) ``"wilson"``, the
    Wilson score interval of the proportion at the high end, scaled to the range; for other bounded
    metrics the Student-t interval with its ends clipped to the range (``"t, clipped"`` when a
    clip applied). The mean always lies inside its interval.
    """
    values: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        v = float(r["value"])
        if not math.isnan(v):
            values.setdefault((r["method"], r["metric"]), []).append(v)
    out = {}
    for key, (mean, lo, hi, n) in summarize(rows, methods, metrics).items():
        spec = METRICS.get(key[1])
        how = "t"
        if spec is not None and spec.bounds is not None and n > 1:
            b_lo, b_hi = spec.bounds
            vals = values[key]
            if all(v in (b_lo, b_hi) for v in vals):
                p_lo, p_hi = wilson(sum(v == b_hi for v in vals), n)
                lo, hi, how = b_lo + p_lo * (b_hi - b_lo), b_lo + p_hi * (b_hi - b_lo), "wilson"
            else:  # clipped to the range, or to the mean if values lie outside it (a metric off its bounds)
                c_lo, c_hi = max(lo, min(b_lo, mean)), min(hi, max(b_hi, mean))
                if (c_lo, c_hi) != (lo, hi):
                    lo, hi, how = c_lo, c_hi, "t, clipped"
        out[key] = (mean, lo, hi, n, how)
    return out


def write_report(out: Path, rows, curves, methods: Sequence[str], metrics: Sequence[str], title: str) -> None:
    """summary.md (mean and 95% interval per method and metric, within each metric's range) and the plots."""
    out = Path(out)
    summ = intervals(rows, methods, metrics)
    bounded = [m for m in metrics if METRICS[m].bounds is not None]
    how = "Mean over images and 95% Student-t interval."
    if bounded:
        how = ("Mean over images and 95% interval: Student-t, kept inside the range of each bounded metric ("
               + ", ".join(f"{m} [{METRICS[m].bounds[0]:g}, {METRICS[m].bounds[1]:g}]" for m in bounded)
               + ") by clipping its ends, or the Wilson score interval when every value is at one end of "
                 "the range (a proportion, as increase in confidence).")
    marks = {"wilson": " ʷ", "t, clipped": " ᶜ"}
    lines = [f"# {title}", "",
             how + " " + ", ".join(f"{m} {METRICS[m].direction} is better" for m in metrics) + ".", ""]
    head = "| method | " + " | ".join(f"{m} {METRICS[m].arrow}" for m in metrics) + " |"
    lines += [head, "|" + "---|" * (len(metrics) + 1)]
    for meth in methods:
        cells = []
        for m in metrics:
            if (meth, m) in summ:
                mean, lo, hi, n, how = summ[(meth, m)]
                cells.append(f"{mean:.4g} [{lo:.4g}, {hi:.4g}]{marks.get(how, '')}" if n > 1 else f"{mean:.4g}")
            else:
                cells.append("–")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    ns = sorted({v[3] for v in summ.values()})
    lines += ["", f"Images per cell: {', '.join(map(str, ns)) if ns else 0}."]
    used = {v[4] for v in summ.values() if v[3] > 1}
    if "wilson" in used or "t, clipped" in used:
        lines.append("ʷ Wilson score interval (every value at an end of the range); "
                     "ᶜ Student-t interval clipped to the metric's range.")
    lines.append("")
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
        err = np.clip(np.nan_to_num(np.array(err, dtype=float)), 0, None) if ms else None
        ax.bar(range(len(ms)), means, yerr=err, capsize=3)
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels(ms, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "bars.png", dpi=100)
    plt.close(fig)


__all__ = ["FILES", "SUMS", "intervals", "read_results", "wilson", "write_report", "write_tables"]
