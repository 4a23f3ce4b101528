"""I-GOS presets (issue #15): the AAAI code's schedule (``preset="aaai"``) and IGOS_pp's
(``preset="igos_pp"``) reproduced on analytic models whose traces are worked out by hand here.

The model ``Bump`` reads one number, z = mean(x), and has two logits [k1 z - k2 relu(z - t), 0], so
the explained (softmax) score is p(z) = sigmoid(k1 z - k2 relu(z - t)). With the baseline x~ = 0,
an input x = c everywhere and the mask as large as the input (no upsampling), every mask cell gets
the same gradient, the mask stays uniform (TV = 0) and the whole optimisation is a scalar m:
Phi(M) has z = m c, the path point s has z = (s/S) m c, and per cell

    d/dM_j [ (1/D) sum_s p((s/S) m c) ] = (1/D) sum_s p'((s/S) m c) (s/S) c / N,   N = cells,

with D = S (saliencekit, IGOS_pp) or D = 20 (the AAAI code's ``loss2/20.0``).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencekit as sk
from saliencekit.core import noise
from saliencekit.core.targets import ClassScore
from saliencekit.methods import igos as I
from saliencekit.methods.base import Context
from saliencekit.models import IDENTITY


class Bump(nn.Module):
    """logits [k1 z - k2 relu(z - t), 0] with z = mean(x) (floored at ``lo`` when given); records
    every forward's rows and whether autograd was on (the direction) or off (line search, F)."""

    def __init__(self, k1=8.0, k2=200.0, t=0.6, lo=None):
        super().__init__()
        self.k1, self.k2, self.t, self.lo = k1, k2, t, lo
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), x.detach().clone()))
        z = x.mean((1, 2, 3))
        if self.lo is not None:
            z = z.clamp(min=self.lo)
        logit = self.k1 * z - self.k2 * F.relu(z - self.t)
        return torch.stack([logit, torch.zeros_like(logit)], 1)

    def rows(self):
        return sum(x.shape[0] for _, x in self.calls)


def sig(v):
    return 1 / (1 + math.exp(-v))


def bump_p(z, k1=8.0, k2=200.0, t=0.6):
    return sig(k1 * z - k2 * max(z - t, 0.0))


def bump_dp(z, k1=8.0, k2=200.0, t=0.6):
    p = bump_p(z, k1, k2, t)
    return p * (1 - p) * (k1 - (k2 if z > t else 0.0))


def run(model, x, preset, *, T=15, S=4, l1=0.01, tv=20.0, seed=0, baseline=None, **over):
    cls = torch.zeros(x.shape[0], dtype=torch.long)
    ctx = Context(model=model, x=x, score=ClassScore(cls, "softmax"), classes=cls, clean_outputs=None, seed=seed,
                  batch_size=None, preprocessing=IDENTITY)
    side = x.shape[-1]
    base = torch.zeros_like(x) if baseline is None else baseline
    return I.run_igos(ctx, mask_hw=(side, side), iterations=T, ig_steps=S, l1=l1, tv=tv, tv_beta=2, baseline=base,
                      schedule=I.resolve_schedule(preset, **over))


def flat(c, n=1, side=7):
    return torch.full((n, 3, side, side), float(c))


FLOOR_AAAI = 200 * 0.2 ** 11   # 4.096e-6: the first step below 1e-5 from 200 (and from 1000: 1000 * 0.2**12)


# ---- the AAAI code's schedule -------------------------------------------------------------------

