"""Parts of the Ray backend that need no Ray: block files, the resume manifest, Ray being optional."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from saliencekit.evaluation import ray as dist
from saliencekit.evaluation import EvalResult


def block_result(names, value=0.1):
    res = EvalResult()
    for n in names:
        res.rows.append({"image": n, "class_index": 3, "method": "gradient", "metric": "deletion", "value": value / 3})
        res.curves += [{"image": n, "method": "gradient", "metric": "deletion", "step": s, "value": 1 / (s + 7)}
                       for s in range(3)]
        res.timings.append({"image": n, "method": "gradient", "stage": "explain", "seconds": 0.25})
        res.extras.append({"image": n, "method": "gradient", "key": "sigma", "value": 2 / 3})
    return res


def test_block_files_round_trip_exactly(tmp_path):
    res = block_result(["a.jpg", "b, c.jpg"])
    dist.write_block(tmp_path, 3, res)
    back = dist.read_block(tmp_path, 3)
    assert back.rows == res.rows and back.curves == res.curves  # floats bit for bit, types restored
    assert back.timings == res.timings and back.extras == res.extras
    assert not list((tmp_path / "blocks").glob("*.tmp"))
    # the rows file is the commit marker: without it the block does not exist
    (tmp_path / "blocks" / "block_0003.csv").unlink()
    assert dist.read_block(tmp_path, 3) is None
    dist.write_block(tmp_path, 3, res)
    (tmp_path / "blocks" / "block_0003.curves.csv").unlink()
    assert dist.read_block(tmp_path, 3) is None


def test_manifest_keeps_only_blocks_that_still_match(tmp_path):
    cfg = {"model": "m", "methods": ["gradient"], "seed": 0, "block_size": 2}
    plan = dist.plan_blocks(["a", "b", "c", "d", "e"], 2)
    assert plan == [["a", "b"], ["c", "d"], ["e"]]
    assert dist.sync_manifest(tmp_path, cfg, plan) == 0
    for k, names in enumerate(plan):
        dist.write_block(tmp_path, k, block_result(names))
    assert dist.sync_manifest(tmp_path, cfg, plan) == 0  # same plan: everything kept
    assert all(dist.read_block(tmp_path, k) is not None for k in range(3))
    # one more image: block 2 changes (["e", "f"]), blocks 0 and 1 stay
    plan2 = dist.plan_blocks(["a", "b", "c", "d", "e", "f"], 2)
    assert dist.sync_manifest(tmp_path, cfg, plan2) == 1
    assert [dist.read_block(tmp_path, k) is not None for k in range(3)] == [True, True, False]
    # another seed: every block is stale
    assert dist.sync_manifest(tmp_path, dict(cfg, seed=1), plan2) == 2
    assert not list((tmp_path / "blocks").glob("block_*"))
    # overwrite: nothing kept even with the same configuration
    dist.write_block(tmp_path, 0, block_result(["a", "b"]))
    assert dist.sync_manifest(tmp_path, dict(cfg, seed=1), plan2, overwrite=True) == 1


def test_plan_blocks_checks_block_size():
    with pytest.raises(ValueError, match="block_size"):
        dist.plan_blocks(["a"], 0)
    with pytest.raises(TypeError, match="block_size"):
        dist.plan_blocks(["a"], 2.0)


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError


def test_local_backend_needs_no_ray(no_ray, tmp_path):
    from saliencekit.cli import main

    assert not dist.ray_available()
    with pytest.raises(ImportError, match=r"saliencekit\[ray\]"):
        dist.require_ray()
    r = CliRunner().invoke(main, ["evaluate", "--limit", "1", "--methods", "random", "--metrics", "autvc",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "results.csv").read_text().startswith("image,class_index,method,metric,value\n")
    assert not (tmp_path / "o" / "blocks").exists()


def test_ray_backend_without_ray_is_a_clear_error(no_ray, tmp_path):
    from saliencekit.cli import main

    r = CliRunner().invoke(main, ["evaluate", "--backend", "ray", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0
    assert "pip install 'saliencekit[ray]'" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, hint", [
    (["--workers", "2"], "--workers"),
    (["--address", "auto"], "--address"),
    (["--num-gpus-per-worker", "1"], "--num-gpus-per-worker"),
])
def test_ray_options_need_the_ray_backend(tmp_path, args, hint):
    from saliencekit.cli import main

    r = CliRunner().invoke(main, ["evaluate", "--out", str(tmp_path / "o")] + args)
    assert r.exit_code == 2 and hint in r.output and "only with --backend ray" in r.output


def test_unreachable_address_fails_fast():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="nothing answers"):
        dist._check_reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ValueError, match="address"):
        dist._check_reachable("localhost")
    dist._check_reachable("auto")
    dist._check_reachable(None)
