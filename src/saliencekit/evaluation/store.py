"""The resumable block store of ``saliencekit evaluate``, shared by the local and the Ray backend.

The images are cut into contiguous blocks of ``block_size`` (in list order). The unit of work, of
storage and of resume is one **(block, method)** pair: every finished pair is written at once to
``OUT/blocks/block_XXXX.METHOD.json``, atomically (temporary file, ``fsync``, rename), so an entry
is either complete on disk or absent. An entry holds the pair's four tables (rows, curves, timings,
extras; floats as ``repr``, exact), the configuration that produced it and the sha256 of all of
that (``sha256``), so an entry damaged on disk or edited by hand is recognised:

* the run's settings: model, device, torch threads, seed, target, chunk size, memory layout;
* the block's image names (and their labels with ``target="label"``);
* the method's resolved options and heatmap options (``variants.resolve``);
* per metric, its effective options.

A later run reuses an entry only when all of this matches and the entry holds every requested
metric (it then keeps only those); anything else is recomputed and the entry replaced, so a
changed configuration never reuses stale results and nothing is computed or written twice. An
entry that cannot be trusted (not UTF-8 text, empty, not complete JSON, missing fields, a sha256
that does not match its content, tables that do not cover its block) is never used: its pair is
recomputed and a :class:`StoreEntryWarning` names the file and what is wrong with it.
``overwrite=True`` empties the store first. The CSV files of ``OUT/`` are assembled from the
entries (``evaluation.report``); the layout is documented in docs/evaluation.md.

``evaluate_local`` is the local backend; ``evaluation.ray.evaluate_on_ray`` is the same work on Ray
actors, with the same store.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from ..core import checks
from ..metrics.registry import METRICS
from . import variants
from .run import FIELDS, TARGETS, EvalResult, check_names, evaluate_images

BLOCKS_DIR = "blocks"
FORMAT = 2                 # 2: entries carry the sha256 of their content
# the fields of an entry besides its four tables
ENTRY_FIELDS = ("format", "key", "config", "metrics", "sha256")


class StoreEntryWarning(UserWarning):
    """A block-store entry that cannot be trusted (damaged, cut short, edited): its pair is recomputed."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file (or none) or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def plan_blocks(names: Sequence[str], block_size: int) -> list[list[str]]:
    """Contiguous blocks of ``block_size`` names, in list order."""
    checks.positive_int("block_size", block_size)
    return [list(names[i:i + block_size]) for i in range(0, len(names), block_size)]


