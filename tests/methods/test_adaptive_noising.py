"""SmoothTaylor adaptive noising follows the search of the authors' code (Goh et al. 2021,
garygsw/smooth-taylor ``adapt_noise``; methods/adaptive.py).

The rule, per iteration: try |s + lr|; if worse (>) than A_cur try |s - lr|; move to the last sigma
tried either way; if the value reached is worse than A_cur it is a failure (lr *= decay while fewer
than ``patience`` = 3 in a row, the 4th in a row stops), else the failure count resets and the best
is updated when strictly lower; A_cur = the value reached; at most ``max_iter`` = 20 iterations.
"""

import pytest
import torch
from conftest import assert_same_state, model_state

import saliencekit as sk
from saliencekit.metrics.total_variation import total_variation

# A(sigma) for the hand-worked trace: a known function on the dyadic sigmas the search visits with
# sigma0 = 0.5, lr = 0.375 = 3/8 and decay = 0.5 (all exact in float32 and float64); any other
# sigma is a KeyError, i.e. the search visited a sigma the authors' rule does not.
TABLE = {0.5: 3.0, 0.875: 4.0, 0.125: 2.0, 0.25: 2.5, 0.4375: 2.5, 0.625: 2.0, 0.8125: 2.25,
         0.53125: 2.75, 0.34375: 2.75, 0.390625: 3.0, 0.296875: 3.0, 0.3203125: 3.5, 0.2734375: 3.5}

# [sigma, A, step, improved], worked out by hand from the rule above:
HAND_TRACE = [
    [0.5, 3.0, "start", True],       # s = 0.5 = mean|x|, A_cur = 3, best (0.5, 3), lr = 0.375
    # it 1: |0.5 + 0.375| = 0.875: 4 > 3 worse -> try |0.5 - 0.375| = 0.125: 2 <= 3, move; best (0.125, 2)
    [0.875, 4.0, "+", False], [0.125, 2.0, "-", True],
    # it 2: 0.5: 3 > 2 worse; |0.125 - 0.375| = 0.25 (reflected): 2.5 > 2 worse -> failure 1, but the
    # search still moves to 0.25 and A_cur = 2.5; lr = 0.1875
    [0.5, 3.0, "+", False], [0.25, 2.5, "-", False],
    # it 3: 0.4375: 2.5 <= A_cur 2.5 (a tie, and worse than the best 2): an improvement -> failures
    # reset to 0, move; the best stays (2.5 is not below 2)
    [0.4375, 2.5, "+", True],
    # it 4: 0.625: 2 <= 2.5 improvement; 2 ties the best 2 -> the best stays 0.125 (strictly lower only)
    [0.625, 2.0, "+", True],
    # it 5: 0.8125: 2.25 > 2; 0.4375: 2.5 > 2 -> failure 1 (after the reset), move to 0.4375, lr = 0.09375
    [0.8125, 2.25, "+", False], [0.4375, 2.5, "-", False],
    # it 6: 0.53125: 2.75 > 2.5; 0.34375: 2.75 > 2.5 -> failure 2, move, lr = 0.046875
    [0.53125, 2.75, "+", False], [0.34375, 2.75, "-", False],
    # it 7: 0.390625: 3 > 2.75; 0.296875: 3 > 2.75 -> failure 3, move, lr = 0.0234375
    [0.390625, 3.0, "+", False], [0.296875, 3.0, "-", False],
    # it 8: 0.3203125: 3.5 > 3; 0.2734375: 3.5 > 3 -> 4th consecutive failure: stop. Return the best, 0.125.
    [0.3203125, 3.5, "+", False], [0.2734375, 3.5, "-", False],
]
TABLE_OPTIONS = {"lr": 0.375, "decay": 0.5}


def _table_objective(record=None):
    def objective(attr, sigma):
        if record is not None:
            record.append((float(sigma[0]), attr[0].clone()))
        return torch.tensor([TABLE[float(s)] for s in sigma], dtype=torch.float64)
    return objective