def test_aaai_unmoved_score_lambda1_schedule_floor_and_plain_objective():
    """c = 1: p(M = 1) = sigmoid(8 - 80) ~ 5e-32, but the path points s = 1, 2 (z = 0.25, 0.5 < t) have
    p' > 0, so d > 0. The plain F(M) ~ 0 and every candidate has F >= 0 > F(M) - 1e-4 a |d|^2: the
    Armijo test on F fails at 200, 40, ..., 2.048e-5 and the first step below 1e-5, 200 * 0.2**11 =
    4.096e-6, is taken after its evaluation: 12 evaluations of F, one forward each. The mask moves by
    4.096e-6 * 2.9e-4 (below float32's spacing at 1): p never moves, so lambda1 = 0.01 is divided by 10
    after iteration 7 (0-based; the test reads p(M_6)) and by 5 after iteration 12 (p(M_11)), and it
    stays divided: 0.01 for iterations 0..7, 0.001 for 8..12, 0.0002 for 13, 14."""
    model = Bump()
    r = run(model, flat(1.0), "aaai", noise=0.0)
    expected_l1 = [0.01] * 8 + [0.001] * 5 + [0.0002] * 2
    assert r.l1[0].tolist() == pytest.approx(expected_l1, rel=1e-6)
    assert r.step[0].tolist() == pytest.approx([FLOOR_AAAI] * 15, rel=1e-6)
    assert (r.step < 1e-5).all()  # not saliencekit's floor (1e-5 taken)
    assert torch.equal(r.masks, torch.ones_like(r.masks))
    assert (r.score[0] == r.score[0, 0]).all() and r.score[0, 0] < 1e-30
    # which objective the Armijo test evaluated: forwards with autograd = the direction (S rows per
    # iteration); without = F: 1 row for M_0, then 12 candidates of one row each per iteration
    # (the plain F of the taken candidate is the next base: no extra forward)
    grad_rows = sum(x.shape[0] for g, x in model.calls if g)
    plain_rows = [x.shape[0] for g, x in model.calls if not g]
    assert grad_rows == 15 * 4
    assert plain_rows == [1] + [1] * (15 * 12)
    assert model.rows() == 241
    # the plain candidates carry no noise and no path: z = m c with m = 1 - a d for a = 200 * 0.2**k
    d0 = sum(bump_dp(s / 4) * (s / 4) for s in range(1, 5)) / 20 / 49
    cand = [float(x.mean()) for g, x in model.calls if not g][1:13]
    assert cand == pytest.approx([1 - 200 * 0.2 ** k * d0 for k in range(12)], rel=0, abs=2e-7)


def test_aaai_moved_score_keeps_lambda1_and_the_first_step_by_hand():
    """c = 0.5: all path points and Phi(M) are below t, p = sigmoid(4 m) falls with m. Iteration 0 by
    hand: d0 = (1/20) sum_s 8 sigmoid'(4 s/4) (s/4) 0.5 / 49 (the AAAI divisor 20, not S = 4);
    F(1 - 200 d0) = sigmoid(4 (1 - 200 d0)) + 0.01 * 200 d0 < F(1) - 1e-4 * 200 * 49 d0**2, so the
    first step, 200, is taken: m1 = 1 - 200 d0. The score then falls by far more than 0.01: no
    lambda1 change at 7 or 12."""
    d0 = sum(8 * sig(4 * s / 4) * (1 - sig(4 * s / 4)) * (s / 4) * 0.5 for s in range(1, 5)) / 20 / 49
    f = lambda m: sig(4 * m) + 0.01 * (1 - m)
    assert f(1 - 200 * d0) < f(1) - 1e-4 * 200 * 49 * d0 ** 2  # the hand-worked Armijo test passes at 200
    one = run(Bump(), flat(0.5), "aaai", T=1, noise=0.0)
    assert one.step[0].tolist() == [200.0]
    assert one.masks.flatten().tolist() == pytest.approx([1 - 200 * d0] * 49, rel=1e-5)
    assert one.score[0, 1].item() == pytest.approx(sig(4 * (1 - 200 * d0)), rel=1e-5)

    r = run(Bump(), flat(0.5), "aaai", noise=0.0)
    assert r.l1[0].tolist() == pytest.approx([0.01] * 15, rel=1e-6)
    assert r.step[0, :6].tolist() == [200.0] * 6
    assert (r.score[0, 0] - r.score[0, 6:12]).abs().min() > 0.01


