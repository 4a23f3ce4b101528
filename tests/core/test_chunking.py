"""Chunk policies (core.chunking): the online layout probe on a scripted clock, the cache, out-of-memory back-off,
the CUDA size from free memory, and the metrics' layout probe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.core import chunking, speed

from conftest import BatchRecorder, assert_same_state, model_state


pytestmark = pytest.mark.usefixtures("fresh_speed_state")


class Clocked(nn.Module):
    """A conv net on a virtual clock: each forward that builds a graph advances the clock by a
    scripted cost per row for its (layout, rows), and records (rows, channels_last)."""

    def __init__(self, contiguous_cost, cl_cost, clock, count_inference: bool = False):
        super().__init__()
        self.count_inference = count_inference
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.costs = {False: contiguous_cost, True: cl_cost}
        self.clock = clock
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x):
        if torch.is_grad_enabled() or self.count_inference:
            cl = x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            cost = self.costs[cl]
            self.clock[0] += (cost(x.shape[0]) if callable(cost) else cost) * x.shape[0]
            self.seen.append((x.shape[0], cl))
        return self.head(self.conv(x).mean((2, 3)))


@pytest.fixture
def scripted(monkeypatch):
    """Start size 4 for 3x16x16 images; the calibrator reads the virtual clock."""
    clock = [0.0]
    monkeypatch.setattr(chunking, "_CPU_ELEMENTS_PER_CHUNK", 4 * 3 * 16 * 16)
    monkeypatch.setattr(chunking.Calibrator, "timer", staticmethod(lambda: clock[0]))
    return clock

def test_layout_probe_with_scripted_costs(scripted):
    """The first four chunks time both layouts (warm-up + timed each, real work of the call: the
    rows sum to exactly the call's rows); channels_last, faster, is kept and cached."""
    m = Clocked(1.0, 0.5, scripted)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = model_state(m)
    e1 = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1, target=0)
    assert [r for r, _ in m.seen] == [4] * 25
    assert [c for _, c in m.seen] == [False, False] + [True] * 23
    key = chunking.cache_key(x, speed.get_defaults())
    assert chunking.cached_layout(m, key) is True and chunking.cached_chunk(m, key) is None
    assert_same_state(before, model_state(m))
    m.seen.clear()
    e2 = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1, target=0)   # from the cache: no probe
    assert m.seen == [(4, True)] * 25
    e3 = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1, target=0)
    assert torch.equal(e2.attributions, e3.attributions)                     # same chunking: same bits
    ref = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1, target=0, batch_size=3, channels_last=False)
    torch.testing.assert_close(e1.attributions, ref.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e2.attributions, ref.attributions, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cl_cost,expected", [(0.5, True), (0.97, False), (2.0, False)])
def test_auto_layout_keeps_channels_last_only_when_clearly_faster(scripted, cl_cost, expected):
    m = Clocked(1.0, cl_cost, scripted)
    ptrs = [p.data_ptr() for p in m.parameters()]
    x = torch.randn(1, 3, 16, 16)
    sk.explain(m, x, "smoothgrad", n_samples=100, target=0)
    key = chunking.cache_key(x, speed.get_defaults())
    assert chunking.cached_layout(m, key) is expected
    assert all(cl is expected for _, cl in m.seen[4:])     # after the two layout probes
    assert [p.data_ptr() for p in m.parameters()] == ptrs and m.conv.weight.is_contiguous()
    m.seen.clear()
    sk.explain(m, x, "smoothgrad", n_samples=100, target=0, channels_last=False)  # another key
    assert not any(cl for _, cl in m.seen)


def test_a_fixed_layout_is_not_probed(scripted):
    m = Clocked(1.0, 0.5, scripted)
    x = torch.randn(1, 3, 16, 16)
    sk.explain(m, x, "smoothgrad", n_samples=100, target=0, channels_last=False)
    assert m.seen == [(4, False)] * 25
    m.seen.clear()
    sk.explain(m, x, "smoothgrad", n_samples=100, target=0, channels_last=True)
    assert m.seen == [(4, True)] * 25
    assert len(chunking._LAYOUT.get(m, {})) == 0   # nothing to decide: no layout cached


def test_layout_probe_with_real_timing_covers_the_rows_and_is_cached(tiny_cnn):
    """Real clock: the probe runs once, at the fixed rule's size; later calls use the cached layout."""
    m = BatchRecorder(tiny_cnn)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = chunking.safe_rows(x, 10 ** 6)
    n = chunking.MIN_CALIBRATION_CHUNKS * rows
    e1 = sk.explain(m, x, "smoothgrad", n_samples=n, seed=1)
    assert m.sizes == [rows] * chunking.MIN_CALIBRATION_CHUNKS
    key = chunking.cache_key(x, speed.get_defaults())
    assert chunking.cached_layout(m, key) in (True, False)
    m.sizes.clear()
    e2 = sk.explain(m, x, "smoothgrad", n_samples=n, seed=1)
    assert m.sizes == [rows] * chunking.MIN_CALIBRATION_CHUNKS
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=n, seed=1, batch_size=3, channels_last=False)
    torch.testing.assert_close(e1.attributions, ref.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e2.attributions, ref.attributions, rtol=1e-4, atol=1e-6)


