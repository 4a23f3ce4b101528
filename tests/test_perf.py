"""Speed settings: automatic chunking (calibration, cache, OOM back-off), precision, channels_last, compile."""

from __future__ import annotations

import warnings

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import saliencekit as sk
from saliencekit import perf

from conftest import assert_same_state, model_state


@pytest.fixture(autouse=True)
def _fresh_perf_state():
    old = perf.get_defaults()
    perf.clear_cache()
    yield
    perf.set_defaults(old)
    perf.clear_cache()


class Recorder(nn.Module):
    """Wraps a model and records the batch size of every forward that builds a graph."""

    def __init__(self, inner: nn.Module, oom_above: int | None = None):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.oom_above = oom_above

    def forward(self, x):
        if torch.is_grad_enabled():
            self.sizes.append(x.shape[0])
            if self.oom_above is not None and x.shape[0] > self.oom_above:
                raise torch.cuda.OutOfMemoryError(f"simulated: {x.shape[0]} rows > {self.oom_above}")
        return self.inner(x)


def _heat(a: torch.Tensor) -> torch.Tensor:
    return a.abs().sum(1).flatten()


# ---- chunk size ------------------------------------------------------------------------------

def test_calibration_with_scripted_costs_picks_fastest_and_stops_early():
    """A virtual clock advances by a scripted cost per forward: the cheapest size per row wins."""
    clock = [0.0]
    cost_per_row = {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.9, 16: 0.2}  # 16 is never reached: 8 is > 1.25x best

    class Clocked(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []
            self.lin = nn.Linear(12, 3)

        def forward(self, x):
            self.seen.append(x.shape[0])
            clock[0] += cost_per_row[x.shape[0]] * x.shape[0]
            return self.lin(x.flatten(1))

    m = Clocked()
    st = perf.CallState(m, perf.Settings())
    best, per_row = perf.calibrate_cpu(m, torch.randn(1, 3, 2, 2), (1, 2, 4, 8, 16), st, timer=lambda: clock[0])
    assert best == 4
    assert per_row == pytest.approx({1: 1.0, 2: 0.6, 4: 0.5, 8: 0.9})
    assert 16 not in m.seen and m.seen == [1, 1, 2, 2, 4, 4, 8, 8]  # one warm-up + one timed run each


def test_candidates_fit_in_a_fifth_of_the_rows():
    x = torch.zeros(1, 3, 8, 8)
    assert perf.cpu_candidates(x, 50) == (1, 2)           # too few: the safe rule is used
    assert perf.cpu_candidates(x, 100) == (1, 2, 4)
    assert perf.cpu_candidates(x, 1000) == (1, 2, 4, 8, 16, 32)
    for total in (70, 100, 400, 5000):
        c = perf.cpu_candidates(x, total)
        assert 2 * sum(c) <= total // perf.CALIBRATION_SHARE


def test_calibration_runs_once_picks_a_candidate_and_is_cached(tiny_cnn, monkeypatch):
    calls = []
    real = perf.calibrate_cpu

    def counting(*a, **k):
        out = real(*a, **k)
        calls.append(out[0])
        return out

    monkeypatch.setattr(perf, "calibrate_cpu", counting)
    m = Recorder(tiny_cnn)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    e1 = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1)
    assert len(calls) == 1
    key = perf.cache_key(x, perf.get_defaults())
    chosen = perf.cached_chunk(m, key)
    assert chosen == calls[0] and chosen in perf.cpu_candidates(x, 100)
    # the explanation itself ran in chunks of the chosen size (after the calibration probes)
    probe_rows = sum(2 * c for c in perf.cpu_candidates(x, 100) if c <= max(perf.cpu_candidates(x, 100)))
    work = m.sizes[len(m.sizes) - (100 + chosen - 1) // chosen:]
    assert sum(work) == 100 and set(work[:-1]) <= {chosen}
    assert sum(m.sizes) - 100 <= probe_rows + 2 * chosen  # + the channels_last timing ("auto")
    m.sizes.clear()
    e2 = sk.explain(m, x, "smoothgrad", n_samples=100, seed=1)
    assert len(calls) == 1                                 # cached: no second calibration
    assert sum(m.sizes) == 100 and set(m.sizes[:-1]) == {chosen}
    assert torch.equal(e1.attributions, e2.attributions)  # same chunking -> same bits
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=100, seed=1, batch_size=3).attributions
    torch.testing.assert_close(e1.attributions, ref, rtol=1e-5, atol=1e-7)


def _fake_timer(per_call_seconds):
    t = [0.0]

    def timer():
        t[0] += per_call_seconds
        return t[0]
    return timer


@pytest.mark.parametrize("cl_seconds,expected", [(0.5, True), (1.0, False)])
def test_auto_layout_keeps_channels_last_only_when_faster(tiny_cnn, cl_seconds, expected):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ptrs = [p.data_ptr() for p in tiny_cnn.parameters()]
    st = perf.CallState(tiny_cnn, perf.Settings(channels_last="auto"))
    # contiguous: 1 s per row; channels_last: cl_seconds per timed probe of 1 row
    kept = perf.choose_layout(tiny_cnn, x, 1, 1.0, st, timer=_fake_timer(cl_seconds))
    assert kept is expected and st.channels_last is expected
    w = tiny_cnn.features[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) is expected
    perf._restore_layout(st)
    assert [p.data_ptr() for p in tiny_cnn.parameters()] == ptrs and w.is_contiguous()


