"""Heatmap reductions (the SmoothGrad paper's visualisation lessons) against numpy written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saliencekit as sk
from saliencekit.core import imageops
from saliencekit import visualize


@pytest.fixture
def attr():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 9, 7, generator=g)
    a[0, 1, 2, 3] = 40.0  # an outlier the 99th-percentile cap must flatten
    return a


def _minmax(m):
    lo = m.reshape(m.shape[0], -1).min(1)[:, None, None]
    hi = m.reshape(m.shape[0], -1).max(1)[:, None, None]
    return (m - lo) / (hi - lo)


def _cap(m, q):
    p = np.percentile(m.reshape(m.shape[0], -1), q, axis=1)[:, None, None]
    return np.minimum(m, p)


def test_abs_sum_clip99_minmax(attr):
    a = attr.numpy().astype(np.float64)
    ref = _minmax(_cap(np.abs(a).sum(1), 99))
    got = visualize.heatmap(attr, sign="abs", channels="sum", clip=99, normalize=True)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 9, 7)
    assert got.min() == 0 and got.max() == 1
    # the outlier got capped: without the cap the rest of image 0 is squashed near 0
    nocap = visualize.heatmap(attr, clip=None).numpy()
    np.testing.assert_allclose(nocap, _minmax(np.abs(a).sum(1)), rtol=1e-5, atol=1e-6)
    assert np.median(got[0].numpy()) > 2 * np.median(nocap[0])


def test_channels_max_and_mean(attr):
    a = attr.numpy().astype(np.float64)
    np.testing.assert_allclose(visualize.heatmap(attr, channels="max", clip=None).numpy(),
                               _minmax(np.abs(a).max(1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(visualize.heatmap(attr, channels="mean", clip=95).numpy(),
                               _minmax(_cap(np.abs(a).mean(1), 95)), rtol=1e-5, atol=1e-6)


def test_positive_negative(attr):
    a = attr.numpy().astype(np.float64)
    np.testing.assert_allclose(visualize.heatmap(attr, sign="positive", clip=None).numpy(),
                               _minmax(np.maximum(a, 0).sum(1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(visualize.heatmap(attr, sign="negative", clip=None).numpy(),
                               _minmax(np.maximum(-a, 0).sum(1)), rtol=1e-5, atol=1e-6)


def test_no_normalize_keeps_raw_values(attr):
    a = attr.numpy().astype(np.float64)
    np.testing.assert_allclose(visualize.heatmap(attr, clip=None, normalize=False).numpy(), np.abs(a).sum(1),
                               rtol=1e-5, atol=1e-5)


def test_signed_diverging(attr):
    a = attr.numpy().astype(np.float64)
    m = a.sum(1)
    span = np.percentile(np.abs(m).reshape(2, -1), 99, axis=1)[:, None, None]
    ref = (np.clip(m, -span, span) / span + 1) / 2
    got = visualize.heatmap(attr, sign="signed", channels="sum", clip=99)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    # zero maps to exactly 0.5, the sign is kept around it
    z = attr.clone()
    z[:, :, 0, 0] = 0
    g = visualize.heatmap(z, sign="signed")
    assert (g[:, 0, 0] == 0.5).all()
    assert ((g > 0.5) == (z.sum(1) > 0)).all() and ((g < 0.5) == (z.sum(1) < 0)).all()
    # no clip: the span is the largest |value|, the extremes reach 0 / 1 only on that side
    g2 = visualize.heatmap(attr, sign="signed", clip=None).numpy()
    span2 = np.abs(m).reshape(2, -1).max(1)[:, None, None]
    np.testing.assert_allclose(g2, (m / span2 + 1) / 2, rtol=1e-5, atol=1e-6)


def test_signed_channel_max_keeps_the_sign_of_the_largest_magnitude():
    a = torch.tensor([[[[1.0]], [[-3.0]], [[2.0]]]])  # 1 x 3 x 1 x 1
    assert visualize.heatmap(a, sign="signed", channels="max", normalize=False).item() == -3.0


def test_constant_map_is_zero_not_nan():
    h = visualize.heatmap(torch.ones(2, 3, 4, 4))
    assert torch.isfinite(h).all() and (h == 0).all()
    s = visualize.heatmap(torch.zeros(1, 3, 4, 4), sign="signed")
    assert (s == 0.5).all()


def test_percentile_big_tensor_matches_numpy():
    """torch.quantile refuses inputs over 16M elements; the helper must still work (and match numpy)."""
    g = torch.Generator().manual_seed(1)
    v = torch.rand(1, 17_000_000, generator=g)  # one row over 2**24 elements
    got = imageops.percentile(v, 99)
    ref = np.percentile(v.numpy(), 99, axis=1, keepdims=True)
    assert got.shape == (1, 1) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    # and small rows for several q, including the ends and ties
    w = torch.randint(0, 5, (4, 37), generator=g).float()
    for q in (0.5, 1, 50, 98.7, 99, 100):
        np.testing.assert_allclose(imageops.percentile(w, q).numpy(),
                                   np.percentile(w.numpy(), q, axis=1, keepdims=True), rtol=1e-6, atol=1e-6)


def test_heatmap_many_images_over_quantile_limit():
    a = torch.rand(1, 1, 4200, 4100)  # one image of 17M pixels: over torch.quantile's row limit
    h = visualize.heatmap(a)
    assert h.shape == (1, 4200, 4100) and h.dtype == torch.float32 and torch.isfinite(h).all()


def test_explanation_heatmap_defaults_and_overrides(tiny_cnn, images):
    e = sk.explain(tiny_cnn, images, "gradient")
    a = e.attributions.numpy().astype(np.float64)
    np.testing.assert_allclose(e.heatmap().numpy(), _minmax(_cap(np.abs(a).sum(1), 99)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.heatmap(channels="max", clip=None).numpy(), _minmax(np.abs(a).max(1)),
                               rtol=1e-5, atol=1e-6)
    st = sk.explain(tiny_cnn, images, "smoothtaylor", n_samples=3)
    assert st.signed
    m = st.attributions.numpy().astype(np.float64).sum(1)
    span = np.percentile(np.abs(m).reshape(3, -1), 99, axis=1)[:, None, None]
    np.testing.assert_allclose(st.heatmap().numpy(), (np.clip(m, -span, span) / span + 1) / 2, rtol=1e-5,
                               atol=1e-6)


def test_overlay_and_colorize():
    heat = np.linspace(0, 1, 12).reshape(3, 4)
    col = visualize.colorize(heat, "jet")
    assert col.shape == (3, 4, 3) and col.dtype == np.uint8
    img = np.full((3, 4, 3), 0.5)
    ov = visualize.overlay(img, heat, "jet", alpha=0.25)
    np.testing.assert_allclose(ov, np.round((0.75 * 0.5 + 0.25 * col / 255) * 255), atol=1)


def test_save_and_plot(tiny_cnn, images, tmp_path):
    import json

    e = sk.explain(tiny_cnn, images, "integrated_gradients", n_steps=4)
    written = e.save(tmp_path, names=["a", "b", "c"])
    names = {p.name for p in written}
    assert {"a_integrated_gradients.png", "integrated_gradients.pt", "integrated_gradients.json"} <= names
    t = torch.load(tmp_path / "integrated_gradients.pt")
    assert torch.equal(t["attributions"], e.attributions) and torch.equal(t["delta"], e.delta)
    js = json.loads((tmp_path / "integrated_gradients.json").read_text())
    assert js["method"] == "integrated_gradients" and len(js["delta"]) == 3 and js["params"]["n_steps"] == 4
    fig = e.plot()
    assert len(fig.axes) == 3 * 2 + 1   # each image with its map, and the map's colour bar
