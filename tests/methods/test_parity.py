"""Agreement with Captum and with explicit reference loops on the same model and input.

Everything runs in float64 (model and input) so disagreements cannot hide behind float32 noise;
one test repeats the plain-gradient parity in float32 at float32 precision.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from conftest import TinyCNN, _init

import saliencekit as sk
from saliencekit.core import noise

RULES = ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


@pytest.fixture
def cnn64():
    torch.manual_seed(0)
    return _init(TinyCNN(), 3).double()


@pytest.fixture
def x64():
    g = torch.Generator().manual_seed(11)
    return torch.randn(3, 3, 12, 12, generator=g, dtype=torch.float64)


def _autograd(model, x, cls):
    """Reference: plain autograd of one class score per image, one image at a time."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        g, = torch.autograd.grad(model(xi)[0, int(cls[i])], xi)
        out.append(g[0])
    return torch.stack(out)


def test_attributions_keep_float64(cnn64, x64):
    e = sk.explain(cnn64, x64, "gradient")
    assert e.attributions.dtype == torch.float64
    assert e.attributions.shape == x64.shape


def test_gradient_matches_captum_saliency(cnn64, x64):
    t = torch.tensor([0, 3, 4])
    ours = sk.explain(cnn64, x64, "gradient", target=t).attributions
    ref = Saliency(cnn64).attribute(x64.clone(), target=t, abs=False)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours, _autograd(cnn64, x64, t).to(ours.dtype), rtol=1e-12, atol=1e-14)


def test_gradient_matches_captum_float32(tiny_cnn, images):
    ours = sk.explain(tiny_cnn, images, "gradient", target="predicted")
    ref = Saliency(tiny_cnn).attribute(images.clone(), target=ours.targets, abs=False)
    torch.testing.assert_close(ours.attributions, ref, rtol=1e-5, atol=1e-7)
    # "predicted" is the top-1 of the clean input
    with torch.no_grad():
        assert ours.targets.tolist() == tiny_cnn(images).argmax(1).tolist()


def test_gradient_x_input_matches_captum(cnn64, x64):
    ours = sk.explain(cnn64, x64, "gradient_x_input", target=2).attributions
    ref = InputXGradient(cnn64).attribute(x64.clone(), target=2)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline_kind", ["zeros", "tensor"])
def test_integrated_gradients_matches_captum(cnn64, x64, rule, baseline_kind):
    n = 16
    t = torch.tensor([1, 0, 4])
    if baseline_kind == "zeros":
        ours_b, cap_b = "zeros", torch.zeros_like(x64)
    else:
        cap_b = torch.randn(x64.shape, generator=torch.Generator().manual_seed(5), dtype=x64.dtype) * 0.3
        ours_b = cap_b
    e = sk.explain(cnn64, x64, "integrated_gradients", target=t, n_steps=n, rule=rule, baseline=ours_b)
    ref, ref_delta = IntegratedGradients(cnn64).attribute(
        x64.clone(), baselines=cap_b, target=t, n_steps=n, method=rule, return_convergence_delta=True)
    ref = ref.to(e.attributions.dtype)
    if rule == "riemann_trapezoid":
        # Captum's trapezoid puts nodes at linspace(0, 1, n) (spacing 1/(n-1)) but weights them
        # with 1/n (ends halved), so its weights sum to (n-1)/n. Ours is the textbook rule
        # (spacing and weights 1/(n-1)): exactly Captum's times n/(n-1).
        ref = ref * n / (n - 1)
        with torch.no_grad():
            fx = cnn64(x64).gather(1, t[:, None])[:, 0]
            fb = cnn64(cap_b).gather(1, t[:, None])[:, 0]
        ref_delta = ref.flatten(1).sum(1) - (fx - fb)
    # Captum builds its alphas with float32 linspace; ours are exact k/n: agree to ~1e-7 relative.
    torch.testing.assert_close(e.attributions, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(e.delta.to(ref_delta.dtype), ref_delta, rtol=1e-5, atol=1e-7)


def test_trapezoid_is_the_textbook_rule(cnn64, x64):
    """Explicit reference: (x - b) * sum_k w_k g(b + a_k (x - b)), a_k = k/(n-1), w = 1/(n-1), ends halved."""
    n = 5
    e = sk.explain(cnn64, x64, "integrated_gradients", target=0, n_steps=n, rule="riemann_trapezoid",
                   baseline="zeros")
    acc = torch.zeros_like(x64)
    for k in range(n):
        w = (0.5 if k in (0, n - 1) else 1.0) / (n - 1)
        acc += w * _autograd(cnn64, (k / (n - 1)) * x64, [0, 0, 0])
    torch.testing.assert_close(e.attributions, x64 * acc, rtol=1e-10, atol=1e-12)


# ---- SmoothGrad ------------------------------------------------------------------------------

def _linear64():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)).double().eval()
    return m