def _plain(v: Any) -> Any:
    """JSON stand-in for an option value that is not JSON (a tensor or array: its shape, dtype and a
    hash of its bytes, so two different baselines never look alike)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().contiguous().numpy()
    if hasattr(v, "tobytes") and hasattr(v, "dtype"):
        return {"array": list(getattr(v, "shape", ())), "dtype": str(v.dtype),
                "sha256": hashlib.sha256(v.tobytes()).hexdigest()}
    return repr(v)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_plain)


def entry_digest(entry: dict[str, Any]) -> str:
    """The sha256 of an entry's content (every field but ``sha256``), as JSON with sorted keys.

    JSON floats round-trip exactly (``repr``), so the digest of an entry read back from disk equals
    the one computed when it was written, unless its text was changed."""
    body = {k: v for k, v in entry.items() if k != "sha256"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


class BlockStore:
    """The finished (block, method) results of one evaluation run, under ``OUT/blocks/``.

    ``names`` are the images in evaluation order (unique: they key the noise and the rows);
    ``methods`` / ``metrics`` and the keyword arguments are those of
    :func:`~saliencekit.evaluation.run.evaluate_images`. ``model`` names the model (a model name,
    or any string that identifies the weights), ``device`` and ``threads`` (torch threads, default:
    the current number) say where the values are computed: float sums on CPU depend on the thread
    count, so they are part of an entry's configuration.
    """

    def __init__(self, out_dir: str | Path, names: Sequence[str], methods: Sequence[str], metrics: Sequence[str], *,
                 model: str, seed: int = 0, target: str = "predicted", labels: dict[str, int] | None = None,
                 method_options: dict[str, dict[str, Any]] | None = None,
                 metric_options: dict[str, dict[str, Any]] | None = None, block_size: int = 8,
                 batch_size: int | None = None, channels_last: bool = False, device: str = "cpu",
                 threads: int | None = None, overwrite: bool = False):
        check_names(methods, metrics)
        checks.choice("target", target, TARGETS)
        checks.boolean("channels_last", channels_last)
        checks.boolean("overwrite", overwrite)
        checks.optional_positive_int("batch_size", batch_size)
        if not isinstance(model, str):
            raise TypeError(f"model: expected a string naming the model, got {type(model).__name__}")
        names = list(names)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"images: names must be unique (they key the noise and the rows); {dup!r} repeats")
        for k in metric_options or {}:
            if k not in METRICS:
                raise ValueError(f"metric_options: unknown metric {k!r}")
        if len(set(methods)) != len(methods) or len(set(metrics)) != len(metrics):
            raise ValueError("methods/metrics: each name may appear once")
        self.dir = Path(out_dir) / BLOCKS_DIR
        self.names = names
        self.blocks = plan_blocks(names, block_size)
        self.methods = list(methods)
        self.metrics = list(metrics)
        self.device = str(device)
        self.threads = checks.positive_int("threads", torch.get_num_threads() if threads is None else threads)
        self.labels = {n: labels[n] for n in names if labels and n in labels}
        self.arguments = {"seed": seed, "target": target, "method_options": method_options,
                          "metric_options": metric_options, "batch_size": batch_size, "channels_last": channels_last}
        self._block_of = {n: k for k, block in enumerate(self.blocks) for n in block}
        self._settings = {"format": FORMAT, "model": model, "device": self.device, "threads": self.threads,
                          "seed": seed, "target": target, "batch_size": batch_size, "channels_last": channels_last}
        # per method: its resolved options, and the effective options of each metric (as evaluate_images
        # applies them: the variant's metric options, then metric_options)
        self._method_settings: dict[str, dict[str, Any]] = {}
        self._metric_options: dict[str, dict[str, str]] = {}
        for name in self.methods:
            base, opts, heatmap, fixed = variants.resolve(name, method_options)
            self._method_settings[name] = {"method": name, "registered": base, "options": opts, "heatmap": heatmap}
            self._metric_options[name] = {
                m: _canonical(dict(fixed.get(m) or {}, **((metric_options or {}).get(m) or {}))) for m in self.metrics}
        if overwrite:
            self.clear()
        # entries that cannot be trusted: (path, what is wrong); their pairs are computed again
        self.rejected: list[tuple[Path, str]] = []
        self.finished = set()
        for k in range(len(self.blocks)):
            for m in self.methods:
                res, problem = self._inspect(k, m)
                if res is not None:
                    self.finished.add((k, m))
                elif problem is not None:
                    self.rejected.append((self.path(k, m), problem))
                    warnings.warn(f"{self.path(k, m)}: {problem}; this entry is not used and block {k} with "
                                  f"method {m!r} is computed again", StoreEntryWarning, stacklevel=2)

    # ---- configuration ----------------------------------------------------------------------------

    def config(self, k: int, method: str) -> dict[str, Any]:
        """Everything but the metrics that the values of (block ``k``, ``method``) depend on."""
        block = self.blocks[k]
        cfg = dict(self._settings, images=block, **self._method_settings[method])
        if self._settings["target"] == "label":
            cfg["labels"] = [self.labels.get(n) for n in block]
        return cfg

    def key(self, k: int, method: str) -> str:
        return hashlib.sha256(_canonical(self.config(k, method)).encode()).hexdigest()

    # ---- entries ------------------------------------------------------------------------------------

    def path(self, k: int, method: str) -> Path:
        return self.dir / f"block_{k:04d}.{quote(method, safe='')}.json"

    def _read(self, k: int, method: str) -> EvalResult | None:
        """The stored result of (block ``k``, ``method``) restricted to this run's metrics, or None
        when there is none, it cannot be trusted, or its configuration differs from this run's."""
        return self._inspect(k, method)[0]

    def _inspect(self, k: int, method: str) -> tuple[EvalResult | None, str | None]:
        """``(result, None)`` for a usable entry; ``(None, None)`` when there is no entry or it is
        another configuration's (or another format's); ``(None, problem)`` when the entry cannot be
        trusted, ``problem`` saying why."""
        try:
            raw = self.path(k, method).read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"cannot be read ({e.strerror or e})"
        if not raw.strip():
            return None, "is empty"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"is not UTF-8 text (binary bytes from byte {e.start})"
        if "\x00" in text:
            return None, f"holds binary bytes (a NUL at byte {text.index(chr(0))})"
        try:
            entry = json.loads(text)
        except ValueError as e:
            where = f"line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
            return None, f"is not complete JSON ({where}; cut short or damaged)"
        if not isinstance(entry, dict):
            return None, f"is not a JSON object (found {type(entry).__name__})"
        if isinstance(entry.get("format"), int) and not isinstance(entry["format"], bool) \
                and entry["format"] != FORMAT:
            return None, None  # written by another version of the store: recomputed like any other configuration
        missing = [f for f in (*ENTRY_FIELDS, *FIELDS) if f not in entry]
        if missing:
            return None, f"lacks the field(s) {', '.join(missing)}"
        if entry["sha256"] != entry_digest(entry):
            return None, "does not match its sha256 (a value was changed, emptied or cut short)"
        if entry["key"] != self.key(k, method):
            return None, None
        stored = entry["metrics"]
        if not isinstance(stored, dict):
            return None, "has a malformed 'metrics' field"
        if any(stored.get(m) != self._metric_options[method][m] for m in self.metrics):
            return None, None
        res = EvalResult()
        try:
            for table, fields in FIELDS.items():
                lines = [dict(zip(fields, line, strict=True)) for line in entry[table]]
                if table in ("rows", "curves"):  # the entry may hold more metrics than this run asks for
                    lines = [r for r in lines if r["metric"] in self.metrics]
                elif table == "timings":
                    lines = [r for r in lines if r["stage"] == "explain" or r["stage"] in self.metrics]
                getattr(res, table).extend(lines)
        except (ValueError, TypeError) as e:
            return None, f"has a malformed table ({e})"
        bad = next((r for r in res.rows if isinstance(r["value"], bool) or not isinstance(r["value"], (int, float))),
                   None)
        if bad is not None:
            return None, f"holds a value that is not a number ({bad['value']!r} for {bad['image']}, {bad['metric']})"
        if table_keys(res) != self._expected(k, method):
            return None, "does not hold exactly one value per image and metric of its block"
        return res, None

    def _expected(self, k: int, method: str) -> list[tuple[str, str, str]]:
        return [(n, method, m) for n in self.blocks[k] for m in self.metrics]

    def load(self, k: int, method: str) -> EvalResult:
        """The stored result of a finished (block ``k``, ``method``)."""
        res = self._read(k, method)
        if res is None:
            raise FileNotFoundError(f"block {k}, method {method!r}: no finished result in {self.dir}")
        return res

    def todo(self, k: int) -> list[str]:
        """The methods still to compute on block ``k``, in run order."""
        return [m for m in self.methods if (k, m) not in self.finished]

    def put(self, result: EvalResult) -> None:
        """Store finished results: each (block, method) of ``result`` must be complete (every image
        of the block, every metric, once); each is written as one atomic entry."""
        groups: dict[tuple[int, str], EvalResult] = {}
        for table in FIELDS:
            for r in getattr(result, table):
                if r["image"] not in self._block_of:
                    raise ValueError(f"result: image {r['image']!r} is not one of this run's images")
                if r["method"] not in self._method_settings:
                    raise ValueError(f"result: method {r['method']!r} is not one of this run's methods")
                key = (self._block_of[r["image"]], r["method"])
                getattr(groups.setdefault(key, EvalResult()), table).append(r)
        for (k, method), res in groups.items():  # all checked before anything is written
            if table_keys(res) != self._expected(k, method):
                raise RuntimeError(f"block {k}, method {method!r}: incomplete or duplicated results "
                                   f"({len(res.rows)} rows for {len(self.blocks[k])} image(s) x "
                                   f"{len(self.metrics)} metric(s)); nothing stored")
        for (k, method), res in groups.items():
            entry = {"format": FORMAT, "key": self.key(k, method), "config": self.config(k, method),
                     "metrics": self._metric_options[method]}
            for table, fields in FIELDS.items():
                entry[table] = [[r[f] for f in fields] for r in getattr(res, table)]
            # the digest of the entry as it will be read back (options that are not JSON become
            # their stand-ins, dictionary keys strings), so a reader recomputes the same value
            entry = json.loads(json.dumps(entry, default=_plain))
            entry["sha256"] = entry_digest(entry)
            atomic_write_text(self.path(k, method), json.dumps(entry))
            self.finished.add((k, method))

    def block(self, k: int) -> EvalResult:
        """Block ``k``'s stored results, method by method in run order (finished methods only)."""
        out = EvalResult()
        for m in self.methods:
            if (k, m) in self.finished:
                out.extend(self.load(k, m))
        return out

    def assemble(self) -> EvalResult:
        """Every finished result of the run, in the order ``evaluate_images`` returns them."""
        out = EvalResult()
        for k in range(len(self.blocks)):
            out.extend(self.block(k))
        return out

    def clear(self) -> int:
        """Delete every entry (and leftover temporary file) of the store; returns the entries deleted."""
        removed = 0
        if self.dir.is_dir():
            for p in self.dir.glob("block_*.json"):
                p.unlink()
                removed += 1
            for p in self.dir.glob(".block_*.tmp"):
                p.unlink()
        self.finished = set()
        return removed


