"""Dataset-scale evaluation on a Ray cluster (``saliencekit evaluate --backend ray``).

The image list is cut into the same contiguous blocks the local backend uses (``block_size``).
Each block goes to a Ray actor that loaded the model once; the actor runs the evaluation core itself
(:func:`saliencekit.evaluation.evaluate_images` on exactly that block: same engine, same seeds, noise
keyed by the image's name) and returns the block's rows. The driver writes every finished block to
``OUT/blocks/block_XXXX.csv`` (plus ``.curves.csv``, ``.timings.csv``, ``.extras.csv``) atomically
(temporary file, then rename; the rows file last), so a block is either complete on disk or absent,
and hands the rows to the same writer as the local backend (``results.csv``, summary, plots).

Fault tolerance:

* a worker process that dies (crash, OOM kill, lost node) takes only its block with it: Ray
  restarts the actor (``max_restarts``) and retries the block (``max_task_retries``); if Ray gives
  up, the driver starts a fresh actor and resubmits the block, at most ``max_attempts`` times;
* a re-run with the same ``OUT`` reuses every block file whose configuration and image list are
  unchanged (``OUT/blocks/manifest.json``) and recomputes only the rest; each (image, method,
  metric) is delivered once (a duplicate is an error, never a second row).

Results equal the local backend's bit for bit because the blocks are the same: on CPU, float sums
depend on the batch composition and on the number of torch threads (at the 1e-7 level), so keep
``block_size`` and compare with a local run that uses as many threads as a worker
(``num_cpus_per_worker``, default 1). Ray is imported lazily: the local backend never needs it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

BLOCKS_DIR = "blocks"
MANIFEST = "manifest.json"
RAY_MISSING = ("--backend ray needs Ray, which is not installed; install it with "
               "`pip install 'saliencekit[ray]'` (or `pip install 'ray>=2.9'`)")
# the tables of an EvalResult, their columns and column types; "rows" is written last (commit marker)
TABLES = {
    "curves": (("image", "method", "metric", "step", "value"), (str, str, str, int, float)),
    "timings": (("image", "method", "stage", "seconds"), (str, str, str, float)),
    "extras": (("image", "method", "key", "value"), (str, str, str, float)),
    "rows": (("image", "class_index", "method", "metric", "value"), (str, int, str, str, float)),
}


def require_ray():
    """Import Ray or fail with an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


def ray_available() -> bool:
    try:
        require_ray()
    except ImportError:
        return False
    return True


# ---- block files ---------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either no file / the old file or the whole new one."""
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


def block_path(out_dir: Path, index: int, table: str = "rows") -> Path:
    suffix = ".csv" if table == "rows" else f".{table}.csv"
    return Path(out_dir) / BLOCKS_DIR / f"block_{index:04d}{suffix}"


def _cell(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)  # repr round-trips floats exactly


def write_block(out_dir: Path, index: int, result) -> None:
    """Write one block's tables; the rows file last, so its presence means the block is complete."""
    for table, (fields, _) in TABLES.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(fields)
        for r in getattr(result, table):
            w.writerow([_cell(r[f]) for f in fields])
        atomic_write_text(block_path(out_dir, index, table), buf.getvalue())


def read_block(out_dir: Path, index: int):
    """The EvalResult stored for a block, or None when the block is not (completely) on disk."""
    from .run import EvalResult

    if not block_path(out_dir, index).is_file():
        return None
    res = EvalResult()
    for table, (fields, types) in TABLES.items():
        p = block_path(out_dir, index, table)
        if not p.is_file():
            return None
        with p.open(newline="") as f:
            rd = csv.reader(f)
            if next(rd, None) != list(fields):
                return None
            getattr(res, table).extend({k: t(v) for k, t, v in zip(fields, types, line)} for line in rd)
    return res


def _remove_block(out_dir: Path, index: int) -> None:
    for table in ("rows",) + tuple(t for t in TABLES if t != "rows"):  # commit marker first
        p = block_path(out_dir, index, table)
        if p.exists():
            p.unlink()


