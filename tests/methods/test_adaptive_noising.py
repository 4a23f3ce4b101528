"""SmoothTaylor adaptive noising follows the search of Goh et al. 2021 (methods/adaptive.py)."""

import numpy as np
import pytest
import torch
from conftest import assert_same_state, model_state

import saliencekit as sk
from saliencekit.metrics.total_variation import total_variation


def _reference(a, s0, lr=0.1, max_iter=20, patience=3, decay=0.9):
    """The search written out for one image: (best sigma, [(sigma, value, accepted)])."""
    s, v = s0, a(s0)
    trace = [(s0, v, True)]
    fails = it = 0
    while it < max_iter and fails < patience:
        t = abs(s + lr)
        at = a(t)
        if at <= v:
            trace.append((t, at, True))
            s, v, fails, it = t, at, 0, it + 1
            continue
        trace.append((t, at, False))
        t = abs(s - lr)
        at = a(t)
        if at <= v:
            trace.append((t, at, True))
            s, v, fails = t, at, 0
        else:
            trace.append((t, at, False))
            lr *= decay
            fails += 1
        it += 1
    return s, trace


def _quad(target):
    def a(sig):
        return (float(np.float32(sig)) - target) ** 2
    return a


@pytest.mark.parametrize("target", [0.37, 2.5, 0.0])
def test_trace_follows_rules(linear_model, target):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def objective(attr, sigma):  # cheap objective: depends on sigma only
        return (sigma.double() - target) ** 2

    before = model_state(linear_model)
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=2, objective=objective)
    assert_same_state(before, model_state(linear_model))
    for i in range(2):
        s0 = float(x[i].abs().mean())
        best, trace = _reference(_quad(target), s0)
        got = e.extras["objective_trace"][i]
        assert len(got) == len(trace)
        for (gs, gv, ga), (rs, rv, ra) in zip(got, trace):
            assert gs == pytest.approx(rs, abs=1e-6) and gv == pytest.approx(rv, abs=1e-6) and ga == ra
        assert float(e.extras["sigma"][i]) == pytest.approx(best, abs=1e-6)
    # the map is SmoothTaylor at the chosen sigma, with the same noise
    for i in range(2):
        f = sk.explain(linear_model, x, "smoothtaylor", noise_scale=float(e.extras["sigma"][i]), n_samples=2)
        torch.testing.assert_close(e.attributions[i], f.attributions[i])


def test_at_most_twenty_iterations(linear_model):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    s0 = float(x.abs().mean())
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=lambda attr, sig: -sig.double())  # always better upwards
    tr = e.extras["objective_trace"][0]
    assert len(tr) == 21 and all(t[2] for t in tr)
    assert float(e.extras["sigma"][0]) == pytest.approx(s0 + 2.0, abs=1e-5)


def test_stops_after_three_failures(linear_model):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    s0 = float(x.abs().mean())
    # the start is the minimum: every trial is worse -> 3 failures (6 trials), lr shrinks by 0.9 each time
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=lambda attr, sig: (sig.double() - s0) ** 2 + 1.0)
    tr = e.extras["objective_trace"][0]
    assert len(tr) == 7 and not any(t[2] for t in tr[1:])
    steps = [abs(tr[k][0] - s0) for k in range(1, 7)]
    np.testing.assert_allclose(steps, [0.1, 0.1, 0.09, 0.09, 0.081, 0.081], rtol=1e-4)
    assert float(e.extras["sigma"][0]) == pytest.approx(s0, abs=1e-6)


def test_autvc_objective_trace_values(tiny_cnn, images):
    x = images[:1]
    e = sk.explain(tiny_cnn, torch.nn.functional.interpolate(x, size=32), "smoothtaylor", noise_scale="adaptive",
                   n_samples=3, objective="autvc", adaptive_options={"max_iter": 2})
    xx = torch.nn.functional.interpolate(x, size=32)
    for s, v, _ in e.extras["objective_trace"][0][:3]:
        f = sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale=s, n_samples=3)
        ref = total_variation(f.attributions.sum(1))["autvc"][0]
        assert v == pytest.approx(float(ref), rel=1e-4)
    with pytest.raises(TypeError, match="adaptive_options"):
        sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale="adaptive", adaptive_options={"nope": 1})
    with pytest.raises(ValueError, match="objective"):
        sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale="adaptive", objective="bogus")
