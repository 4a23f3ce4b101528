"""Grad-CAM / Grad-CAM++ / Smooth Grad-CAM++ and unit targets against independent references.

References are written out here: plain forward hooks + ``torch.autograd.grad`` one image (or one
noisy sample) at a time, the formulas of the papers (docs/cams.md), TorchCAM and Captum.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import _init, assert_same_state, model_state
from torch import nn

import saliencekit as sk
from saliencekit.core import noise

LAYER = "features.2"  # ReLU(inplace) output, 6 x 16 x 16; a strided conv + ReLU follow: g varies in space


# ---- independent references ------------------------------------------------------------------

def layer_and_grad(model, layer, x, score_fn):
    """A (clean forward) and g = d score / d A, one image at a time, with a plain forward hook."""
    model = copy.deepcopy(model).eval()
    layer = dict(model.named_modules())[layer] if isinstance(layer, str) else layer
    acts, grads = [], []
    for i in range(x.shape[0]):
        store = {}
        h = layer.register_forward_hook(lambda m, inp, out, store=store: store.__setitem__("a", out))
        try:
            xi = x[i:i + 1].clone().requires_grad_(True)
            out = model(xi)
            s = score_fn(out, store["a"], i)
            g, = torch.autograd.grad(s.sum(), store["a"])
        finally:
            h.remove()
        acts.append(store["a"].detach())
        grads.append(g.detach())
    return torch.cat(acts), torch.cat(grads)


def class_score(classes):
    return lambda out, a, i: out[:, classes[i]]


def gradcam_ref(A, g, channels=None, relu=True):
    w = g.mean(dim=(2, 3))
    if channels is not None:
        w, A = w[:, channels], A[:, channels]
    cam = (w[:, :, None, None] * A).sum(1, keepdim=True)
    return cam.clamp(min=0) if relu else cam


def gradcampp_ref(A, d1, d2, d3, numerator="d2", channels=None):
    """The paper's closed form: alpha = num / (2 D2 + (sum_ab A_ab) D3), 0 where the denominator is 0."""
    S = A.sum(dim=(2, 3), keepdim=True)
    den = 2 * d2 + S * d3
    num = d2 if numerator == "d2" else d1
    alpha = torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    w = (alpha * d1.clamp(min=0)).sum(dim=(2, 3))
    if channels is not None:
        w, A = w[:, channels], A[:, channels]
    return (w[:, :, None, None] * A).sum(1, keepdim=True).clamp(min=0)


def up(cam, size):
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


@pytest.fixture
def x():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))


# ---- Grad-CAM --------------------------------------------------------------------------------

def test_gradcam_equals_formula_torchcam_and_captum(tiny_cnn, x):
    from captum.attr import LayerAttribution, LayerGradCam
    from torchcam.methods import GradCAM

    e = sk.explain(tiny_cnn, x, "gradcam", layer=LAYER)
    cls = e.targets.tolist()
    A, g = layer_and_grad(tiny_cnn, LAYER, x, class_score(cls))
    ref = gradcam_ref(A, g)
    assert ref.abs().sum() > 0
    assert e.attributions.shape == (3, 1, 16, 16)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.attributions, up(ref, (16, 16)), rtol=1e-5, atol=1e-6)

    m = copy.deepcopy(tiny_cnn)
    extractor = GradCAM(m, target_layer=LAYER)
    try:
        maps = extractor(class_idx=cls, scores=m(x), normalized=False)[0]
    finally:
        extractor.remove_hooks()
    torch.testing.assert_close(e.extras["cam"][:, 0], maps.detach(), rtol=1e-5, atol=1e-6)

    m = copy.deepcopy(tiny_cnn)
    lgc = LayerGradCam(m, dict(m.named_modules())[LAYER])
    cap = lgc.attribute(x, target=torch.tensor(cls), relu_attributions=True)
    cap = LayerAttribution.interpolate(cap, (16, 16), interpolate_mode="bilinear")
    torch.testing.assert_close(e.attributions, cap.detach(), rtol=1e-5, atol=1e-6)


