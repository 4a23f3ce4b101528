"""``--threads`` and its default: the CPUs this process may use (affinity, cgroup v2 / v1 quota) less
those other processes keep busy; OMP_NUM_THREADS / MKL_NUM_THREADS respected; a resumed evaluation
keeps the thread count its stored results were computed with."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TinyCNN, _init

from saliencekit.cli import main, options
from saliencekit.models import Preprocessing


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    n = torch.get_num_threads()
    for k in options.THREAD_ENV:
        monkeypatch.delenv(k, raising=False)
    yield
    torch.set_num_threads(n)


def _cgroup(tmp_path, membership: str, files: dict):
    (tmp_path / "proc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc" / "cgroup").write_text(membership)
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return options.cgroup_cpu_limit(str(root), str(tmp_path / "proc" / "cgroup"))


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    assert _cgroup(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"}) == 1.5
    assert _cgroup(tmp_path, "0::/a/b\n", {"a/b/cpu.max": "max 100000", "a/cpu.max": "200000 100000",
                                           "cpu.max": "max 100000"}) == 2.0


def test_cgroup_v2_without_a_quota(tmp_path):
    assert _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"}) is None
    assert _cgroup(tmp_path, "0::/\n", {}) is None


def test_cgroup_v1_quota(tmp_path):
    member = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    assert _cgroup(tmp_path, member, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
                                      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}) == 0.5
    # inside a container the cgroup's own path is not mounted: the mount's root files apply
    assert _cgroup(tmp_path / "c", "3:cpu:/docker/abc\n", {"cpu/cpu.cfs_quota_us": "300000",
                                                           "cpu/cpu.cfs_period_us": "100000"}) == 3.0
    assert _cgroup(tmp_path / "d", "3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1",
                                                 "cpu/cpu.cfs_period_us": "100000"}) is None


def _snap(t, own, cpus):
    return {"time": t, "own": own, "cpus": cpus}


def test_busy_cpus_counts_other_processes_only():
    before = _snap(0.0, 0.0, {0: (0, 0), 1: (0, 0), 2: (0, 0)})
    after = _snap(1.0, 0.0, {0: (100, 100), 1: (5, 100), 2: (100, 100)})
    assert options.busy_cpus(before, [0, 1], after) == pytest.approx(1.05)
    assert options.busy_cpus(before, [0, 1, 2], after) == pytest.approx(2.05)
    mine = _snap(1.0, 0.5, after["cpus"])                # half a CPU-second was this process's own
    assert options.busy_cpus(before, [0, 1], mine) == pytest.approx(0.55)
    assert options.busy_cpus(None, [0, 1]) == 0.0


def test_cpu_snapshot_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 0 0\ncpu1 0 0 0 10\nintr 5\n")
    snap = options.cpu_snapshot(str(stat))
    assert snap["cpus"] == {0: (1 + 2 + 3 + 6 + 7 + 8, 72), 1: (0, 10)}
    assert options.cpu_snapshot(str(tmp_path / "missing")) is None
    real = options.cpu_snapshot()
    if real is not None:
        assert set(options.allowed_cpus()[0]) <= set(real["cpus"])


@pytest.mark.parametrize("cpus,quota,busy,expected", [
    (2, None, 0.0, 2), (2, None, 1.0, 1), (2, None, 0.4, 2), (2, None, 0.6, 1), (2, None, 2.0, 1),
    (2, 1.5, 0.0, 1), (8, 4.0, 2.0, 4), (8, None, 7.6, 1), (16, 0.5, 0.0, 1),
])
def test_default_threads(monkeypatch, cpus, quota, busy, expected):
    monkeypatch.setattr(options, "allowed_cpus", lambda: (list(range(cpus)), quota))
    monkeypatch.setattr(options, "busy_cpus", lambda snap, c: busy)
    n, why = options.default_threads()
    assert n == expected and f"{cpus} CPU(s)" in why
    assert ("quota" in why) == (quota is not None) and ("busy" in why) == (busy > 0)


def test_apply_threads_respects_the_environment(monkeypatch):
    monkeypatch.setattr(options, "default_threads", lambda snap=None: (1, "test"))
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert options.apply_threads(None) == (2, "OMP_NUM_THREADS=2") and torch.get_num_threads() == 2
    assert options.apply_threads(1) == (1, "--threads") and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(2)
    assert options.apply_threads(None) == (1, "test") and torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["explain", "evaluate", "bench", "serve"])
def test_threads_option_is_checked(command):
    res = CliRunner().invoke(main, [command, "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output and "x>=1" in res.output


def _tiny():
    m = _init(TinyCNN(), 0)
    m.saliencekit_preprocessing = Preprocessing(size=32, resize=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    return m


def test_explain_runs_and_records_the_thread_count(monkeypatch, tmp_path):
    monkeypatch.setattr("saliencekit.models.load_model", lambda name, device="cpu": _tiny())
    torch.set_num_threads(2)
    res = CliRunner().invoke(main, ["explain", "-m", "gradient", "--threads", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1 and "torch threads: 1 (--threads)" in res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["threads"] == 1
    monkeypatch.setattr(options, "default_threads", lambda snap=None: (2, "2 CPU(s) in this process's affinity"))
    res = CliRunner().invoke(main, ["explain", "-m", "gradient", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and torch.get_num_threads() == 2 and "torch threads: 2 (2 CPU(s)" in res.output


def test_a_resumed_evaluation_keeps_its_recorded_threads(monkeypatch, tmp_path):
    import saliencekit.cli.evaluate as ce

    monkeypatch.setattr(ce, "_load_model", lambda spec, device: _tiny())
    out = tmp_path / "eval"
    args = ["evaluate", "--methods", "gradient", "--metrics", "average_drop", "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(next((out / "blocks").glob("*.json")).read_text())["config"]["threads"] == 1
    monkeypatch.setattr(options, "default_threads", lambda snap=None: (2, "test"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "resuming with 1 torch thread(s)" in res.output and "resuming: 1 finished" in res.output
    res = CliRunner().invoke(main, [*args, "--threads", "2"])      # an explicit count recomputes
    assert res.exit_code == 0 and "resuming: " not in res.output and torch.get_num_threads() == 2