def test_aaai_score_moved_between_the_thresholds_only_the_second_change():
    """The score is floored at z = 0.4883: it falls from sigmoid(4) = 0.98201 to sigmoid(8 * 0.4883) =
    0.98028 and stays (|dp| = 0.0017): above 0.001 at iteration 7 (no / 10), below 0.01 at iteration
    12 (/ 5): lambda1 = 1e-6 for iterations 0..12, 2e-7 for 13, 14."""
    r = run(Bump(lo=0.4883), flat(0.5), "aaai", l1=1e-6, noise=0.0)
    moved = (r.score[0, 0] - r.score[0, 1:]).abs()
    assert (moved > 0.001).all() and (moved < 0.01).all()
    assert r.l1[0].tolist() == pytest.approx([1e-6] * 13 + [2e-7] * 2, rel=1e-6)


def test_aaai_lambda1_change_applies_to_the_next_armijo_base(monkeypatch):
    """The score is floored at z = 0.4964: it falls by 0.0005 (<= 0.001) in the first iteration and
    stays, while the L1 gradient moves the mask: lambda1 = 0.002 / 10 after iteration 7, / 5 after
    iteration 12. The AAAI code recomputes F(M) = p + lambda1 L1 + TV with the current lambda1 at
    every iteration: the Armijo base of iteration t is F(M_t) with lambda1_t (iteration 8: 0.0002)."""
    bases = []
    line_search = I.IGOS.line_search

    def spy(self, masks, d, f0, *args, **kwargs):
        bases.append((masks.clone(), f0.clone()))
        return line_search(self, masks, d, f0, *args, **kwargs)

    monkeypatch.setattr(I.IGOS, "line_search", spy)
    r = run(Bump(lo=0.4964), flat(0.5), "aaai", l1=0.002, noise=0.0)
    assert r.l1[0].tolist() == pytest.approx([0.002] * 8 + [0.0002] * 5 + [0.00004] * 2, rel=1e-6)
    moved = (r.score[0, 0] - r.score[0, 1:]).abs()
    assert (moved < 0.001).all() and (moved > 0.0004).all()
    assert r.masks.mean() < 0.995  # the mask did move: L1 > 0, so lambda1 matters in F
    assert len(bases) == 15
    for t, (m, f0) in enumerate(bases):
        want = r.score[0, t] + I.regulariser(m, r.l1[0, t], 20.0, 2)
        assert f0.item() == pytest.approx(want.item(), abs=3e-7), t


def test_aaai_lambda1_each_image_its_own_schedule():
    """One batch: image 0 unmoved (c = 1), image 1 moved (c = 0.5): the same lambda1 and steps as alone."""
    both = run(Bump(), torch.cat([flat(1.0), flat(0.5)]), "aaai", noise=0.0)
    for i, c in enumerate((1.0, 0.5)):
        alone = run(Bump(), flat(c), "aaai", noise=0.0)
        assert torch.equal(both.l1[i], alone.l1[0])
        assert torch.equal(both.step[i], alone.step[0])
        assert torch.equal(both.masks[i], alone.masks[0])
    assert both.l1[0, -1].item() == pytest.approx(0.0002) and both.l1[1, -1].item() == pytest.approx(0.01)