def test_heatmap_is_per_image_minmax_of_the_map(tiny_cnn, x):
    e = sk.explain(tiny_cnn, x, "gradcam", layer=LAYER)
    a = e.attributions[:, 0]
    lo = a.flatten(1).amin(1)[:, None, None]
    hi = a.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(e.heatmap(), (a - lo) / (hi - lo))


def test_relu_false_keeps_negative_values(tiny_cnn, x):
    e = sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, relu=False, target=0)
    A, g = layer_and_grad(tiny_cnn, LAYER, x, class_score([0, 0, 0]))
    ref = gradcam_ref(A, g, relu=False)
    assert (ref < 0).any()
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-5, atol=1e-6)


# ---- Grad-CAM++ ------------------------------------------------------------------------------

def test_gradcampp_equals_closed_form_not_the_per_channel_variant(tiny_cnn, x):
    e = sk.explain(tiny_cnn, x, "gradcampp", layer=LAYER)
    cls = e.targets.tolist()
    A, g = layer_and_grad(tiny_cnn, LAYER, x, class_score(cls))
    # the layer gradients vary in space: otherwise both variants coincide
    assert (g.flatten(2).std(dim=2) > 1e-3).float().mean() > 0.5
    ref = gradcampp_ref(A, g, g * g, g ** 3)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.attributions, up(ref, (16, 16)), rtol=1e-5, atol=1e-6)

    # the per-channel sum(A * g^3) variant of some ports gives a different map
    den = 2 * g * g + (A * g ** 3).sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(g != 0, g * g / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(g))
    w = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    variant = (w[:, :, None, None] * A).sum(1, keepdim=True).clamp(min=0)
    assert not torch.allclose(variant, ref, rtol=1e-3, atol=1e-4)


# ---- Smooth Grad-CAM++ -----------------------------------------------------------------------

def test_smooth_with_one_noiseless_sample_equals_gradcampp(tiny_cnn, x):
    a = sk.explain(tiny_cnn, x, "gradcampp", layer=LAYER)
    b = sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER, stdev=0.0, n_samples=1)
    torch.testing.assert_close(b.attributions, a.attributions, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b.extras["cam"], a.extras["cam"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("numerator", ["d2", "d1"])
def test_smooth_equals_plain_loop_over_the_same_noise(tiny_cnn, x, numerator):
    n, seed = 6, 11
    e = sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER, n_samples=n, seed=seed, alpha_numerator=numerator)
    cls = e.targets.tolist()
    A, _ = layer_and_grad(tiny_cnn, LAYER, x, class_score(cls))
    flat = x.flatten(1)
    sigma = 0.15 * (flat.amax(1) - flat.amin(1))
    d1, d2, d3 = (torch.zeros_like(A) for _ in range(3))
    for j in range(n):
        eps = torch.stack([noise.normal(x.shape[1:], seed, i, j, stream=noise.STREAM_CAM) for i in range(3)])
        _, g = layer_and_grad(tiny_cnn, LAYER, x + sigma[:, None, None, None] * eps, class_score(cls))
        d1 += g / n
        d2 += g ** 2 / n
        d3 += g ** 3 / n
    ref = gradcampp_ref(A, d1, d2, d3, numerator)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e.extras["sigma"], sigma)
    # the noise matters: the map differs from Grad-CAM++ on the clean input
    _, g0 = layer_and_grad(tiny_cnn, LAYER, x, class_score(cls))
    assert not torch.allclose(ref, gradcampp_ref(A, g0, g0 * g0, g0 ** 3, numerator), rtol=1e-3, atol=1e-5)


def test_smooth_identical_for_any_batch_size(tiny_cnn, x):
    maps = [sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER, n_samples=5, seed=3, batch_size=b).attributions
            for b in (1, 7, None)]
    # same noise for every chunking; only float rounding of batched conv kernels may differ
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-5, atol=1e-6 * maps[0].abs().max().item())
    torch.testing.assert_close(maps[2], maps[0], rtol=1e-5, atol=1e-6 * maps[0].abs().max().item())
    assert not torch.equal(maps[0], sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER, n_samples=5,
                                               seed=4).attributions)


# ---- selection: channels and units -------------------------------------------------------------

