"""The Ray backend of ``saliencekit evaluate``: same rows as the local backend, dead workers, resume.

One local Ray cluster (``ray.init(num_cpus=2)``) is shared by the whole module. The images are the
bundled samples and their mirror images (4 images, 2 blocks of 2) at 64 px, with a cheap but
stochastic method set (SmoothGrad with 2 samples, a seeded random map), so the rows depend on the
noise keys. Local reference runs use one torch thread, like each 1-CPU Ray worker: CPU float sums
depend on the thread count, and the backends must agree bit for bit.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

ray = pytest.importorskip("ray")

from saliencekit import data, load_model  # noqa: E402
from saliencekit.evaluation import ray as dist  # noqa: E402
from saliencekit.evaluation import run as ev  # noqa: E402
from saliencekit.evaluation import store as st  # noqa: E402
from saliencekit.models import get_preprocessing  # noqa: E402

MODEL = "efficientnet-lite0"
KW = dict(methods=["gradient", "smoothgrad", "random"], metrics=["deletion", "autvc"], seed=5,
          method_options={"smoothgrad": {"n_samples": 2}}, metric_options={"deletion": {"step": 512}},
          block_size=2, batch_size=4)
RAY = dict(workers=2, keep_workers=True)  # the module's tests reuse the actors (and their loaded model)


def one_thread(fn, *args, **kw):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    dist.shutdown_workers()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def images(model):
    spec = get_preprocessing(model)
    out = []
    for name, arr in data.sample_images():
        x = F.interpolate(data.load_images(arr, preprocessing=spec, normalize=False), size=64, mode="bilinear",
                          align_corners=False)[0]
        out += [(name, x), (name + "_mirror", x.flip(-1))]
    return out


@pytest.fixture(scope="module")
def local(model, images):
    return one_thread(ev.evaluate_images, model, images, **KW)


def stored(out, images):
    """The block store as a run with KW on 1-CPU workers sees it."""
    kw = {k: v for k, v in KW.items() if k not in ("methods", "metrics")}
    return st.BlockStore(out, [n for n, _ in images], KW["methods"], KW["metrics"], model=MODEL, threads=1, **kw)


def entries(out, k):
    return sorted((out / "blocks").glob(f"block_{k:04d}.*.json"))


def keys(rows):
    return [(r["image"], r["method"], r["metric"]) for r in rows]


def assert_same(res, ref):
    assert len(set(keys(res.rows))) == len(res.rows)  # nothing duplicated
    assert res.rows == ref.rows  # same order, same values, bit for bit
    assert res.curves == ref.curves
    assert res.extras == ref.extras
    assert len(res.rows) == 4 * 3 * 2 and all(math.isfinite(r["value"]) for r in res.rows)


def test_rows_equal_local_backend(cluster, images, local, tmp_path):
    delivered = []
    res = dist.evaluate_images_ray(MODEL, images, out_dir=tmp_path, **RAY, on_block=delivered.append, **KW)
    assert_same(res, local)
    assert len(delivered) == 2  # once per block
    store = stored(tmp_path, images)
    assert store.finished == {(k, m) for k in range(2) for m in KW["methods"]}
    for k in range(2):  # each block on disk, complete, equal to what was delivered
        block = store.block(k)
        assert block.rows == next(b.rows for b in delivered if b.rows[0]["image"] == images[2 * k][0])
    assert not [p for p in (tmp_path / "blocks").iterdir() if p.name.endswith(".tmp")]


def test_rows_do_not_depend_on_blocks_or_positions(model, images, local, tmp_path):
    # Locally with one image per block every image sits at position 0 of its batch, while in the
    # 2-image blocks the Ray backend ran (equal to `local`) half of them are at position 1. Noise
    # keyed by batch position instead of by image would move the stochastic rows by far more than
    # the rounding of another batch composition; a run under other names shows how far.
    single = one_thread(ev.evaluate_images, model, images, **dict(KW, block_size=1))
    ref = {k: r["value"] for k, r in zip(keys(local.rows), local.rows)}
    got = {k: r["value"] for k, r in zip(keys(single.rows), single.rows)}
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    renamed = one_thread(ev.evaluate_images, model, [(n + "_renamed", x) for n, x in images],
                         **dict(KW, methods=["random"], metrics=["deletion"]))
    moved = [abs(a["value"] - ref[(a["image"][:-len("_renamed")], "random", "deletion")]) for a in renamed.rows]
    assert max(moved) > 1e-3  # the stochastic rows do depend on the noise key


@pytest.mark.parametrize("ray_retries", [2, 0], ids=["ray-restarts-actor", "driver-resubmits"])
def test_worker_killed_mid_run(cluster, images, local, tmp_path, ray_retries, monkeypatch):
    # The first worker to start block 1 dies abruptly (os._exit). Ray restarts the actor and retries
    # the block (ray_retries=2), or, with Ray's retries off, the driver resubmits it to a fresh actor.
    marker = tmp_path / "crashed"
    monkeypatch.setattr(dist, "_CRASH_ONCE", (1, str(marker)))
    delivered = []
    res = dist.evaluate_images_ray(MODEL, images, out_dir=tmp_path / "out", **RAY, on_block=delivered.append,
                                   max_restarts=ray_retries, max_task_retries=ray_retries, **KW)
    assert marker.is_file()  # a worker really died
    assert int(marker.read_text()) != os.getpid()
    assert_same(res, local)
    assert len(delivered) == 2
    assert stored(tmp_path / "out", images).assemble().rows == local.rows  # complete and not duplicated on disk


def test_resume_from_finished_blocks(cluster, images, local, tmp_path, monkeypatch):
    out = tmp_path / "out"
    no_retry = dict(max_restarts=0, max_task_retries=0, max_attempts=1)
    # Run 1: block 1's worker dies and may not be retried -> error, but block 0 is finished and kept.
    monkeypatch.setattr(dist, "_CRASH_ONCE", (1, str(tmp_path / "m1")))
    with pytest.raises(RuntimeError, match="block 1"):
        dist.evaluate_images_ray(MODEL, images, out_dir=out, **RAY, **no_retry, **KW)
    assert stored(out, images).finished == {(0, m) for m in KW["methods"]}
    assert entries(out, 1) == []
    before = [p.stat().st_mtime_ns for p in entries(out, 0)]
    # Run 2: block 0 must come from disk. Were it recomputed, its worker would die (no retries) and
    # the run would fail; block 1 is computed.
    monkeypatch.setattr(dist, "_CRASH_ONCE", (0, str(tmp_path / "m2")))
    delivered = []
    res = dist.evaluate_images_ray(MODEL, images, out_dir=out, **RAY, on_block=delivered.append, **no_retry, **KW)
    assert not (tmp_path / "m2").exists()
    assert [p.stat().st_mtime_ns for p in entries(out, 0)] == before
    assert_same(res, local)
    assert len(delivered) == 2


def test_cli_ray_backend_writes_the_same_files(cluster, tmp_path):
    from click.testing import CliRunner

    from saliencekit.cli import main

    args = ["evaluate", "--methods", "gradient,random", "--metrics", "deletion,autvc", "-M", "deletion.step=12544",
            "--seed", "3", "--batch-size", "4", "--block-size", "1"]
    runner = CliRunner()
    loc = one_thread(runner.invoke, main, args + ["--out", str(tmp_path / "local"), "--threads", "1"])
    assert loc.exit_code == 0, loc.output
    rr = runner.invoke(main, args + ["--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2"])
    assert rr.exit_code == 0, rr.output
    for f in ("results.csv", "curves.csv", "extras.csv", "summary.md"):
        assert (tmp_path / "ray" / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f
    assert (tmp_path / "ray" / "bars.png").is_file() and (tmp_path / "ray" / "curves.png").is_file()
    assert sorted(p.name for p in (tmp_path / "ray" / "blocks").iterdir()) == \
        [f"block_000{k}.{m}.json" for k in range(2) for m in ("gradient", "random")]
    # A re-run resumes: nothing left to compute, same results.
    again = runner.invoke(main, args + ["--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2"])
    assert again.exit_code == 0, again.output
    assert "resuming: 4 finished" in again.output
    assert (tmp_path / "ray" / "results.csv").read_bytes() == (tmp_path / "local" / "results.csv").read_bytes()
    # One store for both backends: the one-thread local run resumes from the Ray run's store.
    loc = one_thread(runner.invoke, main, args + ["--out", str(tmp_path / "ray")])
    assert loc.exit_code == 0 and "resuming: 4 finished" in loc.output, loc.output