@pytest.mark.parametrize("T,checks", [(15, (7, 12)), (10, (5, 8)), (6, (3, 4)), (4, (2, 3)), (20, (10, 16))])
def test_aaai_lambda1_update_reads_the_lagged_score(T, checks):
    """``curve2 = [p0, p0, p1, p2, ...]`` in the AAAI code: at iteration t it tests p(M_{t-1})."""
    first, second = checks
    l1 = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # |p(M_k) - p(M_0)| per image and k >= 1, at the first check (t = int(T/2): <= 0.001 -> / 10) and the
    # second (t = int(T/1.25): <= 0.01 -> / 5). Image 0: unmoved through M_{t-1}, moved from M_t on ->
    # divided (the lagged score is the one tested); image 1: moved at M_{t-1} only -> not divided;
    # images 2, 3: just above / below the check's threshold.
    cases = {first: (10.0, [0.0005, None, 0.0011, 0.0009]), second: (5.0, [0.0005, None, 0.0099, 0.0101])}
    for t, (div, (a0, _, a2, a3)) in cases.items():
        scores = []
        for k in range(t + 2):
            s0 = 0.9 + (0 if k == 0 else a0 if k <= t - 1 else 0.05)
            s1 = 0.95 if k == t - 1 else 0.9
            s2 = 0.9 + (a2 if k else 0)
            s3 = 0.9 + (a3 if k else 0)
            scores.append(torch.tensor([s0, s1, s2, s3]))
        got = I.aaai_l1_update(t, T, scores, l1)
        if div == 10.0:
            expect = [0.1, 1.0, 1.0, 0.1]
        else:
            expect = [0.2, 1.0, 0.2, 1.0]
        assert got.tolist() == pytest.approx(expect), (t, div)
        for other in (t - 1, t + 1):  # no other iteration changes lambda1
            if other not in checks:
                assert torch.equal(I.aaai_l1_update(other, T, scores, l1), l1)


def test_aaai_lambda1_no_schedule_for_three_iterations_or_fewer():
    scores = [torch.tensor([0.5])] * 5
    for T in (1, 2, 3):
        for t in range(T):
            assert torch.equal(I.aaai_l1_update(t, T, scores, torch.tensor([1.0])), torch.tensor([1.0]))


