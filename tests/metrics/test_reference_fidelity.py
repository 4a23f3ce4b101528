"""The metrics follow the reference code of their papers: the allegiance occlusion count
(Llorente et al.), the AUPC median draw and the scipy < 1.11 Simpson rule of the SmoothTaylor
authors (Goh et al.). Each expectation is written out by hand or computed independently here."""

import numpy as np
import pytest
import torch
from conftest import aupc_windows_loop
from scipy.integrate import simpson as scipy_simpson

from saliencekit.core import noise
from saliencekit.metrics.allegiance import occlusion_counts, occlusion_masks
from saliencekit.metrics.aupc import aupc, median_draw
from saliencekit.metrics.scoring import integrate, simpson_avg
from saliencekit.metrics.total_variation import total_variation

# ---- allegiance: occlude the round(p * N) highest pixels, strictly above the threshold, zeros kept ----

# 10 values; descending: 5, 4, 3, 3, 2, 1, 0.5, 0, 0, -1 (indices 0..9)
HAND_MAP = torch.tensor([[5.0, 3.0, 3.0, 0.0, -1.0],
                         [1.0, 0.0, 2.0, 4.0, 0.5]])
# p -> (index round(p * 10), threshold = sorted[index], occluded pixels written out)
HAND = {
    0.0: (0, 5.0, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]),
    # 0.05 * 10 = 0.5 rounds half to even -> index 0 (half-up would give index 1 and occlude the 5)
    0.05: (0, 5.0, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]),
    0.2: (2, 3.0, [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]),
    # index 3: the threshold is 3, tied with index 2: both 3s are kept, 2 pixels instead of 3
    0.3: (3, 3.0, [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]),
    0.5: (5, 1.0, [[1, 1, 1, 0, 0], [0, 0, 1, 1, 0]]),
    0.7: (7, 0.0, [[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]]),
    # threshold -1: zeros are above it but never occluded
    0.9: (9, -1.0, [[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]]),
    # p = 1: every non-zero pixel, the negative one included
    1.0: (10, None, [[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]]),
}


def test_occlusion_hand_worked_ties_zeros_and_rounding():
    fr = sorted(HAND)
    assert occlusion_counts(10, fr) == [HAND[p][0] for p in fr]
    m = occlusion_masks(HAND_MAP[None], fr)[0]
    for k, p in enumerate(fr):
        assert m[k].int().tolist() == HAND[p][2], p
    # a B x 1 x H x W batch of two maps gives each its own threshold
    both = torch.stack([HAND_MAP, -HAND_MAP])
    m2 = occlusion_masks(both, [0.2])
    assert m2[0, 0].int().tolist() == HAND[0.2][2]
    # negated: descending 1, 0, 0, -0.5, -1, ... index 2 -> threshold 0: only the 1 (from -(-1))
    assert m2[1, 0].int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]


def test_occlusion_counts_on_a_224_map_are_round_p_n():
    n = 224 * 224
    g = torch.Generator().manual_seed(0)
    values = (torch.randperm(n, generator=g) + 1).float().view(1, 224, 224)  # distinct, non-zero
    fr = [0.03, 0.07, 0.6, 0.8]
    counts = occlusion_masks(values, fr)[0].reshape(len(fr), -1).sum(1).tolist()
    assert counts == [1505, 3512, 30106, 40141]  # round(1505.28), round(3512.32), round(30105.6), round(40140.8)
    assert counts == [round(p * n) for p in fr]
    # and they are the highest pixels
    m = occlusion_masks(values, fr)[0].reshape(len(fr), -1)
    for k, c in enumerate(counts):
        assert bool((values.reshape(-1)[m[k]] > n - c).all())


def test_occlusion_rejects_fractions_outside_0_1():
    with pytest.raises(ValueError, match="fractions"):
        occlusion_masks(torch.rand(1, 4, 4), [1.5])


# ---- AUPC: the lower middle draw -------------------------------------------------------------------


def test_median_draw_lower_middle_first_index():
    s = torch.tensor([
        [3.0, 1.0, 2.0, 4.0],    # median 2.5: draws 0 (3) and 2 (2) equally close; the lower middle is draw 2
        [2.0, 5.0, 2.0, 1.0],    # sorted 1, 2, 2, 5: lower middle 2, first at draw 0
        [4.0, 3.0, 1.0, 3.0],    # sorted 1, 3, 3, 4: lower middle 3, first at draw 1
        [7.0, 7.0, 7.0, 7.0],
    ])
    assert median_draw(s).tolist() == [2, 0, 1, 0]
    odd = torch.tensor([[4.0, 1.0, 3.0, 3.0, 9.0], [9.0, 8.0, 7.0, 6.0, 5.0]])
    assert median_draw(odd).tolist() == [2, 2]  # the true median, first index among equal values
    # with an odd count it is the draw the authors keep: first with the smallest |score - median|
    for row in odd:
        med = np.median(row.numpy())
        assert int(median_draw(row[None])[0]) == int(np.argmin(np.abs(row.numpy() - med)))