def test_hand_worked_trace(linear_model):
    x = torch.full((1, 3, 8, 8), 0.5)       # mean|x| = 0.5: the default start
    before = model_state(linear_model)
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=2,
                   objective=_table_objective(), adaptive_options=TABLE_OPTIONS)
    assert_same_state(before, model_state(linear_model))
    assert e.extras["objective_trace"][0] == HAND_TRACE
    assert float(e.extras["sigma"][0]) == 0.125 and float(e.extras["objective_value"][0]) == 2.0
    # common noise: the map is SmoothTaylor at the chosen sigma with the fixed-sigma call's noise
    f = sk.explain(linear_model, x, "smoothtaylor", noise_scale=0.125, n_samples=2)
    torch.testing.assert_close(e.attributions, f.attributions)


def test_patience_counts_tolerated_failures(linear_model):
    x = torch.full((1, 3, 8, 8), 0.5)
    # patience 1: it 2 is failure 1 (tolerated), then it 3 improves; it 5 is failure 1, it 6 the 2nd: stop
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=_table_objective(), adaptive_options={**TABLE_OPTIONS, "patience": 1})
    assert e.extras["objective_trace"][0] == HAND_TRACE[:11]
    # patience 0: the first failure stops; max_iter 1 stops after iteration 1
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=_table_objective(), adaptive_options={**TABLE_OPTIONS, "patience": 0})
    assert e.extras["objective_trace"][0] == HAND_TRACE[:5]
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=_table_objective(), adaptive_options={**TABLE_OPTIONS, "max_iter": 1})
    assert e.extras["objective_trace"][0] == HAND_TRACE[:3]
    assert float(e.extras["sigma"][0]) == 0.125


def _approx_trace(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[2:] == w[2:]
        assert g[0] == pytest.approx(w[0], abs=1e-6) and g[1] == pytest.approx(w[1], abs=1e-7)


def test_default_lr_and_decay_batched(linear_model):
    """Two images searching together with the defaults (lr 0.1, decay 0.9), A = (sigma - 0.37)^2,
    max_iter 4; the images need different numbers of evaluations per iteration."""
    x = torch.cat([torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.3)])

    def objective(attr, sigma):
        return (sigma.double() - 0.37) ** 2

    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=2, objective=objective,
                   adaptive_options={"max_iter": 4})
    want0 = [[0.5, 0.0169, "start", True],
             [0.6, 0.0529, "+", False], [0.4, 0.0009, "-", True],     # it 1: best (0.4, 0.0009)
             [0.5, 0.0169, "+", False], [0.3, 0.0049, "-", False],   # it 2: failure, moves to 0.3 anyway
             [0.39, 0.0004, "+", True],                              # it 3: 0.0004 <= 0.0049: best (0.39)
             [0.48, 0.0121, "+", False], [0.30, 0.0049, "-", False]]  # it 4 (lr 0.09): failure; max_iter
    want1 = [[0.3, 0.0049, "start", True],
             [0.4, 0.0009, "+", True],                               # it 1
             [0.5, 0.0169, "+", False], [0.3, 0.0049, "-", False],   # it 2: failure, lr 0.09
             [0.39, 0.0004, "+", True],                              # it 3
             [0.48, 0.0121, "+", False], [0.30, 0.0049, "-", False]]  # it 4
    _approx_trace(e.extras["objective_trace"][0], want0)
    _approx_trace(e.extras["objective_trace"][1], want1)
    torch.testing.assert_close(e.extras["sigma"], torch.tensor([0.39, 0.39]))
    # each image alone (keyed by its id) searches and draws the same
    for i in range(2):
        a = sk.explain(linear_model, x[i:i + 1], "smoothtaylor", noise_scale="adaptive", n_samples=2,
                       objective=objective, adaptive_options={"max_iter": 4}, image_ids=[i])
        assert a.extras["objective_trace"][0] == e.extras["objective_trace"][i]
        torch.testing.assert_close(a.attributions[0], e.attributions[i])
        f = sk.explain(linear_model, x[i:i + 1], "smoothtaylor", noise_scale=float(e.extras["sigma"][i]),
                       n_samples=2, image_ids=[i])
        torch.testing.assert_close(e.attributions[i], f.attributions[0])


def test_at_most_max_iter_iterations(linear_model):
    x = torch.full((1, 3, 8, 8), 0.5)
    e = sk.explain(linear_model, x, "smoothtaylor", noise_scale="adaptive", n_samples=1,
                   objective=lambda attr, sig: -sig.double())  # always better upwards
    tr = e.extras["objective_trace"][0]
    assert len(tr) == 21 and all(t[2:] == ["+", True] for t in tr[1:])   # 20 iterations of one evaluation
    assert float(e.extras["sigma"][0]) == pytest.approx(2.5, abs=1e-6)