def test_aaai_noise_std_0_4_on_channel_0_only():
    """The AAAI code's ``noise + cv2.randn(noise, 0, 0.2)`` adds the array to itself after randn filled
    it (std 0.4), and cv2 reads the scalar 0.2 as (0.2, 0, 0, 0): only the first channel is noisy."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cls = torch.zeros(1, dtype=torch.long)
    ctx = Context(model=Bump(), x=x, score=ClassScore(cls, "softmax"), classes=cls, clean_outputs=None, seed=9,
                  batch_size=None, preprocessing=IDENTITY)
    up = torch.full((4, 1, 64, 64), 0.7)
    img, stp = torch.zeros(4, dtype=torch.long), torch.arange(4)
    clean = 0.7 * (stp + 1).view(-1, 1, 1, 1) / 4 * x          # baseline 0
    for preset, sigma, channels in (("aaai", 0.4, [0]), ("igos_pp", 0.2, [0, 1, 2]), ("saliencekit", 0.2, [0, 1, 2])):
        sch = I.PRESETS[preset]
        opt = I.IGOS(ctx, (64, 64), ig_steps=4, l1=1.0, tv=0.0, tv_beta=2, noise_sigma=sch.noise,
                     baseline=torch.zeros_like(x), noise_channels=sch.noise_channels)
        pts = opt._points(up, img, stp, iteration=3)
        eps = torch.stack([noise.normal((3, 64, 64), 9, 0, 3 * 4 + s, stream=noise.STREAM_IGOS) for s in range(4)])
        for ch in range(3):
            want = clean[:, ch] + (sigma * eps[:, ch] if ch in channels else 0)
            assert torch.allclose(pts[:, ch], want, atol=1e-6), (preset, ch)
        n0 = pts[:, 0] - clean[:, 0]
        assert n0.std().item() == pytest.approx(sigma, rel=0.03)


# ---- IGOS_pp's schedule -------------------------------------------------------------------------

def test_igos_pp_path_objective_first_step_by_hand_and_forward_count():
    """c = 1, no noise: G(m) = (1/4) sum_s p(s/4 m) + 0.01 (1 - m) (IGOS_pp divides by S). By hand:
    d0 = (1/4) sum_s p'(s/4)(s/4)/49; G(clamp(1 - a d0)) > G(1) - 1e-4 a 49 d0**2 for a = 1000 (the
    mask clamped to 0) and 200, and holds for 40: IGOS_pp's first step is 40 (the AAAI preset, testing F, is stuck at the floor).
    Forwards: per iteration S rows for the direction, S for G(M) with fresh draws, S per candidate,
    1 for F(M) recorded; the evaluated candidates follow from the taken steps (1000 * 0.2**k: k + 1)."""
    d0 = sum(bump_dp(s / 4) * (s / 4) for s in range(1, 5)) / 4 / 49
    g = lambda m: sum(bump_p(s / 4 * m) for s in range(1, 5)) / 4 + 0.01 * (1 - m)
    armijo = [g(max(0.0, 1 - a * d0)) <= g(1) - 1e-4 * a * 49 * d0 ** 2 for a in (1000, 200, 40)]
    assert armijo == [False, False, True]
    one = run(Bump(), flat(1.0), "igos_pp", T=1, noise=0.0)
    assert one.step[0].tolist() == [40.0]
    assert one.masks.flatten().tolist() == pytest.approx([1 - 40 * d0] * 49, rel=1e-5)

    model = Bump()
    r = run(model, flat(1.0), "igos_pp", noise=0.0)
    evals = [round(math.log(1000 / a) / math.log(5)) + 1 for a in r.step[0].tolist()]
    assert [1000 * 0.2 ** (e - 1) for e in evals] == pytest.approx(r.step[0].tolist(), rel=1e-6)
    assert model.rows() == 1 + 15 * (4 + 4 + 1) + 4 * sum(evals)
    # the same run under saliencekit's schedule: no G(M) evaluation (read off the direction), from 200
    model_sk = Bump()
    r_sk = run(model_sk, flat(1.0), "saliencekit", noise=0.0)
    evals_sk = [round(math.log(200 / a) / math.log(5)) + 1 for a in r_sk.step[0].tolist()]
    assert model_sk.rows() == 1 + 15 * (4 + 1) + 4 * sum(evals_sk)
    assert torch.equal(r_sk.masks, r.masks)  # no noise: the same steps (1000 is never accepted here)


def test_igos_pp_line_search_draws_fresh_noise_per_evaluation():
    """IGOS_pp's ``interval_score`` draws ``torch.randn_like`` at every call: G(M) and each candidate
    get new noise. Here: draw 0 for G(M), draw r for the candidates of round r, keyed by
    (seed, image id, iteration, draw, path step). Channels 1, 2 of x equal the baseline (0), so a
    path point's channel 1 is its noise alone: 0.2 * N(0, 1) from that key."""
    x = torch.zeros(1, 3, 7, 7)
    x[:, 0] = 1.5
    model = Bump()
    seed, S = 4, 4
    r = run(model, x, "igos_pp", T=2, S=S, seed=seed)
    assert r.step.shape == (1, 2)
    calls = [(gr, xx) for gr, xx in model.calls]
    # layout per iteration: direction (grad), G(M) (S rows), candidates (S rows each), F(M) (1 row)
    pos = 1  # F(M_0)
    for it in range(2):
        gr, pts = calls[pos]
        assert gr and pts.shape[0] == S
        direction = torch.stack([noise.normal((3, 7, 7), seed, 0, it * S + s, stream=noise.STREAM_IGOS)
                                 for s in range(S)])
        assert torch.allclose(pts[:, 1], 0.2 * direction[:, 1], atol=1e-6)
        pos += 1
        n_cand = round(math.log(1000 / r.step[0, it].item()) / math.log(5)) + 1
        for draw in range(n_cand + 1):
            gr, pts = calls[pos]
            assert not gr and pts.shape[0] == S
            want = torch.stack([torch.randn((3, 7, 7), generator=noise.generator(seed, noise.STREAM_IGOS, 0, it,
                                                                                 draw, s)) for s in range(S)])
            assert torch.allclose(pts[:, 1], 0.2 * want[:, 1], atol=1e-6), (it, draw)
            assert not torch.allclose(pts[:, 1], 0.2 * direction[:, 1], atol=1e-3)
            pos += 1
        gr, pts = calls[pos]
        assert not gr and pts.shape[0] == 1 and torch.equal(pts[:, 1:], torch.zeros_like(pts[:, 1:]))
        pos += 1
    assert pos == len(calls)