def test_channels_subset_matches_formula(tiny_cnn, x):
    ch = [0, 3, 5]
    e = sk.explain(tiny_cnn, x, "gradcampp", layer=LAYER, channels=ch, target=1)
    A, g = layer_and_grad(tiny_cnn, LAYER, x, class_score([1, 1, 1]))
    ref = gradcampp_ref(A, g, g * g, g ** 3, channels=ch)
    torch.testing.assert_close(e.extras["cam"], ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref, gradcampp_ref(A, g, g * g, g ** 3), rtol=1e-3, atol=1e-5)
    e2 = sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, channels=[2], target=1)
    torch.testing.assert_close(e2.extras["cam"], gradcam_ref(A, g, channels=[2]), rtol=1e-5, atol=1e-6)


def test_unit_targets_feature_maps_and_neurons(tiny_cnn, x):
    # feature maps 1 and 4 of features.3 (the conv after the CAM layer), by name
    units = sk.Units("features.3", channels=[1, 4])
    e = sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, target=units)
    out3 = {}
    h = tiny_cnn.features[3].register_forward_hook(lambda m, i, o: out3.__setitem__("a", o.clone()))
    try:
        A, g = layer_and_grad(tiny_cnn, LAYER, x, lambda out, a, i: out3["a"][:, [1, 4]].sum(dim=(1, 2, 3)))
    finally:
        h.remove()
    torch.testing.assert_close(e.extras["cam"], gradcam_ref(A, g), rtol=1e-5, atol=1e-6)
    assert e.targets.tolist() == [-1, -1, -1]

    # chosen neurons (channel, row, col), the module given directly, with Grad-CAM++
    pos = [(0, 1, 2), (5, 6, 7), (5, 0, 0)]
    e = sk.explain(tiny_cnn, x, "gradcampp", layer=LAYER, target=sk.Units(tiny_cnn.features[3], positions=pos))
    hh = tiny_cnn.features[3].register_forward_hook(lambda m, i, o: out3.__setitem__("a", o.clone()))
    try:
        A, g = layer_and_grad(tiny_cnn, LAYER, x,
                              lambda out, a, i: sum(out3["a"][:, c, r, q] for c, r, q in pos))
    finally:
        hh.remove()
    torch.testing.assert_close(e.extras["cam"], gradcampp_ref(A, g, g * g, g ** 3), rtol=1e-5, atol=1e-6)


def test_unit_target_with_a_gradient_method(tiny_cnn, x):
    e = sk.explain(tiny_cnn, x, "gradient", target=sk.Units("features.2", channels=[2], positions=[(1, 3, 4)]))
    m = copy.deepcopy(tiny_cnn)
    store = {}
    h = m.features[2].register_forward_hook(lambda mod, i, o: store.__setitem__("a", o.clone()))
    try:
        xr = x.clone().requires_grad_(True)
        m(xr)
        s = store["a"][:, 2].sum(dim=(1, 2)) + store["a"][:, 1, 3, 4]
        ref, = torch.autograd.grad(s.sum(), xr)
    finally:
        h.remove()
    torch.testing.assert_close(e.attributions, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.scores, s.detach(), rtol=1e-5, atol=1e-6)


def test_unit_and_channel_errors(tiny_cnn, x):
    with pytest.raises(ValueError, match="channels"):
        sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, channels=[6])
    with pytest.raises(TypeError, match="channels"):
        sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, channels=1)
    with pytest.raises(ValueError, match="positions"):
        sk.explain(tiny_cnn, x, "gradient", target=sk.Units("features.2", positions=[(0, 16, 0)]))
    with pytest.raises(ValueError, match="channels"):
        sk.explain(tiny_cnn, x, "gradient", target=sk.Units("features.2", channels=[9]))
    with pytest.raises(ValueError, match="channels"):
        sk.Units("features.2")
    with pytest.raises(TypeError, match="positions"):
        sk.Units("features.2", positions=[(0, 1)])
    with pytest.raises(ValueError, match="features.3"):
        sk.explain(tiny_cnn, x, "gradient", target=sk.Units("feature.3", channels=[0]))
    with pytest.raises(ValueError, match="Units"):
        _ = sk.Units("features.3", channels=[0]).layers  # a name needs explain() to resolve it
    with pytest.raises(ValueError, match="does not depend on layer"):  # units upstream of the CAM layer
        sk.explain(tiny_cnn, x, "gradcam", layer=LAYER, target=sk.Units("features.0", channels=[0]))
    with pytest.raises(ValueError, match="alpha_numerator"):
        sk.explain(tiny_cnn, x, "smoothgradcampp", alpha_numerator="d3")


