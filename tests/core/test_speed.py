"""Speed settings (core.speed): precision, channels_last and compile agree with fp32 eager and leave the model as
found."""

from __future__ import annotations

import warnings

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import saliencekit as sk

from conftest import BatchRecorder, abs_heat, assert_same_state, model_state


pytestmark = pytest.mark.usefixtures("fresh_speed_state")


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
    m = BatchRecorder(tiny_cnn)
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
    rho = spearmanr(abs_heat(ref[0]).numpy(), abs_heat(low[0]).numpy())[0]
    assert rho > 0.9