def test_line_search_floor_rules_step_sequences():
    """Candidates that always fail: saliencekit shrinks 200 -> ... -> 2.048e-5 and takes 1e-5 (12
    evaluations); the authors' codes go on to the first step below 1e-5 and take it: 200 * 0.2**11
    (AAAI, 12 evaluations), 1000 * 0.2**12 (IGOS_pp, 13). Image 1 passes in round 3 and stops there."""
    x = torch.zeros(2, 3, 7, 7)
    cls = torch.zeros(2, dtype=torch.long)
    ctx = Context(model=Bump(), x=x, score=ClassScore(cls, "softmax"), classes=cls, clean_outputs=None, seed=0,
                  batch_size=None, preprocessing=IDENTITY)
    opt = I.IGOS(ctx, (7, 7), ig_steps=2, l1=1.0, tv=0.0, tv_beta=2, noise_sigma=0.0, baseline=x)
    masks = torch.zeros(2, 1, 7, 7)
    d = torch.full((2, 1, 7, 7), -1e-4)  # candidate = clamp(0 + a * 1e-4): encodes the step a
    for preset, first, floor_taken, n_evals in (("saliencekit", 200.0, 1e-5, 12), ("aaai", 200.0, FLOOR_AAAI, 12),
                                                ("igos_pp", 1000.0, FLOOR_AAAI, 13)):
        sch = I.PRESETS[preset]
        seen = {0: [], 1: []}

        def objective(cand, index, rnd, seen=seen):
            for row, i in enumerate(index.tolist()):
                seen[i].append((rnd, cand[row, 0, 0, 0].item() / 1e-4))
            fails = torch.ones(len(index))
            fails[index == 1] = -1.0 if rnd == 3 else 1.0  # image 1: the Armijo test holds in round 3
            return fails, None

        new_m, _, _, step = opt.line_search(masks, d, torch.zeros(2), sch.step_init, objective, sch.floor)
        want = [first * 0.2 ** k for k in range(n_evals)]
        if preset == "saliencekit":
            want[-1] = 1e-5
        assert [rnd for rnd, _ in seen[0]] == list(range(1, n_evals + 1))
        assert [a for _, a in seen[0]] == pytest.approx(want, rel=1e-5), preset
        assert step[0].item() == pytest.approx(floor_taken, rel=1e-5)
        assert [a for _, a in seen[1]] == pytest.approx(want[:3], rel=1e-5)
        assert step[1].item() == pytest.approx(first * 0.04, rel=1e-6)
        assert new_m[1, 0, 0, 0].item() == pytest.approx(first * 0.04 * 1e-4, rel=1e-5)


def test_line_search_armijo_constant():
    """Candidate values F(M) - k a |d|^2: accepted at the first step when k = 1.5e-4 (>= 1e-4, the
    constant of both codes), never when k = 0.5e-4 (down to the floor)."""
    x = torch.zeros(2, 3, 7, 7)
    cls = torch.zeros(2, dtype=torch.long)
    ctx = Context(model=Bump(), x=x, score=ClassScore(cls, "softmax"), classes=cls, clean_outputs=None, seed=0,
                  batch_size=None, preprocessing=IDENTITY)
    opt = I.IGOS(ctx, (7, 7), ig_steps=2, l1=1.0, tv=0.0, tv_beta=2, noise_sigma=0.0, baseline=x)
    masks = torch.full((2, 1, 7, 7), 0.5)
    d = torch.full((2, 1, 7, 7), 1e-3)
    dn2 = 49 * 1e-6
    f0 = torch.zeros(2)  # near 0: float32 resolves k a |d|^2 ~ 1e-9
    k = torch.tensor([1.5e-4, 0.5e-4])

    def objective(cand, index, rnd):
        a = (0.5 - cand[:, 0, 0, 0].double()) / 1e-3
        return (f0[index].double() - k[index].double() * a * dn2).float(), None

    for preset in ("aaai", "igos_pp"):
        sch = I.PRESETS[preset]
        _, _, _, step = opt.line_search(masks, d, f0, 1.0, objective, sch.floor)
        assert step.tolist() == pytest.approx([1.0, 0.2 ** 8], rel=1e-5)