def test_a_loop_probes_only_with_enough_chunks(tiny_cnn):
    m = BatchRecorder(tiny_cnn)
    x = torch.randn(1, 3, 16, 16)
    rows = chunking.safe_rows(x, 10 ** 6)
    key = chunking.cache_key(x, speed.get_defaults())
    sk.explain(m, x, "smoothgrad", n_samples=chunking.MIN_CALIBRATION_CHUNKS * rows - 1)
    assert chunking.cached_layout(m, key) is None            # one chunk short: no probe
    sk.explain(m, x, "smoothgrad", n_samples=chunking.MIN_CALIBRATION_CHUNKS * rows)
    assert chunking.cached_layout(m, key) is not None


def test_small_calls_do_not_calibrate(tiny_cnn, monkeypatch):
    monkeypatch.setattr(chunking, "Calibrator", lambda *a, **k: pytest.fail("calibrated a small call"))
    sk.explain(tiny_cnn, torch.randn(2, 3, 16, 16), "smoothgrad", n_samples=10)
    speed.set_defaults(calibrate=False)
    sk.explain(tiny_cnn, torch.randn(1, 3, 16, 16), "smoothgrad", n_samples=1000)


def test_batch_size_override_is_respected(tiny_cnn, monkeypatch):
    monkeypatch.setattr(chunking, "Calibrator", lambda *a, **k: pytest.fail("calibrated despite batch_size"))
    m = BatchRecorder(tiny_cnn)
    x = torch.randn(2, 3, 16, 16)
    sk.explain(m, x, "smoothgrad", n_samples=50, batch_size=7)
    assert m.sizes == [7] * 14 + [2]
    m.sizes.clear()
    sk.explain(m, x, "integrated_gradients", n_steps=5, baseline="zeros", batch_size=3)
    assert m.sizes == [3, 3, 3, 1]


def test_oom_halves_and_retries_with_the_same_result(tiny_cnn):
    m = BatchRecorder(tiny_cnn, oom_above=4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    before = model_state(tiny_cnn)
    e = sk.explain(m, x, "smoothgrad", n_samples=10, seed=7)     # safe rule: 20 rows -> 10 -> 5 -> 2
    assert m.sizes[:3] == [20, 10, 5]
    assert m.sizes[3:] == [2] * 10
    assert chunking.cached_chunk(m, chunking.cache_key(x, speed.get_defaults())) == 2
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=10, seed=7, batch_size=2)
    assert torch.equal(e.attributions, ref.attributions)
    assert_same_state(before, model_state(tiny_cnn))
    m.sizes.clear()
    sk.explain(m, x, "smoothgrad", n_samples=10, seed=7)         # starts from the cached size
    assert m.sizes == [2] * 10


def test_oom_with_explicit_batch_size_halves_for_the_call_with_a_warning(tiny_cnn):
    m = BatchRecorder(tiny_cnn, oom_above=4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with pytest.warns(ResourceWarning, match=r"batch_size=8 ran out of memory.* 4 rows"):
        e = sk.explain(m, x, "smoothgrad", n_samples=10, seed=3, batch_size=8)
    assert m.sizes == [8] + [4] * 5      # 20 rows: 8 runs out of memory, then five chunks of 4
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=10, seed=3, batch_size=4)
    assert torch.equal(e.attributions, ref.attributions)
    # an explicit size is the user's: the halved size is not cached for later calls
    assert chunking.cached_chunk(m, chunking.cache_key(x, speed.get_defaults())) is None
    m.sizes.clear()
    with pytest.warns(ResourceWarning):
        sk.explain(m, x, "smoothgrad", n_samples=10, seed=3, batch_size=8)
    assert m.sizes[0] == 8


