"""Ray is optional: the local backend never imports it, and the Ray options fail clearly without it."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from saliencekit.evaluation import ray as dist


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
    assert [p.name for p in (tmp_path / "o" / "blocks").iterdir()] == ["block_0000.random.json"]  # the same store


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