# ---- layers ----------------------------------------------------------------------------------

def test_unknown_layer_lists_close_candidates(tiny_cnn, x):
    with pytest.raises(ValueError, match=r"close candidates: .*features\.2"):
        sk.explain(tiny_cnn, x, "gradcam", layer="feature.2")
    with pytest.raises(TypeError, match="layer"):
        sk.explain(tiny_cnn, x, "gradcam", layer=3)


class PoolThenConvHead(nn.Module):
    """Conv features, global pool, then a 1x1 conv classifier (4-D but not spatial)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        return self.head(self.pool(torch.tanh(self.body(x)))).flatten(1)


def test_automatic_layer_is_last_spatial_module_before_pooling(tiny_cnn, x):
    e = sk.explain(tiny_cnn, x, "gradcam")
    assert e.extras["layer"] == "features.4"
    torch.testing.assert_close(e.attributions, sk.explain(tiny_cnn, x, "gradcam", layer="features.4").attributions)
    m = _init(PoolThenConvHead(), 3)
    e = sk.explain(m, x, "gradcampp")
    assert e.extras["layer"] == "body.2"
    assert e.extras["cam"].shape == (3, 1, 8, 8)


# ---- model state, hooks, modes -------------------------------------------------------------------

class Boom(Exception):
    pass


def test_no_hooks_left_after_any_call_failing_ones_included(tiny_cnn, x):
    user = tiny_cnn.features[2].register_forward_hook(lambda m, i, o: None)  # the user's own hook survives
    before = model_state(tiny_cnn)
    for meth in ("gradcam", "gradcampp", "smoothgradcampp"):
        sk.explain(tiny_cnn, x, meth, n_samples=2) if meth == "smoothgradcampp" else sk.explain(tiny_cnn, x, meth)
        assert_same_state(before, model_state(tiny_cnn))

    def bad_score(outputs):
        raise Boom

    class BadUnit:
        layers = (tiny_cnn.features[3],)

        def score(self, outputs, captures):
            raise Boom

    for kwargs in ({"channels": [99]}, {"target": bad_score}, {"target": BadUnit()},
                   {"target": sk.Units("features.3", positions=[(0, 99, 0)])}):
        for meth in ("gradcam", "smoothgradcampp"):
            extra = {"n_samples": 2} if meth == "smoothgradcampp" else {}
            with pytest.raises((Boom, ValueError)):
                sk.explain(tiny_cnn, x, meth, layer=LAYER, **kwargs, **extra)
            assert_same_state(before, model_state(tiny_cnn))
    user.remove()


def test_frozen_no_grad_and_train_mode(tiny_cnn, x):
    ref = sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER, n_samples=3).attributions
    frozen = copy.deepcopy(tiny_cnn)
    for p in frozen.parameters():
        p.requires_grad_(False)
    st = model_state(frozen)
    torch.testing.assert_close(sk.explain(frozen, x, "smoothgradcampp", layer=LAYER, n_samples=3).attributions, ref)
    assert_same_state(st, model_state(frozen))
    with torch.no_grad():
        torch.testing.assert_close(sk.explain(tiny_cnn, x, "smoothgradcampp", layer=LAYER,
                                              n_samples=3).attributions, ref)
    with torch.inference_mode():
        xi = x.clone()
    torch.testing.assert_close(sk.explain(tiny_cnn, xi, "smoothgradcampp", layer=LAYER, n_samples=3).attributions,
                               ref)
    trained = copy.deepcopy(tiny_cnn).train()
    st = model_state(trained)
    torch.testing.assert_close(sk.explain(trained, x, "smoothgradcampp", layer=LAYER, n_samples=3).attributions, ref)
    assert trained.training and trained.features[1].training
    assert_same_state(st, model_state(trained))  # BN running stats untouched


def test_unit_scores_are_read_before_a_following_inplace_relu(tiny_cnn, x):
    # features.3 is followed by ReLU(inplace=True): the captured conv output must stay pre-ReLU
    e = sk.explain(tiny_cnn, x, "gradient", target=sk.Units("features.3", channels=[0, 1]))
    with torch.no_grad():
        pre = tiny_cnn.features[:4](x)
    assert (pre[:, :2] < 0).any()
    torch.testing.assert_close(e.scores, pre[:, :2].sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "gradient", "gradient_x_input"])
def test_predicted_resolved_in_the_single_pass(tiny_cnn, x, method, monkeypatch):
    """A class target costs one forward (the gradient pass itself), with the separate-forward path's result."""
    from saliencekit.methods.base import REGISTRY

    sk.explain(tiny_cnn, x, method)  # warm the automatic-layer cache (its trace is a forward too)
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        e = sk.explain(tiny_cnn, x, method, batch_size=2)
    finally:
        h.remove()
    assert sum(calls) == x.shape[0]  # every image forwarded exactly once
    with torch.no_grad():
        logits = tiny_cnn(x)
    torch.testing.assert_close(e.targets, logits.argmax(1))
    explicit = sk.explain(tiny_cnn, x, method, target=logits.argmax(1), batch_size=2)
    monkeypatch.setattr(REGISTRY[method], "clean_pass", False)
    ref = sk.explain(tiny_cnn, x, method, target="predicted", batch_size=2)  # the separate-forward path
    for other in (explicit, ref):
        torch.testing.assert_close(e.attributions, other.attributions)
        torch.testing.assert_close(e.scores, other.scores)
        torch.testing.assert_close(e.targets, other.targets)
    torch.testing.assert_close(e.scores, logits.gather(1, logits.argmax(1)[:, None])[:, 0])
    prob = sk.explain(tiny_cnn, x, method, score="softmax")
    torch.testing.assert_close(prob.scores, torch.softmax(logits, 1).max(1).values)