# ---- options, registry, override rules -------------------------------------------------------

def test_preset_resolution_and_overrides():
    sk_ = I.resolve_schedule(None)
    assert sk_ == I.resolve_schedule("saliencekit") == I.PRESETS["saliencekit"]
    assert (sk_.line_search, sk_.noise, sk_.step_init, sk_.floor, sk_.l1_schedule) == ("path", 0.2, 200.0, "clamp",
                                                                                        None)
    a = I.resolve_schedule("aaai")
    assert (a.line_search, a.noise, a.noise_channels, a.step_init, a.floor, a.l1_schedule, a.path_divisor) == \
        ("plain", 0.4, "first", 200.0, "below", "aaai", 20)
    p = I.resolve_schedule("igos_pp")
    assert (p.line_search, p.noise, p.noise_channels, p.step_init, p.floor, p.l1_schedule, p.path_divisor) == \
        ("path_fresh", 0.2, "all", 1000.0, "below", None, None)
    # options given override the preset's value of that knob only
    o = I.resolve_schedule("aaai", line_search="path", noise=0.1, step_init=50)
    assert (o.line_search, o.noise, o.step_init) == ("path", 0.1, 50.0)
    assert (o.noise_channels, o.floor, o.l1_schedule, o.path_divisor) == ("first", "below", "aaai", 20)


@pytest.mark.parametrize("opts,name", [({"preset": "AAAI"}, "preset"), ({"preset": 1}, "preset"),
                                       ({"preset": "aaai", "line_search": "wolfe"}, "line_search"),
                                       ({"preset": "igos_pp", "noise": -1.0}, "noise"),
                                       ({"preset": "aaai", "step_init": 0.0}, "step_init")])
def test_bad_preset_options_refused(tiny_cnn, images, opts, name):
    with pytest.raises(ValueError, match=name):
        sk.explain(tiny_cnn, images[:1], "igos", mask_size=8, iterations=1, ig_steps=1, **opts)


def test_explain_with_presets_registry_and_extras(tiny_cnn, images):
    details = sk.list_methods(details=True)["igos"]
    assert details["defaults"]["preset"] == "saliencekit"
    assert details["defaults"]["noise"] is None and details["defaults"]["step_init"] is None
    assert details["defaults"]["line_search"] is None
    spec = sk.methods.get("igos")
    assert spec.ui["preset"].kind == "choice" and spec.ui["preset"].choices == ("saliencekit", "aaai", "igos_pp")
    assert spec.rows_per_image({"preset": "igos_pp"}) == 15 * 20  # the direction's engine rows
    x = images[:2]
    for preset in ("aaai", "igos_pp"):
        e = sk.explain(tiny_cnn, x, "igos", mask_size=8, iterations=4, ig_steps=2, seed=3, preset=preset)
        assert e.params["preset"] == preset
        sch = e.extras["schedule"]
        assert sch["preset"] == preset and sch["line_search"] == I.PRESETS[preset].line_search
        assert e.extras["l1"].shape == (2, 4) and e.extras["score"].shape == (2, 5)
        assert e.extras["step"].shape == (2, 4) and torch.isfinite(e.attributions).all()
        again = sk.explain(tiny_cnn, x, "igos", mask_size=8, iterations=4, ig_steps=2, seed=3, preset=preset,
                           batch_size=3)
        assert torch.equal(again.attributions, e.attributions)  # deterministic noise, any chunk size
    over = sk.explain(tiny_cnn, x, "igos", mask_size=8, iterations=2, ig_steps=2, preset="aaai", noise=0.0,
                      line_search="path")
    assert over.extras["schedule"]["noise"] == 0.0 and over.extras["schedule"]["line_search"] == "path"
    assert over.extras["schedule"]["l1_schedule"] == "aaai"
