"""Dataset-scale evaluation on a Ray cluster (``saliencekit evaluate --backend ray``).

The work is the local backend's: the same block store (``evaluation.store``: contiguous blocks of
``block_size`` images, one entry per finished (block, method)), the same evaluation core. Each
block with methods left to compute goes to a Ray actor that loaded the model once; the actor runs
:func:`saliencekit.evaluation.evaluate_images` on exactly that block (same engine, same seeds,
noise keyed by the image's name) and returns its rows. The driver writes them to the store, so a
block's methods are either complete on disk or absent, and a re-run with the same ``OUT`` (Ray or
local, with the same settings) computes only what is missing.

Fault tolerance: a worker process that dies (crash, OOM kill, lost node) takes only its block with
it. Ray restarts the actor (``max_restarts``) and retries the block (``max_task_retries``); if Ray
gives up, the driver starts a fresh actor and resubmits the block, at most ``max_attempts`` times.

Results equal the local backend's bit for bit because the blocks are the same: on CPU, float sums
depend on the number of torch threads (at the 1e-7 level), so compare with a local run that uses as
many threads as a worker (``num_cpus_per_worker``, default 1). Ray is imported lazily: the local
backend never needs it. See docs/distributed.md.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..core import checks
from .store import BlockStore

RAY_MISSING = ("--backend ray needs Ray, which is not installed; install it with "
               "`pip install 'saliencekit[ray]'` (or `pip install 'ray>=2.9'`)")
# Fault injection for the tests: (block index, marker file). The first worker to start that block
# creates the marker and dies abruptly (os._exit); the marker makes it happen once per run.
_CRASH_ONCE: Optional[Tuple[int, str]] = None


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
    """Inverse of ``_pack`` on the worker; file bytes are decoded by ``data.read_image``, the reader
    behind ``load_images``, so a worker sees the pixels the local backend sees."""
    kind, value = packed
    if kind != "bytes":
        return value
    import numpy as np

    from .. import data

    return np.asarray(data.read_image(value, name=repr(name), argname="images")[0])


def evaluate_block(model, images: Sequence[Tuple[str, Any]], **config):
    """One block on a worker: the core's ``evaluate_images`` with the block as its single block.

    ``images`` are ``(name, pixels C x H x W in [0, 1])`` as the core takes them, or
    ``(name, H x W x 3 array)`` (decoded file), preprocessed here with the model's preprocessing
    exactly as ``saliencekit evaluate`` loads files.
    """
    import torch

    from .. import data
    from ..models import get_preprocessing
    from .run import evaluate_images

    spec = get_preprocessing(model)
    imgs = [(n, s if isinstance(s, torch.Tensor) else data.load_images(s, preprocessing=spec, normalize=False)[0])
            for n, s in images]
    return evaluate_images(model, imgs, block_size=max(1, len(imgs)), **config)


# ---- the worker ----------------------------------------------------------------------------------

class BlockWorker:
    """Loads the model once, then evaluates blocks with :func:`evaluate_block` (wrapped by ``ray.remote``)."""

    def __init__(self, model: Any, device: str, threads: Optional[int]):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(model, str):
            from ..models import load_model

            self.model = load_model(model, device=device)
        else:  # a picklable zero-argument factory
            self.model = model().to(device).eval()

    def pid(self) -> int:
        return os.getpid()

    def run(self, index: int, items: List[Tuple[str, Tuple[str, Any]]], config: Dict[str, Any],
            crash_once: Optional[Tuple[int, str]] = None):
        if crash_once is not None and crash_once[0] == index:
            try:
                fd = os.open(crash_once[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        return evaluate_block(self.model, [(n, _unpack(n, p)) for n, p in items], **config)


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


def _check_model(model: Any) -> None:
    if not isinstance(model, str) and not callable(model):
        raise TypeError(f"model: expected a model name or a picklable zero-argument factory, got "
                        f"{type(model).__name__} (Ray workers load the model themselves)")


def _model_key(model: Any) -> str:
    """What names ``model`` (a model name, or a zero-argument factory) in the store and the actor pool."""
    if isinstance(model, str):
        return model
    return f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}"


def run_blocks(blocks: Dict[int, List[Tuple[str, Any]]], on_block: Callable[[int, Any], None], *,
               model: Any, config: Dict[str, Any], per_block: Optional[Dict[int, Dict[str, Any]]] = None,
               device: str = "cpu", workers: Optional[int] = None, address: Optional[str] = None,
               num_gpus_per_worker: float = 0.0, num_cpus_per_worker: float = 1, threads: Optional[int] = None,
               max_restarts: int = 2, max_task_retries: int = 2, max_attempts: int = 3,
               keep_workers: bool = False) -> Dict[str, Any]:
    """Evaluate ``blocks`` (``{index: [(name, tensor | path | array), ...]}``) on Ray actors.

    Each actor loads ``model`` (a name for ``load_model``, or a picklable zero-argument factory)
    once and calls :func:`evaluate_block` per block with ``config`` (``per_block[index]``, if
    given, adds to it). ``on_block(index, result)`` runs on the driver as each block finishes,
    exactly once per block. A worker that dies is restarted by Ray and its block retried
    (``max_restarts``, ``max_task_retries``); when Ray gives up, the block goes to a fresh actor, at
    most ``max_attempts`` times in all. Uses the running Ray instance if there is one, else connects
    to ``address`` (``"auto"``, ``"HOST:PORT"``, or ``None`` for a new local instance) and shuts
    down what it started. ``keep_workers``: in a Ray session the caller started, keep the actors
    (and their loaded model) for the next call with the same settings, until
    :func:`shutdown_workers`. Returns statistics: workers, attempts per block, seconds.
    """
    ray = require_ray()
    import ray.exceptions as rex

    num_gpus_per_worker = checks.nonneg_float("num_gpus_per_worker", num_gpus_per_worker)
    num_cpus_per_worker = checks.positive_float("num_cpus_per_worker", num_cpus_per_worker)
    checks.optional_positive_int("workers", workers)
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address: expected 'auto', 'HOST:PORT' or None, got {type(address).__name__}")
    if not blocks:
        return {"workers": 0, "attempts": {}, "seconds": 0.0}
    dead_errors = tuple(getattr(rex, n) for n in _DEAD_WORKER_ERRORS if hasattr(rex, n))
    if num_gpus_per_worker > 0:
        device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the worker's share is cuda:0
    if threads is None:
        threads = max(1, int(num_cpus_per_worker))
    crash_once = _CRASH_ONCE

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
    pool_key = (ray.get_runtime_context().get_job_id(), _model_key(model), device, threads, num_cpus_per_worker,
                num_gpus_per_worker, max_restarts, max_task_retries)
    keep = keep_workers and not started
    actors: List[Any] = _take_pool(ray, pool_key if keep else None)  # kept actors of other settings: killed
    dead: set = set()

    def new_actor():
        a = actor_cls.remote(model, device, threads)
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
                inflight[a.run.remote(k, items, cfg, crash_once)] = (k, a)
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

def evaluate_on_ray(store: BlockStore, model: Any, images: Sequence[Tuple[str, Any]], *,
                    progress: Optional[Callable[[int], None]] = None,
                    on_block: Optional[Callable[[Any], None]] = None, workers: Optional[int] = None,
                    address: Optional[str] = None, num_gpus_per_worker: float = 0.0,
                    num_cpus_per_worker: Optional[float] = None, max_restarts: int = 2, max_task_retries: int = 2,
                    max_attempts: int = 3, keep_workers: bool = False):
    """The Ray backend: compute on Ray actors what ``store`` lacks, block by block.

    ``model``: a model name (each worker loads it with ``load_model(model, store.device)``) or a
    picklable zero-argument factory. ``images``: ``(name, pixels)`` or ``(name, path)`` with the
    store's names; paths are read by the driver and decoded on the worker. Workers run on
    ``store.device`` with ``store.threads`` torch threads; ``num_cpus_per_worker`` (default
    ``store.threads``) is what each reserves. ``on_block(result)`` receives each block's results
    once (its stored methods included), in completion order; ``progress(k)`` counts images x
    methods. Returns the run's results (``store.assemble()``).
    """
    _check_model(model)
    num_gpus_per_worker = checks.nonneg_float("num_gpus_per_worker", num_gpus_per_worker)
    if num_cpus_per_worker is None:
        num_cpus_per_worker = store.threads
    num_cpus_per_worker = checks.positive_float("num_cpus_per_worker", num_cpus_per_worker)
    if max(1, int(num_cpus_per_worker)) != store.threads:
        raise ValueError(f"num_cpus_per_worker: {num_cpus_per_worker:g} CPUs give workers "
                         f"{max(1, int(num_cpus_per_worker))} torch thread(s), but the store is for {store.threads}")
    if num_gpus_per_worker > 0 and store.device != "cuda":
        raise ValueError(f"num_gpus_per_worker: GPU workers compute on 'cuda', but the store is for {store.device!r}")
    source = dict(images)
    if list(source) != store.names:
        raise ValueError("images: expected the store's images, in the store's order")

    delivered: set = set()

    def deliver(k: int) -> None:
        if k in delivered:
            raise RuntimeError(f"block {k}: delivered twice")
        delivered.add(k)
        if on_block is not None:
            on_block(store.block(k))
        if progress is not None:
            progress(len(store.blocks[k]) * len(store.methods))

    todo: Dict[int, List[Tuple[str, Any]]] = {}
    per_block: Dict[int, Dict[str, Any]] = {}
    for k, block in enumerate(store.blocks):
        methods = store.todo(k)
        if not methods:
            deliver(k)
            continue
        todo[k] = [(n, source[n]) for n in block]
        per_block[k] = {"methods": methods, "labels": {n: store.labels[n] for n in block if n in store.labels}}

    def finished(k: int, res) -> None:
        store.put(res)
        deliver(k)

    run_blocks(todo, finished, model=model, config={"metrics": store.metrics, **store.arguments},
               per_block=per_block, device=store.device, workers=workers, address=address,
               num_gpus_per_worker=num_gpus_per_worker, num_cpus_per_worker=num_cpus_per_worker,
               threads=store.threads, max_restarts=max_restarts, max_task_retries=max_task_retries,
               max_attempts=max_attempts, keep_workers=keep_workers)
    return store.assemble()


def evaluate_images_ray(model: Any, images: Sequence[Tuple[str, Any]], methods: Sequence[str],
                        metrics: Sequence[str], seed: int = 0, labels: Optional[Dict[str, int]] = None,
                        target: str = "predicted", method_options: Optional[Dict[str, Dict[str, Any]]] = None,
                        metric_options: Optional[Dict[str, Dict[str, Any]]] = None, block_size: int = 8,
                        batch_size: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                        on_block: Optional[Callable[[Any], None]] = None, channels_last: bool = False, *,
                        out_dir: Any, device: str = "cpu", workers: Optional[int] = None,
                        address: Optional[str] = None, num_gpus_per_worker: float = 0.0,
                        num_cpus_per_worker: float = 1, overwrite: bool = False, max_restarts: int = 2,
                        max_task_retries: int = 2, max_attempts: int = 3, keep_workers: bool = False):
    """:func:`saliencekit.evaluation.evaluate_images` on a Ray cluster, resumable through ``out_dir``.

    The local core's arguments and result (``EvalResult``, rows in the local core's order), except
    that ``model`` is a model name or a picklable zero-argument factory (see
    :func:`evaluate_on_ray`), ``images`` may also be ``(name, path)``, and ``on_block`` is called
    once per block. Finished (block, method) results go to the block store in
    ``out_dir/blocks/``; a re-run with the same ``out_dir`` and configuration takes them from
    there (``overwrite=True``: recompute everything).
    """
    _check_model(model)
    num_cpus_per_worker = checks.positive_float("num_cpus_per_worker", num_cpus_per_worker)
    num_gpus_per_worker = checks.nonneg_float("num_gpus_per_worker", num_gpus_per_worker)
    store = BlockStore(out_dir, [n for n, _ in images], methods, metrics, model=_model_key(model), seed=seed,
                       target=target, labels=labels, method_options=method_options, metric_options=metric_options,
                       block_size=block_size, batch_size=batch_size, channels_last=channels_last,
                       device="cuda" if num_gpus_per_worker else device, threads=max(1, int(num_cpus_per_worker)),
                       overwrite=overwrite)
    return evaluate_on_ray(store, model, images, progress=progress, on_block=on_block, workers=workers,
                           address=address, num_gpus_per_worker=num_gpus_per_worker,
                           num_cpus_per_worker=num_cpus_per_worker, max_restarts=max_restarts,
                           max_task_retries=max_task_retries, max_attempts=max_attempts, keep_workers=keep_workers)


__all__ = ["RAY_MISSING", "BlockWorker", "evaluate_block", "evaluate_images_ray", "evaluate_on_ray", "ray_available",
           "require_ray", "run_blocks", "shutdown_workers"]