def _curve_loop(model, img, sal, cls, w, regions, draws, seed, iid, keep_rule):
    """The AUPC curve written out, one forward per draw; ``keep_rule(scores)`` picks the kept draw."""
    cur = img.clone()
    with torch.no_grad():
        y0 = model(cur[None])[0, cls].item()
    ys, picked = [y0], []
    for r, (rr, cc) in enumerate(aupc_windows_loop(sal.numpy(), w, regions)):
        pat = noise.uniform((draws, 3, w, w), seed, iid, r, stream=noise.STREAM_METRIC)
        scores = []
        for d in range(draws):
            t = cur.clone()
            t[:, rr:rr + w, cc:cc + w] = pat[d]
            with torch.no_grad():
                scores.append(model(t[None])[0, cls].item())
        keep = keep_rule(scores)
        picked.append((scores, keep))
        cur[:, rr:rr + w, cc:cc + w] = pat[keep]
        ys.append(float(np.mean(scores)))
    return np.array(ys) / abs(y0), picked


def test_aupc_keeps_the_lower_of_two_middle_draws(tiny_cnn, images):
    sal = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    w, regions, draws, seed, ids = 3, 4, 2, 3, [11, 12, 13]
    res = aupc(tiny_cnn, images, sal, target=[0, 1, 2], window=w, regions=regions, draws=draws, seed=seed,
               image_ids=ids, return_curves=True)
    lower_differs = False
    for i in range(3):
        lower = lambda s: s.index(sorted(s)[(len(s) - 1) // 2])  # noqa: E731
        first_closest = lambda s: int(np.argmin(np.abs(np.array(s) - np.median(s))))  # noqa: E731  (old rule)
        ref, picked = _curve_loop(tiny_cnn, images[i], sal[i], i, w, regions, draws, seed, ids[i], lower)
        old, _ = _curve_loop(tiny_cnn, images[i], sal[i], i, w, regions, draws, seed, ids[i], first_closest)
        np.testing.assert_allclose(res["curves"][i].numpy(), ref, rtol=1e-4, atol=1e-5)
        # with two draws both are exactly as close to the median: the old rule kept draw 0
        assert all(k == (0 if s[0] <= s[1] else 1) for s, k in picked)
        lower_differs |= not np.allclose(ref, old, rtol=1e-6, atol=1e-7)
    assert lower_differs  # the case exercises the tie: the old choice gives other curves


# ---- Simpson's rule of scipy < 1.11 (even="avg") ----------------------------------------------------


def _simpson_avg_6(y):
    """scipy < 1.11 simps(y, dx=1) for 6 points, written out."""
    y0, y1, y2, y3, y4, y5 = y
    first = (y0 + 4 * y1 + 2 * y2 + 4 * y3 + y4) / 3 + (y4 + y5) / 2    # Simpson on 0..4, trapezoid on 4..5
    last = (y0 + y1) / 2 + (y1 + 4 * y2 + 2 * y3 + 4 * y4 + y5) / 3     # trapezoid on 0..1, Simpson on 1..5
    return (first + last) / 2


def test_simpson_avg_six_points_written_out():
    y = [1.0, 0.8, 0.7, 0.75, 0.5, 0.4]
    assert float(simpson_avg(torch.tensor(y, dtype=torch.float64))) == pytest.approx(_simpson_avg_6(y), rel=1e-12)
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(4, 6, generator=g, dtype=torch.float64)
    got = simpson_avg(batch)
    for k in range(4):
        assert float(got[k]) == pytest.approx(_simpson_avg_6(batch[k].tolist()), rel=1e-12)
    # not today's scipy rule for even counts (Cartwright's correction on the last interval)
    assert abs(float(integrate(torch.tensor(y, dtype=torch.float64), "simpson")) - _simpson_avg_6(y)) > 1e-4
    # four points: (S(0..2) + T(2..3) + T(0..1) + S(1..3)) / 2; two: the trapezoid
    a, b, c, d = 0.3, 1.1, 0.2, 0.9
    four = ((a + 4 * b + c) / 3 + (c + d) / 2 + (a + b) / 2 + (b + 4 * c + d) / 3) / 2
    f64 = torch.float64
    assert float(simpson_avg(torch.tensor([a, b, c, d], dtype=f64))) == pytest.approx(four, rel=1e-12)
    assert float(simpson_avg(torch.tensor([a, b], dtype=f64))) == pytest.approx((a + b) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="y"):
        simpson_avg(torch.tensor([a]))


def test_simpson_avg_odd_counts_are_plain_simpson():
    g = torch.Generator().manual_seed(2)
    for n in (3, 5, 7, 31):
        y = torch.rand(2, n, generator=g, dtype=torch.float64)
        ref = scipy_simpson(y.numpy(), dx=1, axis=-1)
        np.testing.assert_allclose(simpson_avg(y).numpy(), ref, rtol=1e-12)
        np.testing.assert_allclose(integrate(y, "simpson").numpy(), ref, rtol=1e-12)
    # cubic on 0..4: Simpson is exact (integral of t^3 = 64)
    t = torch.arange(5, dtype=torch.float64)
    assert float(simpson_avg(t ** 3)) == pytest.approx(64.0, rel=1e-12)


def test_autvc_of_a_224_map_with_the_authors_rule():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(1, 224, 224, generator=g)
    today = total_variation(maps)
    authors = total_variation(maps, integration="simpson_avg")
    atv = authors["atv"][0].double().tolist()
    assert len(atv) == 6  # 224, 150, 100, 67, 45, 30
    torch.testing.assert_close(authors["atv"], today["atv"])
    assert float(authors["autvc"][0]) == pytest.approx(_simpson_avg_6(atv), rel=1e-6)
    assert float(today["autvc"][0]) == pytest.approx(float(scipy_simpson(np.array(atv), dx=1)), rel=1e-6)
    with pytest.raises(ValueError, match="integration"):
        total_variation(maps, integration="trapezoid")