def test_auto_layout_is_decided_once_cached_and_restored(tiny_cnn, monkeypatch):
    decided = []
    real = perf.choose_layout

    def faster_cl(model, x, rows, per_row, st, timer=None):
        decided.append(real(model, x, rows, per_row, st, timer=_fake_timer(0.0)))  # CL "takes no time"
        return decided[-1]

    monkeypatch.setattr(perf, "choose_layout", faster_cl)
    before = model_state(tiny_cnn)
    ptrs = [p.data_ptr() for p in tiny_cnn.parameters()]
    seen = []
    h = tiny_cnn.features[0].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last) and a[0].shape[0] > 0))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        e1 = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=100, seed=1, channels_last="auto")
        n1 = len(seen)
        e2 = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=100, seed=1)  # "auto" is the default
    finally:
        h.remove()
    assert decided == [True]                     # timed once, then taken from the cache
    # the work after the decision ran in channels_last (each call's first forward is the clean one)
    assert all(seen[n1 - 2:n1]) and not seen[n1] and all(seen[n1 + 1:])
    assert torch.equal(e1.attributions, e2.attributions)
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=100, seed=1, channels_last=False, batch_size=4)
    torch.testing.assert_close(e1.attributions, ref.attributions, rtol=1e-4, atol=1e-6)
    assert_same_state(before, model_state(tiny_cnn))
    assert [p.data_ptr() for p in tiny_cnn.parameters()] == ptrs
    with pytest.raises(TypeError, match="channels_last"):
        sk.explain(tiny_cnn, x, "gradient", channels_last="fast")


def test_small_calls_do_not_calibrate(tiny_cnn, monkeypatch):
    monkeypatch.setattr(perf, "calibrate_cpu", lambda *a, **k: pytest.fail("calibrated a small call"))
    sk.explain(tiny_cnn, torch.randn(2, 3, 16, 16), "smoothgrad", n_samples=10)
    perf.set_defaults(calibrate=False)
    sk.explain(tiny_cnn, torch.randn(1, 3, 16, 16), "smoothgrad", n_samples=200)


def test_batch_size_override_is_respected(tiny_cnn, monkeypatch):
    monkeypatch.setattr(perf, "calibrate_cpu", lambda *a, **k: pytest.fail("calibrated despite batch_size"))
    m = Recorder(tiny_cnn)
    x = torch.randn(2, 3, 16, 16)
    sk.explain(m, x, "smoothgrad", n_samples=50, batch_size=7)
    assert m.sizes == [7] * 14 + [2]
    m.sizes.clear()
    sk.explain(m, x, "integrated_gradients", n_steps=5, baseline="zeros", batch_size=3)
    assert m.sizes == [3, 3, 3, 1]


# ---- out of memory ---------------------------------------------------------------------------

def test_oom_halves_and_retries_with_the_same_result(tiny_cnn):
    m = Recorder(tiny_cnn, oom_above=4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    before = model_state(tiny_cnn)
    e = sk.explain(m, x, "smoothgrad", n_samples=10, seed=7)     # safe rule: 20 rows -> 10 -> 5 -> 2
    assert m.sizes[:3] == [20, 10, 5]
    assert m.sizes[3:] == [2] * 10
    assert perf.cached_chunk(m, perf.cache_key(x, perf.get_defaults())) == 2
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=10, seed=7, batch_size=2)
    assert torch.equal(e.attributions, ref.attributions)
    assert_same_state(before, model_state(tiny_cnn))
    m.sizes.clear()
    sk.explain(m, x, "smoothgrad", n_samples=10, seed=7)         # starts from the cached size
    assert m.sizes == [2] * 10


def test_oom_with_explicit_batch_size_is_raised(tiny_cnn):
    m = Recorder(tiny_cnn, oom_above=4)
    with pytest.raises(torch.OutOfMemoryError):
        sk.explain(m, torch.randn(2, 3, 16, 16), "smoothgrad", n_samples=10, batch_size=8)


def test_oom_at_one_row_is_raised(tiny_cnn):
    m = Recorder(tiny_cnn, oom_above=0)
    with pytest.raises(torch.OutOfMemoryError):
        sk.explain(m, torch.randn(1, 3, 16, 16), "gradient")


def test_cuda_rows_from_free_memory():
    mib = 1 << 20
    assert perf.cuda_rows_from_memory(1000 * mib, 10 * mib, 10_000) == 64       # 80 rows fit -> 64
    assert perf.cuda_rows_from_memory(1000 * mib, 10 * mib, 50) == 50           # all rows fit
    assert perf.cuda_rows_from_memory(5 * mib, 10 * mib, 100) == 1              # never below one row
    assert perf.cuda_rows_from_memory(10 ** 15, 1, 10 ** 6) == perf.CUDA_MAX_ROWS