def plan_blocks(names: Sequence[str], block_size: int) -> List[List[str]]:
    """Contiguous blocks of ``block_size`` names, in list order (exactly the local backend's blocks)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size: expected a positive int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size}")
    return [list(names[i:i + block_size]) for i in range(0, len(names), block_size)]


def config_key(config: Dict[str, Any]) -> str:
    """A stable fingerprint of everything that changes the rows (model, methods, metrics, seed, ...)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def sync_manifest(out_dir: Path, config: Dict[str, Any], blocks: List[List[str]], overwrite: bool = False) -> int:
    """Delete block files that no longer match (configuration or image list), then record the plan.

    Deleting comes before the new manifest is written, so an interruption in between can only
    cost recomputation, never a stale block. Returns the number of block files deleted.
    """
    bdir = Path(out_dir) / BLOCKS_DIR
    bdir.mkdir(parents=True, exist_ok=True)
    mpath = bdir / MANIFEST
    key = config_key(config)
    old_blocks: List[List[str]] = []
    if mpath.is_file() and not overwrite:
        try:
            old = json.loads(mpath.read_text())
            if old.get("config_key") == key:
                old_blocks = old.get("blocks", [])
        except (OSError, ValueError, AttributeError):
            old_blocks = []
    removed = 0
    indices = set()
    for p in bdir.glob("block_*.csv"):
        try:
            indices.add(int(p.name[len("block_"):].split(".", 1)[0]))
        except ValueError:
            continue
    for k in sorted(indices):
        if not (k < len(blocks) and k < len(old_blocks) and old_blocks[k] == blocks[k]):
            _remove_block(out_dir, k)
            removed += 1
    atomic_write_text(mpath, json.dumps({"config_key": key, "config": config, "blocks": blocks}, indent=1,
                                        default=repr))
    return removed


# ---- shipping images to workers ------------------------------------------------------------------

def _pack(name: str, source: Any) -> Tuple[str, Any]:
    """What travels to a worker: a tensor as is, a file as its bytes (no shared file system needed)."""
    if isinstance(source, (str, Path)):
        try:
            return ("bytes", Path(source).read_bytes())
        except OSError as e:
            raise FileNotFoundError(f"images: cannot read {name!r} from {source} ({e})") from None
    return ("object", source)


def _unpack(name: str, packed: Tuple[str, Any]) -> Any:
    """Inverse of ``_pack`` on the worker; file bytes are decoded as ``data.to_pil`` decodes a path."""
    kind, value = packed
    if kind != "bytes":
        return value
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(value)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"images: cannot read {name!r} as an image ({e})") from None


def evaluate_block(model, images: Sequence[Tuple[str, Any]], **config):
    """One block on a worker: the core's ``evaluate_images`` with the block as its single block.

    ``images`` are ``(name, pixels C x H x W in [0, 1])`` as the core takes them, or
    ``(name, H x W x 3 array)`` (decoded file), preprocessed here with the model's preprocessing
    exactly as ``saliencekit evaluate`` loads files.
    """
    import torch

    from .. import data
    from .run import evaluate_images
    from ..models import get_preprocessing

    spec = get_preprocessing(model)
    imgs = [(n, s if isinstance(s, torch.Tensor) else data.load_images(s, preprocessing=spec, normalize=False)[0])
            for n, s in images]
    return evaluate_images(model, imgs, block_size=max(1, len(imgs)), **config)


# ---- the worker ----------------------------------------------------------------------------------

def import_ref(ref: str) -> Callable:
    """``"package.module:function"`` -> the function."""
    import importlib

    mod, _, name = ref.partition(":")
    return getattr(importlib.import_module(mod), name)


