"""Losses against naive per-triplet loops in plain Python floats, plus properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli.distances import pairwise_distances
from deephash_cli.errors import DeephashError
from deephash_cli.losses import (
    LOSSES,
    ContrastiveLoss,
    DTSHLoss,
    FaceNetTripletLoss,
    HofferTripletLoss,
    TripletRankingLoss,
)

torch.set_default_dtype(torch.float32)


def rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in r] for r in x]


def dist(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def normalized(u):
    s = math.sqrt(sum(a * a for a in u))
    return [a / s for a in u]


def small_case(seed: int = 0, b: int = 7, d: int = 5, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])[:b]
    a = torch.randint(0, b, (t,), generator=g)
    p = torch.randint(0, b, (t,), generator=g)
    n = torch.randint(0, b, (t,), generator=g)
    return emb, labels, (a, p, n)


def reduce_naive(terms, reduction):
    if reduction == "mean":
        return sum(terms) / max(len(terms), 1)
    pos = [x for x in terms if x > 0]
    return sum(pos) / max(len(pos), 1)


@pytest.mark.parametrize("reduction", ["mean", "positive_mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_facenet_matches_loop(reduction, seed):
    emb, labels, (a, p, n) = small_case(seed)
    x = [normalized(r) for r in rows(emb)]
    terms = [
        max(0.0, dist(x[i], x[j]) ** 2 - dist(x[i], x[k]) ** 2 + 0.5)
        for i, j, k in zip(a.tolist(), p.tolist(), n.tolist())
    ]
    loss = FaceNetTripletLoss(margin=0.5, reduction=reduction)
    got = loss(emb, labels, (a, p, n))
    assert float(got) == pytest.approx(reduce_naive(terms, reduction), rel=1e-9, abs=1e-12)
    assert float(loss.last_active_fraction) == pytest.approx(sum(t > 0 for t in terms) / len(terms))


def test_facenet_many_triplets_path_matches_few_triplets_path():
    # > B^2 / (2d) triplets takes the distance-matrix path; must equal the direct path.
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.zeros(6, dtype=torch.long)
    idx = torch.randint(0, 6, (3, 40), generator=g)
    loss = FaceNetTripletLoss(margin=0.3)
    full = loss(emb, labels, tuple(idx))
    parts = torch.stack([loss(emb, labels, tuple(idx[:, i : i + 1])) for i in range(40)]).mean()
    assert float(full) == pytest.approx(float(parts), rel=1e-10)


def test_hoffer_matches_loop():
    emb, labels, (a, p, n) = small_case(2)
    x = rows(emb)
    terms = []
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        dp, dn = dist(x[i], x[j]), dist(x[i], x[k])
        sp = math.exp(dp) / (math.exp(dp) + math.exp(dn))
        sn = math.exp(dn) / (math.exp(dp) + math.exp(dn))
        terms.append(sp**2 + (sn - 1) ** 2)  # the paper's form, not the 2 s+^2 shortcut
    got = HofferTripletLoss()(emb, labels, (a, p, n))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_contrastive_matches_loop():
    emb, labels, (a, p, n) = small_case(4)
    x = rows(emb)
    m = 2.5
    pairs = []
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        pairs.append(dist(x[i], x[j]) ** 2)
        pairs.append(max(0.0, m - dist(x[i], x[k])) ** 2)
    loss = ContrastiveLoss(margin=m)
    assert float(loss(emb, labels, (a, p, n))) == pytest.approx(sum(pairs) / len(pairs), rel=1e-9)
    assert float(loss.last_active_fraction) == pytest.approx(sum(v > 0 for v in pairs) / len(pairs))


@pytest.mark.parametrize("alpha,lam", [(1.0, 0.5), (3.0, 0.0)])
def test_dtsh_matches_loop(alpha, lam):
    emb, labels, (a, p, n) = small_case(5)
    u = rows(emb)
    terms = []
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        th_p = 0.5 * sum(s * t for s, t in zip(u[i], u[j]))
        th_n = 0.5 * sum(s * t for s, t in zip(u[i], u[k]))
        x = th_p - th_n - alpha
        terms.append(-(x - math.log(1 + math.exp(x))))  # the paper's NLL, unsimplified
    quant = sum(sum((math.copysign(1.0, v) - v) ** 2 for v in r) for r in u) / len(u)
    expected = sum(terms) / len(terms) + lam * quant
    loss = DTSHLoss(alpha=alpha, lam=lam)
    assert float(loss(emb, labels, (a, p, n))) == pytest.approx(expected, rel=1e-9)


def test_dtsh_alpha_and_lambda_are_mutable():
    emb, labels, trip = small_case(6)
    loss = DTSHLoss(alpha=0.0, lam=0.0)
    before = float(loss(emb, labels, trip))
    loss.alpha, loss.lam = 4.0, 1.0
    assert float(loss(emb, labels, trip)) != pytest.approx(before)
    assert float(loss(emb, labels, trip)) == pytest.approx(float(DTSHLoss(4.0, 1.0)(emb, labels, trip)))


def test_dtsh_gradient_stops_at_codes():
    # d/du lam * ||b - u||^2 with b detached is 2 lam (u - b): b must not get gradient.
    u = torch.tensor([[0.5, -0.25]], dtype=torch.float64, requires_grad=True)
    loss = DTSHLoss(alpha=0.0, lam=1.0)
    e = torch.empty(0, dtype=torch.long)
    loss(u, torch.zeros(1, dtype=torch.long), (e, e, e)).backward()
    assert u.grad[0].tolist() == pytest.approx([2 * (0.5 - 1), 2 * (-0.25 + 1)])


@pytest.mark.parametrize("apply_tanh", [True, False])
def test_triplet_ranking_matches_loop(apply_tanh):
    emb, labels, (a, p, n) = small_case(7, d=8)
    x = rows(torch.tanh(emb)) if apply_tanh else rows(emb)
    m = TripletRankingLoss.default_margin(8)
    assert m == 2.0
    terms = [
        max(0.0, dist(x[i], x[j]) ** 2 - dist(x[i], x[k]) ** 2 + m)
        for i, j, k in zip(a.tolist(), p.tolist(), n.tolist())
    ]
    got = TripletRankingLoss(margin=m, apply_tanh=apply_tanh)(emb, labels, (a, p, n))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def make(name):
    return LOSSES.get(name)(margin=1.0) if name == "triplet-ranking" else LOSSES.get(name)()


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradients_finite_at_identical_embeddings(name):
    emb = torch.ones(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    trip = (torch.tensor([0, 1, 3]), torch.tensor([1, 2, 4]), torch.tensor([3, 4, 0]))
    value = make(name)(emb, labels, trip)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_empty_triplets_give_zero_and_backprop(name):
    emb = torch.randn(4, 3, requires_grad=True)
    e = torch.empty(0, dtype=torch.long)
    loss = make(name)
    if name == "dtsh":
        loss.lam = 0.0
    value = loss(emb, torch.zeros(4, dtype=torch.long), (e, e, e))
    value.backward()  # graph stays connected
    assert float(value.detach()) == 0.0 and float(loss.last_active_fraction) == 0.0


def test_pairwise_distances_match_loop_and_sqrt_is_nan_free():
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    got = pairwise_distances(x, y)
    for i in range(5):
        for j in range(4):
            assert float(got[i, j]) == pytest.approx(dist(rows(x)[i], rows(y)[j]), rel=1e-9)
    z = torch.zeros(3, 2, requires_grad=True)
    pairwise_distances(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert (pairwise_distances(torch.randn(8, 3)).diagonal() == 0).all()


def test_unknown_loss_and_bad_reduction():
    with pytest.raises(DeephashError, match="facenet"):
        LOSSES.get("nope")
    with pytest.raises(ValueError):
        FaceNetTripletLoss(reduction="sum")


vectors = st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(vectors, min_size=4, max_size=9), st.floats(0.0, 2.0), st.integers(0, 2**16))
def test_facenet_nonnegative(points, margin, seed):
    emb = torch.tensor(points)
    b = emb.shape[0]
    g = torch.Generator().manual_seed(seed)
    trip = tuple(torch.randint(0, b, (10,), generator=g) for _ in range(3))
    value = FaceNetTripletLoss(margin=margin)(emb, torch.zeros(b, dtype=torch.long), trip)
    assert float(value) >= 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=3, max_size=3),
    st.integers(1, 5),
    st.floats(0.0, 0.5),
)
def test_facenet_zero_when_negatives_far(direction, n_pos, margin):
    # Positives at the anchor's direction, negatives antipodal: d_ap^2 = 0, d_an^2 = 4.
    v = torch.tensor(direction) + torch.tensor([2.0, 0.0, 0.0])  # never the zero vector
    emb = torch.cat([v.repeat(n_pos + 1, 1), -v.repeat(3, 1)])
    a = torch.zeros(n_pos * 3, dtype=torch.long)
    p = torch.arange(1, n_pos + 1).repeat_interleave(3)
    n = torch.arange(n_pos + 1, n_pos + 4).repeat(n_pos)
    value = FaceNetTripletLoss(margin=margin)(emb, torch.zeros(len(emb), dtype=torch.long), (a, p, n))
    assert float(value) == 0.0