def table_keys(res: EvalResult) -> list[tuple[str, str, str]]:
    """(image, method, metric) of each row, in order."""
    return [(r["image"], r["method"], r["metric"]) for r in res.rows]


def evaluate_local(store: BlockStore, model, images: Sequence[tuple[str, torch.Tensor]],
                   progress: Callable[[int], None] | None = None,
                   on_block: Callable[[EvalResult], None] | None = None) -> EvalResult:
    """The local backend: compute in this process what ``store`` lacks, block by block.

    ``images``: ``(name, pixels C x H x W in [0, 1])`` with the store's names. Each (block,
    method) goes to the store as soon as it is finished. ``on_block(result)`` receives every
    (block, method) result once, the stored ones included; ``progress(k)`` counts images per
    (block, method). Returns the run's results (``store.assemble()``).
    """
    source = dict(images)
    if list(source) != store.names:
        raise ValueError("images: expected the store's images, in the store's order")

    def finished(res: EvalResult) -> None:
        store.put(res)
        if on_block is not None:
            on_block(res)

    for k, block in enumerate(store.blocks):
        for m in store.methods:
            if (k, m) in store.finished:
                if on_block is not None:
                    on_block(store.load(k, m))
                if progress is not None:
                    progress(len(block))
        todo = store.todo(k)
        if todo:
            evaluate_images(model, [(n, source[n]) for n in block], todo, store.metrics,
                            labels={n: store.labels[n] for n in block if n in store.labels},
                            block_size=len(block), progress=progress, on_block=finished, **store.arguments)
    return store.assemble()


__all__ = ["BLOCKS_DIR", "BlockStore", "StoreEntryWarning", "atomic_write_text", "entry_digest", "evaluate_local",
           "plan_blocks"]
