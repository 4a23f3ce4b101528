"""Sign-aware maps (Llorente et al.) against reference loops written out here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencekit as sk


def _all_class_grads(model, x, space="logit"):
    """Reference: every class's input gradient with a plain Python loop, B x K x C x H x W."""
    out = []
    for i in range(x.shape[0]):
        per = []
        k = model(x[:1]).shape[1]
        for c in range(k):
            xi = x[i:i + 1].clone().requires_grad_(True)
            s = model(xi)
            if space != "logit":
                s = getattr(torch, space)(s, dim=1)
            g, = torch.autograd.grad(s[0, c], xi)
            per.append(g[0])
        out.append(torch.stack(per))
    return torch.stack(out)


def _reference(model, x, cls, kind, top_k=None, space="logit"):
    G = _all_class_grads(model, x, space)
    with torch.no_grad():
        logits = model(x)
    res = []
    for i in range(x.shape[0]):
        c = int(cls[i])
        g = G[i, c]
        others = [o for o in logits[i].argsort(descending=True).tolist() if o != c]
        if top_k is not None:
            others = others[:top_k]
        if kind == "positive":
            res.append(torch.relu(g))
        elif kind == "negative":
            res.append(torch.relu(-g))
        else:
            keep = torch.ones_like(g, dtype=torch.bool)
            for o in others:  # strict comparison with every other class
                keep &= (g > G[i, o]) if kind == "active" else (g < G[i, o])
            res.append(torch.where(keep, g.abs(), torch.zeros_like(g)))
    return torch.stack(res)


@pytest.fixture
def cnn64(tiny_cnn):
    return tiny_cnn.double()  # 5 classes


@pytest.fixture
def x64(images):
    return images.double()


@pytest.mark.parametrize("kind", ["positive", "negative", "active", "inactive"])
def test_sign_aware_maps_match_reference_loop(cnn64, x64, kind):
    e = sk.explain(cnn64, x64, kind)
    with torch.no_grad():
        pred = cnn64(x64).argmax(1)
    assert e.targets.tolist() == pred.tolist()
    ref = _reference(cnn64, x64, pred, kind)
    torch.testing.assert_close(e.attributions, ref, rtol=1e-12, atol=1e-14)
    assert (e.attributions >= 0).all()
    assert e.attributions.shape == x64.shape


@pytest.mark.parametrize("kind", ["active", "inactive"])
@pytest.mark.parametrize("top_k", [1, 2, 4, 10])
def test_top_k_limits_the_comparison(cnn64, x64, kind, top_k):
    e = sk.explain(cnn64, x64, kind, top_k=top_k, target=[0, 3, 1])
    ref = _reference(cnn64, x64, [0, 3, 1], kind, top_k=top_k)
    torch.testing.assert_close(e.attributions, ref, rtol=1e-12, atol=1e-14)


def test_top_k_keeps_more_pixels_than_all_classes(cnn64, x64):
    """Comparing with fewer classes can only keep more elements (a weaker condition)."""
    full = sk.explain(cnn64, x64, "active").attributions
    one = sk.explain(cnn64, x64, "active", top_k=1).attributions
    assert ((full > 0) <= (one > 0)).all()
    assert (one > 0).sum() > (full > 0).sum()


def test_score_space_softmax(cnn64, x64):
    e = sk.explain(cnn64, x64, "active", score="softmax", target=[1, 1, 2])
    ref = _reference(cnn64, x64, [1, 1, 2], "active", space="softmax")
    torch.testing.assert_close(e.attributions, ref, rtol=1e-10, atol=1e-14)


def test_strict_comparison_with_tied_classes():
    """Two classes with identical weights have identical gradients: active / inactive are empty
    for either of them (strictly greater / smaller never holds), but not for a third class."""
    lin = nn.Linear(3 * 4 * 4, 3).double()
    with torch.no_grad():
        lin.weight[1] = lin.weight[0]
        lin.bias[1] = lin.bias[0]
    m = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for kind in ("active", "inactive"):
        assert (sk.explain(m, x, kind, target=0).attributions == 0).all()
        assert (sk.explain(m, x, kind, target=1).attributions == 0).all()
        assert (sk.explain(m, x, kind, target=2).attributions > 0).any()
    # positive / negative split |g| exactly
    p = sk.explain(m, x, "positive", target=2).attributions
    n = sk.explain(m, x, "negative", target=2).attributions
    g = sk.explain(m, x, "gradient", target=2).attributions
    torch.testing.assert_close(p - n, g)
    torch.testing.assert_close(p + n, g.abs())


def test_linear_two_class_model_active_is_where_weight_is_larger():
    lin = nn.Linear(3 * 4 * 4, 2).double()
    m = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    w0, w1 = lin.weight.detach()[0].view(3, 4, 4), lin.weight.detach()[1].view(3, 4, 4)
    a = sk.explain(m, x, "active", target=0).attributions[0]
    torch.testing.assert_close(a, torch.where(w0 > w1, w0.abs(), torch.zeros_like(w0)))
    i = sk.explain(m, x, "inactive", target=0).attributions[0]
    torch.testing.assert_close(i, torch.where(w0 < w1, w0.abs(), torch.zeros_like(w0)))


def test_heatmap_default_is_channel_max_minmax(cnn64, x64):
    e = sk.explain(cnn64, x64, "positive")
    a = e.attributions.numpy()
    m = a.max(1)
    lo = m.reshape(3, -1).min(1)[:, None, None]
    hi = m.reshape(3, -1).max(1)[:, None, None]
    torch.testing.assert_close(e.heatmap().double(), torch.from_numpy((m - lo) / (hi - lo)), rtol=1e-6, atol=1e-6)


def test_single_class_model_refused():
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 1)).eval()
    with pytest.raises(ValueError, match="^model:"):
        sk.explain(m, torch.randn(1, 3, 2, 2), "active")