# ---- precision, memory format, compile ---------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_ranks_like_fp32(tiny_cnn, precision):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=8, seed=2)
    low = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=8, seed=2, precision=precision)
    assert low.attributions.dtype == torch.float32
    assert not torch.equal(low.attributions, ref.attributions)   # autocast really ran
    for i in range(2):
        rho = spearmanr(_heat(ref.attributions[i]).numpy(), _heat(low.attributions[i]).numpy())[0]
        assert rho > 0.99


def test_fp16_overflow_in_scaled_backward_falls_back_unscaled():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    with torch.no_grad():
        lin[1].weight.fill_(300.0)   # grad of 256 * score overflows fp16 (max 65504) in the backward
        lin[1].bias.zero_()
    x = torch.full((1, 3, 4, 4), 0.01)
    ref = sk.explain(lin, x, "gradient", target=0).attributions
    half = sk.explain(lin, x, "gradient", target=0, precision="fp16").attributions
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, ref, rtol=1e-3, atol=0)


def test_precision_set_globally_and_validated(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    fp32 = sk.explain(tiny_cnn, x, "gradient").attributions
    bf16 = sk.explain(tiny_cnn, x, "gradient", precision="bf16").attributions
    sk.set_defaults(precision="bf16")
    assert torch.equal(sk.explain(tiny_cnn, x, "gradient").attributions, bf16)
    assert torch.equal(sk.explain(tiny_cnn, x, "gradient", precision="fp32").attributions, fp32)
    with pytest.raises(ValueError, match="precision"):
        sk.explain(tiny_cnn, x, "gradient", precision="fp8")
    with pytest.raises(TypeError, match="channels_last"):
        sk.explain(tiny_cnn, x, "gradient", channels_last="yes")
    with pytest.raises(TypeError, match="compile"):
        sk.set_defaults(compile=1)


def test_channels_last_matches_contiguous_and_restores_the_model(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    before = model_state(tiny_cnn)
    strides = [p.stride() for p in tiny_cnn.parameters()]
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=6, seed=4).attributions
    cl = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=6, seed=4, channels_last=True).attributions
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-7)
    ig = sk.explain(tiny_cnn, x, "integrated_gradients", n_steps=6, channels_last=True)
    ig_ref = sk.explain(tiny_cnn, x, "integrated_gradients", n_steps=6)
    torch.testing.assert_close(ig.attributions, ig_ref.attributions, rtol=1e-5, atol=1e-7)
    assert_same_state(before, model_state(tiny_cnn))
    assert [p.stride() for p in tiny_cnn.parameters()] == strides
    assert x.is_contiguous()


def test_compile_matches_eager_and_keeps_layer_capture(tiny_cnn):
    """torch.compile with the aot_eager backend (traces the model and its hooks, generates no C++;
    the default inductor backend takes about a minute to compile on 2 busy cores, see docs/benchmarks.md)."""
    pytest.importorskip("torch._dynamo")
    sk.set_defaults(compile_backend="aot_eager")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    before = model_state(tiny_cnn)
    m = Recorder(tiny_cnn)
    try:
        comp = sk.explain(m, x, "smoothgrad", n_samples=5, seed=3, batch_size=4, compile=True)
    except Exception as err:  # pragma: no cover - depends on the installed compiler stack
        pytest.skip(f"torch.compile unavailable: {err}")
    ref = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=5, seed=3, batch_size=4).attributions
    torch.testing.assert_close(comp.attributions, ref, rtol=1e-5, atol=1e-7)
    assert set(m.sizes) <= {4}                      # the last chunk (2 rows) was padded to 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # layer capture runs eager: no fallback warning
        cam = sk.explain(tiny_cnn, x, "gradcam", layer="features.3", compile=True).attributions
    cam_ref = sk.explain(tiny_cnn, x, "gradcam", layer="features.3").attributions
    torch.testing.assert_close(cam, cam_ref, rtol=1e-5, atol=1e-6)
    assert_same_state(before, model_state(tiny_cnn))
    again = sk.explain(tiny_cnn, x, "smoothgrad", n_samples=5, seed=3, batch_size=4, compile=True).attributions
    assert torch.equal(again, comp.attributions)    # still compiled (cached), same bits


def test_compile_failure_falls_back_to_eager(tiny_cnn):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    sk.set_defaults(compile_backend=broken_backend)
    x = torch.randn(1, 3, 16, 16)
    ref = sk.explain(tiny_cnn, x, "gradient").attributions
    with pytest.warns(RuntimeWarning, match="compile"):
        out = sk.explain(tiny_cnn, x, "gradient", compile=True).attributions
    assert torch.equal(out, ref)


def test_real_model_bf16_rank_correlation(real_model, sample_dir):
    from saliencekit import load_images

    path = sorted(p for p in sample_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    x = load_images(path)
    ref = sk.explain(real_model, x, "gradient").attributions
    low = sk.explain(real_model, x, "gradient", precision="bf16").attributions
    rho = spearmanr(_heat(ref[0]).numpy(), _heat(low[0]).numpy())[0]
    assert rho > 0.9
