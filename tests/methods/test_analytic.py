"""Analytic cases: results known in closed form (SmoothGrad and Integrated Gradients on linear and quadratic models)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import saliencekit as sk


class Quadratic(nn.Module):
    """f_c(x) = a_c * sum(x^2): g_c(z) = 2 a_c z."""

    def __init__(self, a=(0.7, -1.3)):
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=torch.float64))

    def forward(self, x):
        return (x * x).flatten(1).sum(1, keepdim=True) * self.a.to(x.dtype)


class Smooth(nn.Module):
    """A smooth nonlinear tiny model (tanh / softplus): the IG integrand is analytic."""

    def __init__(self, n_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)

    def forward(self, x):
        return self.fc(nn.functional.softplus(torch.tanh(self.conv(x)) * 2).flatten(1))


def _linear(dtype=torch.float64):
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m.to(dtype).eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_smoothgrad_of_linear_model_is_its_gradient_and_vargrad_is_zero(x):
    m = _linear()
    t = torch.tensor([2, 0])
    w = m[1].weight.detach()[t].view_as(x)
    mean = sk.explain(m, x, "smoothgrad", target=t, n_samples=9, noise_level=0.3).attributions
    var = sk.explain(m, x, "smoothgrad", target=t, n_samples=9, noise_level=0.3, estimator="var").attributions
    sq = sk.explain(m, x, "smoothgrad", target=t, n_samples=9, noise_level=0.3, estimator="square").attributions
    torch.testing.assert_close(mean, w, rtol=1e-12, atol=1e-12)
    assert var.abs().max() < 1e-12
    torch.testing.assert_close(sq, w * w, rtol=1e-12, atol=1e-12)


def test_smoothgrad_linear_model_float32():
    m = _linear(torch.float32)
    xx = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    e = sk.explain(m, xx, "smoothgrad", target=1, n_samples=5)
    torch.testing.assert_close(e.attributions[0], m[1].weight.detach()[1].view(3, 6, 6), rtol=1e-6, atol=1e-6)
    v = sk.explain(m, xx, "smoothgrad", target=1, n_samples=5, estimator="var").attributions
    assert v.abs().max() < 1e-5


@pytest.mark.parametrize("cls", [0, 1])
def test_smoothtaylor_quadratic_averages_to_minus_2_a_sigma2(x, cls):
    """(x - z) * 2a z with z = x + s*eps has expectation -2 a s^2 per element.

    The per-element term t = -2 a s x eps - 2 a s^2 eps^2 has variance 4 a^2 s^2 (x^2 + 2 s^2);
    the mean over D elements and N samples therefore has standard error
    sqrt(mean(4 a^2 s^2 (x^2 + 2 s^2)) / (N D)); we allow 5 of them.
    """
    m = Quadratic()
    a = float(m.a[cls])
    s, n = 0.4, 150
    e = sk.explain(m, x, "smoothtaylor", target=cls, n_samples=n, noise_scale=s, seed=7)
    d = x[0].numel()
    for i in range(x.shape[0]):
        got = e.attributions[i].mean().item()
        expect = -2 * a * s * s
        se = math.sqrt((4 * a * a * s * s * (x[i] ** 2 + 2 * s * s)).mean().item() / (n * d))
        assert abs(got - expect) < 5 * se, (got, expect, se)
    # and the per-element maps differ from the expectation only by sampling noise of that size
    assert (e.attributions - (-2 * a * s * s)).abs().mean() < 1.0


def test_smoothtaylor_noise_percent_sets_sigma(x):
    m = Quadratic()
    e = sk.explain(m, x, "smoothtaylor", target=0, n_samples=4, noise_percent=10)
    flat = x.flatten(1)
    torch.testing.assert_close(e.extras["sigma"].double(), 0.1 * (flat.amax(1) - flat.amin(1)))


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid",
                                  "gausslegendre"])
def test_ig_delta_shrinks_with_steps(x, rule):
    m = Smooth().double().eval()
    deltas = []
    for n in ((10, 100, 300) if rule == "gausslegendre" else (10, 100, 1000)):
        e = sk.explain(m, x, "integrated_gradients", target=1, n_steps=n, rule=rule, baseline="zeros",
                       batch_size=1000)
        deltas.append(e.delta.abs())
    d10, d100, d1000 = deltas
    if rule == "gausslegendre":  # spectral convergence: already tiny at 10 steps
        assert (d100 < 1e-9).all() and (deltas[2] < 1e-9).all()
        return
    assert (d100 < d10).all() and (d1000 < d100).all()
    # first-order rules: error ~ 1/n; second-order (middle, trapezoid): ~ 1/n^2
    factor = 50 if rule in ("riemann_right", "riemann_left") else 5000
    assert (d1000 * factor < d10).all(), (rule, d10, d1000)


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid",
                                  "gausslegendre"])
def test_ig_delta_zero_for_linear_model(x, rule):
    m = _linear()
    b = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    e = sk.explain(m, x, "integrated_gradients", target=3, n_steps=7, rule=rule, baseline=b)
    assert e.delta.abs().max() < 1e-10
    # and IG of a linear model is (x - b) * w exactly
    torch.testing.assert_close(e.attributions, (x - b) * m[1].weight.detach()[3].view(1, 3, 6, 6),
                               rtol=1e-10, atol=1e-12)


def test_ig_delta_is_completeness_error(x):
    m = Smooth().double().eval()
    b = torch.full_like(x, 0.25)
    e = sk.explain(m, x, "integrated_gradients", target=[0, 2], n_steps=12, baseline=b)
    with torch.no_grad():
        fx = m(x)[[0, 1], [0, 2]]
        fb = m(b)[[0, 1], [0, 2]]
    torch.testing.assert_close(e.delta, e.attributions.flatten(1).sum(1) - (fx - fb), rtol=1e-9, atol=1e-12)
    # completeness: with enough steps sum(attr) = f(x) - f(b)
    e2 = sk.explain(m, x, "integrated_gradients", target=[0, 2], n_steps=64, baseline=b, rule="gausslegendre")
    torch.testing.assert_close(e2.attributions.flatten(1).sum(1), fx - fb, rtol=1e-8, atol=1e-10)


def test_ig_uniform_baseline_completeness_is_against_mean_baseline_score(x):
    """With several uniform baseline draws the delta compares with the mean f over the draws."""
    m = _linear()
    e = sk.explain(m, x, "integrated_gradients", target=0, n_steps=5, baseline="uniform", baseline_draws=3)
    assert e.delta.abs().max() < 1e-10


def test_ig_black_baseline_is_normalised_zero_pixels(x):
    m = _linear()
    pp = sk.Preprocessing()
    e = sk.explain(m, x, "integrated_gradients", target=1, n_steps=3, baseline="black", preprocessing=pp)
    black = pp.normalize(torch.zeros_like(x))
    torch.testing.assert_close(e.attributions, (x - black) * m[1].weight.detach()[1].view(1, 3, 6, 6),
                               rtol=1e-10, atol=1e-12)