def test_smoothgrad_linear_model_equals_captum_noise_tunnel():
    """Distribution-free: for a linear model every noisy gradient is the weight row, so Captum's
    NoiseTunnel(Saliency) and ours both return it (mean), its square (square) and 0 (var),
    whatever noise each library draws."""
    m = _linear64()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 1])
    w = m[1].weight.detach()[t].view(2, 3, 6, 6)
    nt = NoiseTunnel(Saliency(m))
    for est, nt_type, expect in [("mean", "smoothgrad", w), ("square", "smoothgrad_sq", w * w),
                                 ("var", "vargrad", torch.zeros_like(w))]:
        ours = sk.explain(m, x, "smoothgrad", target=t, stdev=0.7, n_samples=6, estimator=est).attributions
        ref = nt.attribute(x.clone(), nt_type=nt_type, nt_samples=6, stdevs=0.7, target=t, abs=False)
        torch.testing.assert_close(ours, expect, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ref, expect, rtol=1e-9, atol=1e-12)


def _reference_smoothgrad(model, x, cls, seed, n, sigma, base="gradient", n_steps=None, rule=None):
    """Explicit loop over the same seeded noise the method draws (stream STREAM_SMOOTHGRAD)."""
    per = []
    for i in range(x.shape[0]):
        samples = []
        for j in range(n):
            eps = noise.normal(x.shape[1:], seed, i, j, stream=noise.STREAM_SMOOTHGRAD, dtype=x.dtype)
            z = x[i] + sigma[i] * eps
            if base == "gradient":
                a = _autograd(model, z[None], [cls[i]])[0]
            elif base == "gradient_x_input":
                a = z * _autograd(model, z[None], [cls[i]])[0]
            else:  # integrated gradients from a zero baseline to the noisy point
                from saliencekit.methods.paths import path_rule

                alphas, weights = path_rule(rule, n_steps)
                acc = torch.zeros_like(z)
                for al, w in zip(alphas, weights):
                    acc += w * _autograd(model, (al * z)[None], [cls[i]])[0]
                a = z * acc
            samples.append(a)
        per.append(torch.stack(samples))
    s = torch.stack(per)  # B x N x C x H x W
    return {"mean": s.mean(1), "square": (s * s).mean(1), "var": (s * s).mean(1) - s.mean(1) ** 2}


@pytest.mark.parametrize("estimator", ["mean", "square", "var"])
def test_smoothgrad_matches_explicit_loop(cnn64, x64, estimator):
    n, seed = 7, 3
    e = sk.explain(cnn64, x64, "smoothgrad", seed=seed, n_samples=n, estimator=estimator, noise_level=0.2)
    flat = x64.flatten(1)
    sigma = 0.2 * (flat.amax(1) - flat.amin(1))
    ref = _reference_smoothgrad(cnn64, x64, e.targets.tolist(), seed, n, sigma)[estimator]
    torch.testing.assert_close(e.attributions, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(e.extras["sigma"].to(sigma.dtype), sigma)


def test_smoothgrad_stdev_is_absolute(cnn64, x64):
    e = sk.explain(cnn64, x64, "smoothgrad", seed=1, n_samples=4, stdev=0.25)
    ref = _reference_smoothgrad(cnn64, x64, e.targets.tolist(), 1, 4, [0.25] * 3)["mean"]
    torch.testing.assert_close(e.attributions, ref, rtol=1e-9, atol=1e-12)


def test_smoothgrad_gradient_x_input_matches_explicit_loop(cnn64, x64):
    e = sk.explain(cnn64, x64, "smoothgrad", seed=2, n_samples=3, stdev=0.3, base="gradient_x_input",
                   estimator="square")
    ref = _reference_smoothgrad(cnn64, x64, e.targets.tolist(), 2, 3, [0.3] * 3, base="gradient_x_input")
    torch.testing.assert_close(e.attributions, ref["square"], rtol=1e-9, atol=1e-12)


def test_smoothgrad_over_integrated_gradients_matches_explicit_loop(cnn64, x64):
    e = sk.explain(cnn64, x64[:2], "smoothgrad", seed=4, n_samples=3, stdev=0.3, base="integrated_gradients",
                   n_steps=4, rule="riemann_middle", baseline="zeros")
    ref = _reference_smoothgrad(cnn64, x64[:2], e.targets.tolist(), 4, 3, [0.3] * 2,
                                base="integrated_gradients", n_steps=4, rule="riemann_middle")
    torch.testing.assert_close(e.attributions, ref["mean"], rtol=1e-9, atol=1e-12)


def test_smoothgrad_agrees_with_captum_in_distribution(tiny_cnn):
    """Different random streams, same distribution: with many samples the two estimates of
    E[g(x + eps)] agree within a few standard errors (per-element spread measured here)."""
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    n, sd = 400, 0.5
    ours = sk.explain(tiny_cnn, x, "smoothgrad", target=0, stdev=sd, n_samples=n, seed=0)
    var = sk.explain(tiny_cnn, x, "smoothgrad", target=0, stdev=sd, n_samples=n, seed=0, estimator="var")
    torch.manual_seed(0)
    ref = NoiseTunnel(Saliency(tiny_cnn)).attribute(x.clone(), nt_type="smoothgrad", nt_samples=n,
                                                    stdevs=sd, target=0, abs=False)
    se = (2 * var.attributions.clamp(min=0) / n).sqrt()  # std error of a difference of two means
    z = (ours.attributions - ref) / se.clamp(min=1e-12)
    assert z.abs().mean() < 1.5  # |N(0,1)| has mean 0.8
    assert (z.abs() > 5).float().mean() < 0.01