def test_smoothgradcampp_resolves_the_class_in_its_clean_pass(tiny_cnn, x, monkeypatch):
    """The clean activation pass also picks the class: n + n * samples forwards, and the noisy rows
    keep the clean class (a noisy argmax never re-picks it)."""
    from saliencekit.methods.base import REGISTRY

    sk.explain(tiny_cnn, x, "smoothgradcampp", n_samples=2)  # warm the automatic-layer cache
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        e = sk.explain(tiny_cnn, x, "smoothgradcampp", n_samples=5, noise_level=0.5, seed=3)
    finally:
        h.remove()
    assert sum(calls) == x.shape[0] * (1 + 5)
    monkeypatch.setattr(REGISTRY["smoothgradcampp"], "clean_pass", False)
    ref = sk.explain(tiny_cnn, x, "smoothgradcampp", n_samples=5, noise_level=0.5, seed=3)
    torch.testing.assert_close(e.attributions, ref.attributions)
    torch.testing.assert_close(e.targets, ref.targets)
    torch.testing.assert_close(e.scores, ref.scores)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "smoothgradcampp"])
def test_trunk_before_the_layer_records_no_graph(tiny_cnn, x, method):
    """Differentiating to a layer needs no graph before it: the input does not require grad and
    the modules before the layer produce tensors without a grad_fn. (The maps are checked against
    the references above, which differentiate through the whole network.)"""
    seen = []
    first = tiny_cnn.features[0]
    h = first.register_forward_hook(
        lambda m, inp, out: seen.append((inp[0].requires_grad, out.grad_fn is None)) if torch.is_grad_enabled()
        else None)
    try:
        e = sk.explain(tiny_cnn, x, method, layer=LAYER, **({"n_samples": 3} if method == "smoothgradcampp" else {}))
    finally:
        h.remove()
    assert seen and all(not req and no_fn for req, no_fn in seen)
    assert e.attributions.abs().sum() > 0