def test_oom_at_one_row_is_raised(tiny_cnn):
    m = BatchRecorder(tiny_cnn, oom_above=0)
    with pytest.raises(torch.OutOfMemoryError):
        sk.explain(m, torch.randn(1, 3, 16, 16), "gradient")


def test_cuda_rows_from_free_memory():
    mib = 1 << 20
    assert chunking.cuda_rows_from_memory(1000 * mib, 10 * mib, 10_000) == 64       # 80 rows fit -> 64
    assert chunking.cuda_rows_from_memory(1000 * mib, 10 * mib, 50) == 50           # all rows fit
    assert chunking.cuda_rows_from_memory(5 * mib, 10 * mib, 100) == 1              # never below one row
    assert chunking.cuda_rows_from_memory(10 ** 15, 1, 10 ** 6) == chunking.CUDA_MAX_ROWS


def test_probing_call_with_path_steps_matches_fixed_chunks(scripted):
    """Integrated gradients sum path steps across chunk boundaries; the probing call changes the
    memory layout mid-path and must still give the fixed-chunk result."""
    m = Clocked(1.0, 0.5, scripted)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    e = sk.explain(m, x, "integrated_gradients", n_steps=37, baseline="zeros", target=[0, 2])
    layouts = [cl for _, cl in m.seen]
    assert sum(r for r, _ in m.seen) == 74 and layouts[:2] == [False, False] and all(layouts[2:])
    ref = sk.explain(m, x, "integrated_gradients", n_steps=37, baseline="zeros", target=[0, 2], batch_size=5,
                     channels_last=False)
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e.delta, ref.delta, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cl_cost,expected", [(0.5, True), (2.0, False)])
def test_metrics_probe_the_layout_on_their_own_first_chunks(scripted, monkeypatch, cl_cost, expected):
    from saliencekit import metrics

    monkeypatch.setattr(chunking, "_CPU_ELEMENTS_PER_CHUNK", 4 * 3 * 16 * 16)      # 4 rows per scoring chunk
    m = Clocked(1.0, cl_cost, scripted, count_inference=True)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sal = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(3))
    ptrs = [p.data_ptr() for p in m.parameters()]
    d = metrics.deletion(m, x, sal, target=[1], step=8)                  # 33 rows: 8 chunks + 1
    assert [r for r, _ in m.seen] == [4] * 8 + [1]
    assert [c for _, c in m.seen][:4] == [False, False, True, True]      # both layouts, warm + timed
    assert all(c is expected for _, c in m.seen[4:])
    assert [p.data_ptr() for p in m.parameters()] == ptrs and m.conv.weight.is_contiguous()
    m.seen.clear()
    d2 = metrics.deletion(m, x, sal, target=[1], step=8)                 # decided: from the cache
    assert all(c is expected for _, c in m.seen)
    speed.set_defaults(calibrate=False)                                   # as evaluate does: contiguous
    m.seen.clear()
    d3 = metrics.deletion(m, x, sal, target=[1], step=8)
    assert not any(c for _, c in m.seen)
    torch.testing.assert_close(d, d3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d2, d3, rtol=1e-5, atol=1e-6)


def test_an_out_of_memory_error_in_a_probing_metric_loop_is_raised_not_shrunk(scripted):
    """The metrics' scoring loops keep their caller's chunk size: a layout probe does not make them
    halve on out-of-memory (nor cache a size), it stops and the error reaches the caller."""
    from saliencekit import metrics

    class OomOnThirdForward(Clocked):
        def forward(self, x):
            if len(self.seen) == 2:
                raise torch.cuda.OutOfMemoryError("simulated")
            return super().forward(x)

    m = OomOnThirdForward(1.0, 0.5, scripted, count_inference=True)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sal = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(3))
    with pytest.raises(torch.OutOfMemoryError):
        metrics.deletion(m, x, sal, target=[1], step=8)       # 33 rows: the loop probes the layouts
    assert [r for r, _ in m.seen] == [4, 4] and not chunking._CHUNKS.get(m)
    assert m.conv.weight.is_contiguous()


def test_noise_drawn_on_a_given_device_is_the_same_numbers():
    from saliencekit.core import noise

    a = noise.normal((3, 4), 7, 1, 2, device="cpu")
    with noise.drawn_on("cpu"):
        b = noise.normal((3, 4), 7, 1, 2, device="meta")   # drawn on the CPU, then moved
    assert b.device.type == "meta" and noise._DRAW_ON is None
    with noise.drawn_on("cpu"):
        c = noise.normal((3, 4), 7, 1, 2, device="cpu")
    assert torch.equal(a, c)