def _maps_by_sigma(record):
    out = {}
    for s, a in record:
        out.setdefault(s, []).append(a)
    return out


def test_common_noise_repeats_fresh_noise_is_new_and_reproducible(linear_model):
    x = torch.full((1, 3, 8, 8), 0.5)

    def run(noise, seed=0, batch_size=None, xx=x, ids=None):
        rec = []
        e = sk.explain(linear_model, xx, "smoothtaylor", noise_scale="adaptive", n_samples=3, seed=seed,
                       batch_size=batch_size, image_ids=ids, objective=_table_objective(rec),
                       adaptive_options={**TABLE_OPTIONS, "noise": noise})
        return e, rec

    e, rec = run("common")
    assert e.extras["objective_trace"][0] == HAND_TRACE
    maps = _maps_by_sigma(rec)
    # sigma 0.5 is evaluated at evaluations 0 and 3, sigma 0.4375 at 5 and 8: the same maps
    assert len(maps[0.5]) == 2 and len(maps[0.4375]) == 2
    assert torch.equal(maps[0.5][0], maps[0.5][1]) and torch.equal(maps[0.4375][0], maps[0.4375][1])

    ef, recf = run("fresh")
    assert ef.extras["objective_trace"][0] == HAND_TRACE    # the objective depends on sigma only
    mf = _maps_by_sigma(recf)
    assert not torch.allclose(mf[0.5][0], mf[0.5][1]) and not torch.allclose(mf[0.4375][0], mf[0.4375][1])
    assert not torch.allclose(mf[0.125][0], maps[0.125][0])
    # the returned map is the best evaluation's (evaluation 2, sigma 0.125), with its noise
    assert torch.equal(ef.attributions[0], recf[2][1])
    # reproducible from the seed, for any chunk size and batch composition; another seed differs
    again, rec2 = run("fresh", batch_size=1)
    torch.testing.assert_close(again.attributions, ef.attributions)
    for (s1, a1), (s2, a2) in zip(recf, rec2):
        assert s1 == s2
        torch.testing.assert_close(a1, a2)
    pair = torch.cat([torch.full((1, 3, 8, 8), -0.5), x])    # the image second in a batch, id 0
    ep, _ = run("fresh", batch_size=4, xx=pair, ids=[7, 0])
    torch.testing.assert_close(ep.attributions[1], ef.attributions[0])
    other, _ = run("fresh", seed=1)
    assert not torch.allclose(other.attributions, ef.attributions)


def test_autvc_objective_trace_values(tiny_cnn, images):
    xx = torch.nn.functional.interpolate(images[:1], size=32)
    e = sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale="adaptive",
                   n_samples=3, objective="autvc", adaptive_options={"max_iter": 2})
    tr = e.extras["objective_trace"][0]
    for s, v, _, _ in tr[:3]:
        f = sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale=s, n_samples=3)
        ref = total_variation(f.attributions.sum(1))["autvc"][0]
        assert v == pytest.approx(float(ref), rel=1e-4)
    best = min(range(len(tr)), key=lambda k: (tr[k][1], k))
    assert float(e.extras["sigma"][0]) == pytest.approx(tr[best][0], rel=1e-6)


def test_adaptive_options_are_checked(tiny_cnn, images):
    xx = images[:1]
    for opts, err, match in [({"nope": 1}, TypeError, "adaptive_options"),
                             ({"noise": "bogus"}, ValueError, r"adaptive_options\['noise'\]"),
                             ({"patience": -1}, ValueError, r"adaptive_options\['patience'\]"),
                             ({"patience": True}, TypeError, r"adaptive_options\['patience'\]"),
                             ({"decay": 0}, ValueError, r"adaptive_options\['decay'\]")]:
        with pytest.raises(err, match=match):
            sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale="adaptive", adaptive_options=opts)
    with pytest.raises(ValueError, match="objective"):
        sk.explain(tiny_cnn, xx, "smoothtaylor", noise_scale="adaptive", objective="bogus")
    doc = sk.list_methods(details=True)["smoothtaylor"]["doc"]
    assert "adaptive_options" in doc and '"fresh"' in doc
