"""Miners against naive triple loops on tiny batches, sampling checks, and properties."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli.errors import DeephashError
from deephash_cli.miners import (
    MINERS,
    AllTripletsMiner,
    DistanceWeightedMiner,
    HardestMiner,
    RandomHardMiner,
    SemiHardMiner,
    embedding_collapse,
)


def batch(seed: int, b: int = 10, d: int = 4, n_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (b,), generator=g)
    return emb, labels


def naive_dist(emb, normalize=True, squared=True):
    x = [[float(v) for v in r] for r in emb]
    if normalize:
        x = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in x]
    out = [[sum((u - v) ** 2 for u, v in zip(r, s)) for s in x] for r in x]
    return out if squared else [[math.sqrt(v) for v in r] for r in out]


def naive_valid(labels):
    lab = labels.tolist()
    b = len(lab)
    return [
        (a, p, n)
        for a in range(b)
        for p in range(b)
        for n in range(b)
        if lab[a] == lab[p] and a != p and lab[n] != lab[a]
    ]


def as_list(triplets):
    return list(zip(*(t.tolist() for t in triplets)))


@pytest.mark.parametrize("seed", range(4))
def test_all_matches_triple_loop(seed):
    emb, labels = batch(seed)
    got = as_list(AllTripletsMiner()(emb, labels))
    assert got == naive_valid(labels)  # same lexicographic order as the loop
    assert AllTripletsMiner.positive_mean


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("squared", [True, False])
def test_hardest_matches_loop(seed, squared):
    emb, labels = batch(seed)
    dist = naive_dist(emb, squared=squared)
    lab = labels.tolist()
    expected = []
    for a in range(len(lab)):
        pos = [p for p in range(len(lab)) if lab[p] == lab[a] and p != a]
        neg = [n for n in range(len(lab)) if lab[n] != lab[a]]
        if pos and neg:
            expected.append((a, max(pos, key=lambda p: dist[a][p]), min(neg, key=lambda n: dist[a][n])))
    assert as_list(HardestMiner(squared=squared)(emb, labels)) == expected


def naive_semihard(emb, labels, margin, squared=True):
    dist = naive_dist(emb, squared=squared)
    by_pair = {}
    for a, p, n in naive_valid(labels):
        if dist[a][p] < dist[a][n] < dist[a][p] + margin:
            by_pair.setdefault((a, p), []).append(n)
    return dist, by_pair


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_semihard_all_matches_loop(seed, margin):
    emb, labels = batch(seed, b=12)
    _, by_pair = naive_semihard(emb, labels, margin)
    expected = sorted((a, p, n) for (a, p), ns in by_pair.items() for n in ns)
    assert sorted(as_list(SemiHardMiner(select="all")(emb, labels, margin))) == expected


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_semihard_nearest_matches_loop_and_skips_pairs_without(seed, margin):
    emb, labels = batch(seed, b=12)
    dist, by_pair = naive_semihard(emb, labels, margin)
    expected = sorted((a, p, min(ns, key=lambda n: dist[a][n])) for (a, p), ns in by_pair.items())
    assert sorted(as_list(SemiHardMiner()(emb, labels, margin))) == expected


def test_semihard_skips_when_only_hard_negatives():
    # Negative closer than the positive: no semi-hard negative exists -> no triplet.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 0, 1])
    a, p, n = SemiHardMiner()(emb, labels, margin=0.2)
    assert (0, 1) not in set(zip(a.tolist(), p.tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_random_hard_support_and_uniformity(seed):
    emb, labels = batch(seed, b=9, n_classes=2)
    margin = 0.5
    dist = naive_dist(emb)
    valid = {}
    for a, p, n in naive_valid(labels):
        if dist[a][n] < dist[a][p] + margin:
            valid.setdefault((a, p), set()).add(n)
    miner = RandomHardMiner()
    counts: dict[tuple[int, int], Counter] = {}
    gen = torch.Generator().manual_seed(123)
    for _ in range(300):
        trip = as_list(miner(emb, labels, margin, gen))
        assert {(a, p) for a, p, _ in trip} == set(valid)  # pairs without a valid negative skipped
        for a, p, n in trip:
            assert n in valid[(a, p)]
            counts.setdefault((a, p), Counter())[n] += 1
    for pair, ns in valid.items():
        assert set(counts[pair]) == ns  # every valid negative is reachable
        for n in ns:  # 300 draws: each frequency near 1/|ns| (loose: ~4 sigma)
            expect = 300 / len(ns)
            assert abs(counts[pair][n] - expect) < 4 * math.sqrt(expect) + 1


def test_random_miners_are_seeded():
    emb, labels = batch(9, b=16)
    for miner in (RandomHardMiner(), DistanceWeightedMiner()):
        one = miner(emb, labels, 0.5, torch.Generator().manual_seed(5))
        two = miner(emb, labels, 0.5, torch.Generator().manual_seed(5))
        assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_distance_weighted_distribution_matches_weights():
    g = torch.Generator().manual_seed(0)
    d = 3
    base = torch.randn(8, d, generator=g, dtype=torch.float64)
    draws = 2000
    # Anchor 0 gets `draws` identical copies of one positive: each pair (0, copy) is an
    # independent draw from anchor 0's row of weights, all in a single call.
    emb = torch.cat([base[:1], base[1:2].repeat(draws, 1), base[2:]])
    labels = torch.tensor([0] * (draws + 1) + [1, 1, 1, 2, 2, 2])
    dist = naive_dist(base, squared=False)
    neg_rows = range(2, 8)  # rows of `base`; in `emb` they sit at draws - 1 + row
    weights = {}
    for r in neg_rows:
        dn = dist[0][r]
        if dn < 1.4:
            c = max(dn, 0.5)
            weights[draws - 1 + r] = c ** (-(d - 2)) * (1 - c * c / 4) ** (-(d - 3) / 2)
    assert weights, "test data should give anchor 0 some negatives below the cutoff"
    total = sum(weights.values())
    a, p, n = DistanceWeightedMiner()(emb, labels, 0.0, torch.Generator().manual_seed(1))
    counts = Counter(n[a == 0].tolist())
    assert sum(counts.values()) == draws
    assert set(counts) <= set(weights)
    for col, w in weights.items():
        expect = draws * w / total
        assert abs(counts[col] - expect) < 5 * math.sqrt(expect) + 2


def test_distance_weighted_zero_weight_beyond_cutoff_and_skip():
    # Anchor 0's only negative is antipodal (d = 2 > 1.4): its pair is skipped.
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    a, p, n = DistanceWeightedMiner()(emb, labels, 0.0, torch.Generator().manual_seed(0))
    assert a.numel() == 0


def test_collapse_detection():
    assert embedding_collapse(torch.ones(6, 3) + 1e-6 * torch.randn(6, 3))
    assert not embedding_collapse(torch.randn(6, 3))
    assert not embedding_collapse(torch.randn(1, 3))
    # Scale-free: the batch-hard collapse seen on CIFAR-10 (unit vectors, mean distance ~0.01)
    # is caught, and scaling a healthy or a collapsed batch does not change the verdict.
    torch.manual_seed(0)
    centre = torch.nn.functional.normalize(torch.randn(1, 128), dim=1)
    collapsed = torch.nn.functional.normalize(centre + 0.001 * torch.randn(64, 128), dim=1)
    assert embedding_collapse(collapsed) and embedding_collapse(1000 * collapsed)
    healthy = torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
    assert not embedding_collapse(healthy) and not embedding_collapse(1e-4 * healthy)
    assert embedding_collapse(torch.zeros(4, 3))


def test_registry_and_single_class_batch():
    assert set(MINERS.names()) == {"all", "hardest", "semihard", "random-hard", "distance-weighted"}
    with pytest.raises(DeephashError, match="semihard"):
        MINERS.get("semi-hard")
    emb = torch.randn(5, 3)
    one_class = torch.zeros(5, dtype=torch.long)
    for name in MINERS.names():
        a, p, n = MINERS.get(name)()(emb, one_class, 0.5, torch.Generator().manual_seed(0))
        assert a.numel() == p.numel() == n.numel() == 0


def test_identical_embeddings_no_nan_in_mining():
    emb = torch.ones(8, 4)
    labels = torch.arange(8) // 2
    for name in MINERS.names():
        a, p, n = MINERS.get(name)()(emb, labels, 0.2, torch.Generator().manual_seed(0))
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()


@settings(max_examples=50, deadline=None)
@given(
    st.integers(2, 5),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(0, 2**16),
    st.sampled_from(["hardest", "semihard", "random-hard", "distance-weighted", "all"]),
)
def test_mined_triplets_satisfy_label_constraints(n_classes, per_class, d, seed, name):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    emb = torch.randn(labels.numel(), d, generator=g)
    miner = MINERS.get(name)()
    a, p, n = miner(emb, labels, 0.3, g)
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    if name == "hardest":  # one triplet per anchor that has a positive (negatives always exist)
        assert a.tolist() == (list(range(labels.numel())) if per_class > 1 else [])