class BlockWorker:
    """Loads the model once, then evaluates blocks with ``block_fn`` (wrapped by ``ray.remote``)."""

    def __init__(self, model: Any, device: str, threads: Optional[int], block_fn: str):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(model, str):
            from ..models import load_model

            self.model = load_model(model, device=device)
        else:  # a picklable zero-argument factory
            self.model = model().to(device).eval()
        self.block_fn = import_ref(block_fn)

    def pid(self) -> int:
        return os.getpid()

    def run(self, index: int, items: List[Tuple[str, Tuple[str, Any]]], config: Dict[str, Any],
            crash_once: Optional[Tuple[int, str]] = None):
        if crash_once is not None and crash_once[0] == index:
            # test hook: the first worker to reach this block dies abruptly (the marker file makes it once)
            try:
                fd = os.open(crash_once[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        return self.block_fn(self.model, [(n, _unpack(n, p)) for n, p in items], **config)


# ---- the driver ----------------------------------------------------------------------------------

_DEAD_WORKER_ERRORS = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError")


def _worker_count(ray, workers: Optional[int], num_cpus: float, num_gpus: float, n_blocks: int) -> int:
    """Actors to start: ``workers`` or as many as the cluster holds, never more than fit (an actor
    that cannot be placed would wait forever) nor more than there are blocks."""
    res = ray.cluster_resources()
    cap = int(res.get("CPU", 0) // num_cpus)
    if cap == 0:
        raise ValueError(f"num_cpus_per_worker: the Ray cluster has {res.get('CPU', 0):g} CPU(s), "
                         f"fewer than one worker needs ({num_cpus:g})")
    if num_gpus > 0:
        gpu_cap = int(res.get("GPU", 0) // num_gpus)
        if gpu_cap == 0:
            raise ValueError(f"num_gpus_per_worker: {num_gpus:g} GPU per worker, but the Ray cluster has "
                             f"{res.get('GPU', 0):g} GPU(s)")
        cap = min(cap, gpu_cap)
    if workers is not None and workers > cap:
        warnings.warn(f"workers: the Ray cluster holds {cap} worker(s) of {num_cpus:g} CPU / {num_gpus:g} GPU, "
                      f"not {workers}; using {cap}", stacklevel=3)
    n = cap if workers is None else min(workers, cap)
    return max(1, min(n, n_blocks))


def _check_reachable(address: Optional[str], timeout: float = 10.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (Ray itself keeps retrying for minutes)."""
    if address is None or address == "auto":
        return
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address: expected 'auto' or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"address: nothing answers at {address} ({e}); start the cluster with "
                              f"`ray start --head --port={port}` there, or leave --address out for a local "
                              f"Ray instance") from None


def _check_number(name: str, v, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    if not (v > 0 if positive else v >= 0) or v != v or v == float("inf"):
        raise ValueError(f"{name}: expected a finite {'positive' if positive else 'non-negative'} number, got {v}")
    return float(v)


def run_blocks(blocks: Dict[int, List[Tuple[str, Any]]], on_block: Callable[[int, Any], None], *,
               model: Any, config: Dict[str, Any], per_block: Optional[Dict[int, Dict[str, Any]]] = None,
               block_fn: str = "saliencekit.distributed:evaluate_block",
               device: str = "cpu", workers: Optional[int] = None, address: Optional[str] = None,
               num_gpus_per_worker: float = 0.0, num_cpus_per_worker: float = 1, threads: Optional[int] = None,
               max_restarts: int = 2, max_task_retries: int = 2, max_attempts: int = 3, keep_workers: bool = False,
               _crash_once: Optional[Tuple[int, str]] = None) -> Dict[str, Any]:
    """Evaluate ``blocks`` (``{index: [(name, tensor | path | array), ...]}``) on Ray actors.

    Each actor loads ``model`` (a name for ``load_model``, or a picklable zero-argument factory)
    once and calls ``block_fn`` (``"module:function"``, called as ``fn(model, items, **config)``)
    per block (``per_block[index]``, if given, adds to ``config``). ``on_block(index, result)`` runs
    on the driver as each block finishes, exactly once per block. A worker that dies is restarted
    by Ray and its block retried (``max_restarts``, ``max_task_retries``); when Ray gives up, the
    block goes to a fresh actor, at most ``max_attempts`` times in all. Uses the running Ray
    instance if there is one, else connects to ``address`` (``"auto"``, ``"HOST:PORT"``, or
    ``None`` for a new local instance) and shuts down what it started. ``keep_workers``: in a Ray
    session the caller started, keep the actors (and their loaded model) for the next call with the
    same settings, until :func:`shutdown_workers`. Returns statistics: workers, attempts per block,
    seconds.
    """
    ray = require_ray()
    import ray.exceptions as rex

    num_gpus_per_worker = _check_number("num_gpus_per_worker", num_gpus_per_worker, positive=False)
    num_cpus_per_worker = _check_number("num_cpus_per_worker", num_cpus_per_worker, positive=True)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected a positive int or None, got {workers!r}")
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address: expected 'auto', 'HOST:PORT' or None, got {type(address).__name__}")
    if not blocks:
        return {"workers": 0, "attempts": {}, "seconds": 0.0}
    dead_errors = tuple(getattr(rex, n) for n in _DEAD_WORKER_ERRORS if hasattr(rex, n))
    if num_gpus_per_worker > 0:
        device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the worker's share is cuda:0
    if threads is None:
        threads = max(1, int(num_cpus_per_worker))

    started = False
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        except ConnectionError as e:
            raise ConnectionError(f"address: cannot connect to a Ray cluster at {address!r} ({e}); start one with "
                                  f"`ray start --head`, or leave --address out for a local instance") from None
        started = True
    t0 = time.perf_counter()
    actor_cls = ray.remote(BlockWorker).options(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                                                max_restarts=max_restarts, max_task_retries=max_task_retries)
    model_key = model if isinstance(model, str) else \
        f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}"
    pool_key = (ray.get_runtime_context().get_job_id(), model_key, device, threads, num_cpus_per_worker,
                num_gpus_per_worker, max_restarts, max_task_retries, block_fn)
    keep = keep_workers and not started
    actors: List[Any] = _take_pool(ray, pool_key if keep else None)  # kept actors of other settings: killed
    dead: set = set()

    def new_actor():
        a = actor_cls.remote(model, device, threads, block_fn)
        actors.append(a)
        return a

    try:
        n = _worker_count(ray, workers, num_cpus_per_worker, num_gpus_per_worker, len(blocks))
        idle = deque(actors[:n])
        idle.extend(new_actor() for _ in range(n - len(idle)))
        try:  # surface model-loading errors once, clearly, rather than as dying workers
            ray.get([a.pid.remote() for a in idle])
        except dead_errors as e:
            raise RuntimeError(f"the Ray workers could not start (loading model {model!r} on {device}): {e}") from None
        queue = deque(sorted(blocks))
        attempts = {k: 0 for k in blocks}
        inflight: Dict[Any, Tuple[int, Any]] = {}
        failure: Optional[BaseException] = None  # first fatal error; the blocks in flight still finish
        while inflight or (queue and failure is None):
            while idle and queue and failure is None:  # one block per actor at a time: blocks balance themselves
                k = queue.popleft()
                a = idle.popleft()
                attempts[k] += 1
                items = [(name, _pack(name, src)) for name, src in blocks[k]]
                cfg = dict(config, **(per_block or {}).get(k, {}))
                inflight[a.run.remote(k, items, cfg, _crash_once)] = (k, a)
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            k, a = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except rex.RayTaskError as e:  # the block function raised: a real error, not a lost worker
                cause = getattr(e, "cause", None)
                if failure is None:
                    failure = cause if isinstance(cause, (ValueError, TypeError)) else \
                        RuntimeError(f"block {k} failed on a Ray worker: {e}")
                continue
            except dead_errors as e:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
                dead.add(id(a))
                if attempts[k] >= max_attempts:
                    if failure is None:
                        failure = RuntimeError(f"block {k}: its worker died {attempts[k]} time(s) "
                                               f"({type(e).__name__}); finished blocks are kept, re-run with the "
                                               f"same output folder to resume")
                    continue
                idle.append(new_actor())
                queue.appendleft(k)
                continue
            on_block(k, result)
            idle.append(a)
        if failure is not None:
            raise failure
        return {"workers": n, "attempts": dict(attempts), "seconds": time.perf_counter() - t0}
    finally:
        live = [a for a in actors if id(a) not in dead]
        if keep:
            _POOL.update(key=pool_key, actors=live)
        else:
            _kill(ray, live)
        if started:
            ray.shutdown()


# Actors kept between calls (``keep_workers=True``) in a Ray session the caller started: one pool.
_POOL: Dict[str, Any] = {"key": None, "actors": []}


def _kill(ray, actors) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001, S110 - already gone
            pass


def _take_pool(ray, key) -> List[Any]:
    """The kept actors if they match ``key``; otherwise they are killed (they hold cluster resources)."""
    actors, _POOL["actors"] = _POOL["actors"], []
    if _POOL["key"] == key:
        return actors
    _kill(ray, actors)
    return []


def shutdown_workers() -> None:
    """Kill the actors kept by ``keep_workers=True`` (they hold their CPUs / GPUs until then)."""
    if _POOL["actors"]:
        _kill(require_ray(), _POOL["actors"])
    _POOL.update(key=None, actors=[])


# ---- the backend ---------------------------------------------------------------------------------

def evaluate_images_ray(model: Any, images: Sequence[Tuple[str, Any]], methods: Sequence[str],
                        metrics: Sequence[str], seed: int = 0, labels: Optional[Dict[str, int]] = None,
                        target: str = "predicted", method_options: Optional[Dict[str, Dict[str, Any]]] = None,
                        metric_options: Optional[Dict[str, Dict[str, Any]]] = None, block_size: int = 8,
                        done: Optional[set] = None, batch_size: Optional[int] = None,
                        progress: Optional[Callable[[int], None]] = None,
                        on_block: Optional[Callable[[Any], None]] = None, channels_last: bool = False, *,
                        out_dir: Any,
                        device: str = "cpu", workers: Optional[int] = None, address: Optional[str] = None,
                        num_gpus_per_worker: float = 0.0, num_cpus_per_worker: float = 1,
                        overwrite: bool = False, max_restarts: int = 2, max_task_retries: int = 2,
                        max_attempts: int = 3, keep_workers: bool = False,
                        _crash_once: Optional[Tuple[int, str]] = None):
    """:func:`saliencekit.evaluation.evaluate_images` on a Ray cluster, block by block.

    Same arguments and result as the local core (``EvalResult``; ``on_block`` is called once per
    block, in completion order), except that ``model`` is a model name (each worker loads it with
    ``load_model(model, device)``) or a picklable zero-argument factory, and ``images`` may also be
    ``(name, path)``. Finished blocks go to ``out_dir/blocks/``; a re-run with the same ``out_dir``
    and configuration takes them from there. ``(image, method)`` pairs in ``done`` are skipped as
    in the local core. The returned rows are in the local backend's block order.
    """
    from . import run as ev
    from . import variants

    ev.check_names(methods, metrics)
    for name in methods:
        variants.resolve(name, method_options)
    if target not in ("predicted", "label"):
        raise ValueError(f"target: expected 'predicted' or 'label', got {target!r}")
    if not isinstance(model, str) and not callable(model):
        raise TypeError(f"model: expected a model name or a picklable zero-argument factory, got "
                        f"{type(model).__name__} (Ray workers load the model themselves)")
    names = [n for n, _ in images]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"images: names must be unique (they key the noise and the rows); {dup!r} repeats")
    plan = plan_blocks(names, block_size)
    done = set(done or ())
    threads = max(1, int(_check_number("num_cpus_per_worker", num_cpus_per_worker, positive=True)))
    model_key = model if isinstance(model, str) else \
        f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}"
    config = {"model": model_key, "device": "cuda" if num_gpus_per_worker else device, "threads": threads,
              "methods": list(methods), "metrics": list(metrics), "seed": seed, "target": target,
              "labels": {n: labels[n] for n in names if labels and n in labels}, "method_options": method_options,
              "metric_options": metric_options, "block_size": block_size, "batch_size": batch_size}
    if channels_last:  # only when set, so manifests of earlier runs still match
        config["channels_last"] = True
    out_dir = Path(out_dir)
    sync_manifest(out_dir, config, plan, overwrite=overwrite)

    source = dict(images)
    results: Dict[int, Any] = {}
    delivered: set = set()

    def deliver(k: int, res) -> None:
        keys = {(r["image"], r["method"], r["metric"]) for r in res.rows}
        clash = keys & delivered
        if clash or len(keys) != len(res.rows):
            raise RuntimeError(f"block {k}: duplicate results for {sorted(clash)[:3] or 'rows within the block'}")
        delivered.update(keys)
        results[k] = res
        if on_block is not None:
            on_block(res)
        if progress is not None:
            progress(len(plan[k]) * len(methods))

    todo: Dict[int, List[Tuple[str, Any]]] = {}
    block_done: Dict[int, set] = {}
    for k, block in enumerate(plan):
        need = {(n, m) for n in block for m in methods if (n, m) not in done}
        if not need:
            if progress is not None:
                progress(len(block) * len(methods))
            continue
        stored = read_block(out_dir, k)
        if stored is not None:
            have: Dict[Tuple[str, str], set] = {}
            for r in stored.rows:
                have.setdefault((r["image"], r["method"]), set()).add(r["metric"])
            if all(set(metrics) <= have.get(p, set()) for p in need):
                res = ev.EvalResult()
                for table in TABLES:
                    getattr(res, table).extend(r for r in getattr(stored, table)
                                               if (r["image"], r["method"]) in need
                                               and (table != "rows" or r["metric"] in metrics))
                deliver(k, res)
                continue
        todo[k] = [(n, source[n]) for n in block]
        block_done[k] = {(n, m) for n in block for m in methods if (n, m) in done}

    def finished(k: int, res) -> None:
        write_block(out_dir, k, res)
        deliver(k, res)

    block_config = {"methods": list(methods), "metrics": list(metrics), "seed": seed, "target": target,
                    "method_options": method_options, "metric_options": metric_options, "batch_size": batch_size,
                    "channels_last": bool(channels_last)}
    per_block = {k: {"labels": {n: labels[n] for n, _ in items if labels and n in labels} if labels is not None
                     else None, "done": block_done[k]} for k, items in todo.items()}
    run_blocks(todo, finished, model=model, config=block_config, per_block=per_block, device=device,
               workers=workers, address=address, num_gpus_per_worker=num_gpus_per_worker,
               num_cpus_per_worker=num_cpus_per_worker, threads=threads, max_restarts=max_restarts,
               max_task_retries=max_task_retries, max_attempts=max_attempts, keep_workers=keep_workers,
               _crash_once=_crash_once)
    out = ev.EvalResult()
    for k in sorted(results):
        for table in TABLES:
            getattr(out, table).extend(getattr(results[k], table))
    return out
