"""Tests for deephash_cli.metrics against naive plain-loop references.

Level 1: every metric vs a reference that enumerates ALL orderings inside tie groups
(itertools.permutations) on tiny inputs.  Level 2: Hypothesis properties and cross-checks
(sklearn, hamming vs float path, chunking invariance).
"""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from deephash_cli import metrics as metrics_mod
from deephash_cli.codes import pack_codes
from deephash_cli.errors import DeephashError
from deephash_cli.metrics import RetrievalResult, evaluate_retrieval

# --------------------------------------------------------------------------------------
# Naive references (plain Python loops)
# --------------------------------------------------------------------------------------


def ap_at_of_order(rel_in_order: list[int], K: int | None) -> float:
    """(1/min(R,K)) Σ_{k<=K} P(k) rel(k) for one fixed ranking; R counts the whole list."""
    R = sum(rel_in_order)
    if R == 0:
        return 0.0
    cutoff = len(rel_in_order) if K is None else K
    hits, total = 0, 0.0
    for k, r in enumerate(rel_in_order, start=1):
        if k > cutoff:
            break
        if r:
            hits += 1
            total += hits / k
    return total / min(R, cutoff)


def all_tie_orderings(dist: list, n: int):
    """Every ranking of range(n) by ascending dist with all permutations inside tie groups."""
    values = sorted(set(dist))
    groups = [[j for j in range(n) if dist[j] == v] for v in values]
    for combo in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        yield [j for g in combo for j in g]


def naive_query_metrics(dist: list, rel: list[int], map_ks, prec_ks, knn_k, db_labels):
    """All metrics of one query by brute force."""
    n = len(dist)
    orders = list(all_tie_orderings(dist, n))
    ap = sum(ap_at_of_order([rel[j] for j in o], None) for o in orders) / len(orders)
    ap_at = {K: sum(ap_at_of_order([rel[j] for j in o], K) for o in orders) / len(orders) for K in map_ks}
    prec = {}
    for K in prec_ks:
        Kc = min(K, n)
        prec[K] = sum(sum(rel[j] for j in o[:Kc]) for o in orders) / len(orders) / Kc
    opt_order = sorted(range(n), key=lambda j: (dist[j], -rel[j]))
    pess_order = sorted(range(n), key=lambda j: (dist[j], rel[j]))
    ap_opt = ap_at_of_order([rel[j] for j in opt_order], None)
    ap_pess = ap_at_of_order([rel[j] for j in pess_order], None)
    # k-NN, tie-aware: items closer than the k-th distance vote 1; the remaining votes are
    # shared equally by the items at the k-th distance; vote ties -> nearest member, then label.
    winner = naive_knn(dist, knn_k, db_labels)
    return ap, ap_opt, ap_pess, ap_at, prec, winner


def mean_of_rows(rows, q_labels, map_ks, prec_ks):
    """Per-query rows (map, optimistic, pessimistic, map@K, precision@K, kNN vote) -> the evaluate() summary."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "map": mean([r[0] for r in rows]),
        "map_optimistic": mean([r[1] for r in rows]),
        "map_pessimistic": mean([r[2] for r in rows]),
        "map_at": {K: mean([r[3][K] for r in rows]) for K in map_ks},
        "precision_at": {K: mean([r[4][K] for r in rows]) for K in prec_ks},
        "knn_accuracy": mean([float(r[5] == q_labels[i]) for i, r in enumerate(rows)]),
    }


def naive_evaluate(dist_matrix, q_labels, db_labels, map_ks=(), prec_ks=(), knn_k=3):
    rows = []
    for i in range(len(q_labels)):
        rel = [int(db_labels[j] == q_labels[i]) for j in range(len(db_labels))]
        rows.append(naive_query_metrics(list(dist_matrix[i]), rel, map_ks, prec_ks, knn_k, list(db_labels)))
    return mean_of_rows(rows, q_labels, map_ks, prec_ks)


def naive_hamming(a_bits, b_bits):
    return [[sum(int(x != y) for x, y in zip(a, b)) for b in b_bits] for a in a_bits]


def naive_sq_euclidean(a, b):
    return [[sum((int(x) - int(y)) ** 2 for x, y in zip(u, v)) for v in b] for u in a]


def assert_matches(res: RetrievalResult, ref: dict, tol=1e-12):
    assert res.map == pytest.approx(ref["map"], abs=tol)
    assert res.map_optimistic == pytest.approx(ref["map_optimistic"], abs=tol)
    assert res.map_pessimistic == pytest.approx(ref["map_pessimistic"], abs=tol)
    assert res.map_at.keys() == ref["map_at"].keys()
    for K in ref["map_at"]:
        assert res.map_at[K] == pytest.approx(ref["map_at"][K], abs=tol), K
    for K in ref["precision_at"]:
        assert res.precision_at[K] == pytest.approx(ref["precision_at"][K], abs=tol), K
    assert res.knn_accuracy == pytest.approx(ref["knn_accuracy"], abs=tol)


# --------------------------------------------------------------------------------------
# Level 1: hand-checked and brute-force cases
# --------------------------------------------------------------------------------------


def codes_from_rows(rows):
    return pack_codes(np.array(rows, dtype=np.uint8))


def test_tie_aware_ap_hand_computed():
    # Query at distance 0 from a group of 2 items (1 relevant, 1 not), then 1 relevant item.
    # Orders: [R, N, R] -> (1 + 2/3)/2 ; [N, R, R] -> (1/2 + 2/3)/2 ; expected = 17/24.
    q = codes_from_rows([[0, 0]])
    db = codes_from_rows([[0, 0], [0, 0], [1, 0]])
    res = evaluate_retrieval(q, [1], db, [1, 0, 1], distance="hamming", bits=2, precision_at=(1, 2), knn_k=1)
    assert res.map == pytest.approx(17 / 24, abs=1e-15)
    assert res.map_optimistic == pytest.approx(5 / 6, abs=1e-15)
    assert res.map_pessimistic == pytest.approx(7 / 12, abs=1e-15)
    assert res.precision_at == {1: pytest.approx(0.5), 2: pytest.approx(0.5)}
    # k=1: the two items at distance 0 (labels 1 and 0) share the vote; equal votes at equal
    # distance go to the smaller label, 0 (not to whichever is stored first).
    assert res.knn_accuracy == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_hamming_all_metrics_vs_permutation_reference(seed):
    rng = np.random.default_rng(seed)
    bits = int(rng.integers(1, 4))
    nq, ndb = int(rng.integers(1, 5)), int(rng.integers(1, 8))
    qb = rng.integers(0, 2, (nq, bits))
    dbb = rng.integers(0, 2, (ndb, bits))
    ql = rng.integers(0, 3, nq)
    dl = rng.integers(0, 3, ndb)
    map_ks, prec_ks, k = (1, 2, 3, 5, 10), (1, 2, 4, 50), int(rng.integers(1, 5))
    res = evaluate_retrieval(pack_codes(qb), ql, pack_codes(dbb), dl, distance="hamming", bits=bits,
                             map_at=map_ks, precision_at=prec_ks, knn_k=k)
    ref = naive_evaluate(naive_hamming(qb, dbb), ql.tolist(), dl.tolist(), map_ks, prec_ks, k)
    assert_matches(res, ref)
    assert res.queries_without_relevant == sum(1 for l in ql if l not in set(dl.tolist()))
    assert res.knn_k == min(k, ndb)


@pytest.mark.parametrize("seed", range(6))
def test_euclidean_integer_features_vs_permutation_reference(seed):
    # Small integer features make float32 distances exact, so ties are real ties.
    rng = np.random.default_rng(100 + seed)
    nq, ndb, dim = int(rng.integers(1, 4)), int(rng.integers(2, 8)), int(rng.integers(1, 3))
    q = rng.integers(-1, 2, (nq, dim))
    db = rng.integers(-1, 2, (ndb, dim))
    ql, dl = rng.integers(0, 2, nq), rng.integers(0, 2, ndb)
    res = evaluate_retrieval(q.astype(np.float32), ql, db.astype(np.float32), dl, distance="euclidean",
                             map_at=(1, 3), precision_at=(2, 5), knn_k=3)
    ref = naive_evaluate(naive_sq_euclidean(q, db), ql.tolist(), dl.tolist(), (1, 3), (2, 5), 3)
    assert_matches(res, ref)


def test_knn_vote_tie_goes_to_nearest_label():
    # Distances 0,1,2,3 with labels A,B,B,A: 2-2 vote tie, nearest neighbour is A.
    q = np.zeros((1, 1), dtype=np.float32)
    db = np.array([[0.0], [1.0], [2.0], [3.0], [9.0]], dtype=np.float32)
    assert evaluate_retrieval(q, [7], db, [7, 8, 8, 7, 8], distance="euclidean", knn_k=4).knn_accuracy == 1.0
    assert evaluate_retrieval(q, [8], db, [7, 8, 8, 7, 8], distance="euclidean", knn_k=4).knn_accuracy == 0.0
    # Same votes but B now nearest: B wins.
    assert evaluate_retrieval(q, [8], db, [8, 7, 7, 8, 7], distance="euclidean", knn_k=4).knn_accuracy == 1.0
    # Clear majority beats proximity: A nearest, then B,B.
    assert evaluate_retrieval(q, [8], db, [7, 8, 8, 9, 9], distance="euclidean", knn_k=3).knn_accuracy == 1.0


def test_knn_distance_ties_at_kth_place_share_the_remaining_votes():
    # Item 0 at distance 0 (label 5); items 1..4 tied at distance 1 with labels 6, 7, 7, 7.
    q = np.zeros((1, 1), dtype=np.float32)
    db = np.array([[0.0], [1.0], [1.0], [-1.0], [1.0]], dtype=np.float32)
    labels = [5, 6, 7, 7, 7]
    # k=2: votes {5: 1, 6: 1/4, 7: 3/4} -> 5.
    assert evaluate_retrieval(q, [5], db, labels, distance="euclidean", knn_k=2).knn_accuracy == 1.0
    # k=3: the four tied items share 2 votes: {5: 1, 6: 1/2, 7: 3/2} -> 7, whatever their order.
    assert evaluate_retrieval(q, [7], db, labels, distance="euclidean", knn_k=3).knn_accuracy == 1.0
    # Codes, all five items at distance 1: label 7 holds 3/5 of every k, whatever the database
    # order; an index tie-break would hand k=2 to the two 8s stored first.
    qc = codes_from_rows([[0, 0]])
    dbc = codes_from_rows([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]])
    for k in (1, 2, 3, 4, 5):
        res = evaluate_retrieval(qc, [7], dbc, [8, 8, 7, 7, 7], distance="hamming", bits=2, knn_k=k)
        assert res.knn_accuracy == 1.0, k


def test_knn_is_independent_of_database_order_under_massive_ties():
    # 1-bit codes: every item ties with half the database. Sorting the database by class
    # must not change the vote (it did with an index tie-break: the first class won).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    bits01 = (rng.random((200, 8)) < (0.2 + 0.2 * labels[:, None] / 3)).astype(np.uint8)
    db = np.packbits(bits01, axis=1)
    q = db[::7]
    ql = labels[::7]
    perm = rng.permutation(200)
    a = evaluate_retrieval(q, ql, db, labels, distance="hamming", bits=8, knn_k=10)
    b = evaluate_retrieval(q, ql, db[perm], labels[perm], distance="hamming", bits=8, knn_k=10)
    assert a.knn_accuracy == b.knn_accuracy


def test_query_without_relevant_items_counts_as_zero():
    q = codes_from_rows([[0, 0], [1, 1]])
    db = codes_from_rows([[0, 0], [0, 1], [1, 1]])
    res = evaluate_retrieval(q, [0, 3], db, [0, 1, 1], distance="hamming", bits=2, map_at=(2,))
    assert res.queries_without_relevant == 1
    assert res.map == pytest.approx(0.5)  # (1 + 0) / 2
    assert res.map_at[2] == pytest.approx(0.5)
    assert res.precision_at[100] == pytest.approx((1 / 3) / 2)  # K clamped to n = 3


def test_cosine_zero_vectors_and_scaled_ties():
    q = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    # Items 0 and 2 point the same way (exact tie), item 1 is a zero vector (distance 1).
    db = np.array([[2.0, 0.0], [0.0, 0.0], [4.0, 0.0], [-1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    dl = [1, 0, 0, 1, 0]
    res = evaluate_retrieval(q, [0, 0], db, dl, distance="cosine", map_at=(2,), knn_k=1)
    cos_dist = [[0, 1, 0, 2, 1], [1, 1, 1, 1, 1]]  # the zero query is at distance 1 from all
    ref = naive_evaluate(cos_dist, [0, 0], dl, (2,), (100,), 1)
    assert_matches(res, ref)
    assert all(math.isfinite(v) for v in (res.map, res.map_optimistic, res.map_pessimistic))


def test_map_at_and_precision_at_vs_stable_orders_without_ties():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(4, 3)).astype(np.float32)
    db = rng.normal(size=(30, 3)).astype(np.float32)
    ql, dl = rng.integers(0, 3, 4), rng.integers(0, 3, 30)
    res = evaluate_retrieval(q, ql, db, dl, distance="euclidean", map_at=(1, 5, 30), precision_at=(1, 7))
    aps = {K: [] for K in (1, 5, 30)}
    precs = {K: [] for K in (1, 7)}
    for i in range(4):
        d = ((q[i].astype(np.float64) - db) ** 2).sum(1)
        rel = [int(dl[j] == ql[i]) for j in np.argsort(d)]
        for K in aps:
            aps[K].append(ap_at_of_order(rel, K))
        for K in precs:
            precs[K].append(sum(rel[:K]) / K)
    for K in aps:
        assert res.map_at[K] == pytest.approx(np.mean(aps[K]), abs=1e-12)
    for K in precs:
        assert res.precision_at[K] == pytest.approx(np.mean(precs[K]), abs=1e-12)
    assert res.map_at[30] == pytest.approx(res.map, abs=1e-12)


def test_matches_sklearn_average_precision_without_ties():
    rng = np.random.default_rng(11)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    db = rng.normal(size=(300, 8)).astype(np.float32)
    ql, dl = rng.integers(0, 4, 20), rng.integers(0, 4, 300)
    for distance in ("euclidean", "cosine"):
        res = evaluate_retrieval(q, ql, db, dl, distance=distance)
        aps = []
        for i in range(20):
            if distance == "euclidean":
                score = -np.linalg.norm(db.astype(np.float64) - q[i], axis=1)
            else:
                qd = db.astype(np.float64) @ q[i].astype(np.float64)
                score = qd / np.linalg.norm(db, axis=1) / np.linalg.norm(q[i])
            aps.append(average_precision_score(dl == ql[i], score))
        assert res.map == pytest.approx(np.mean(aps), abs=1e-9)
        assert res.map_optimistic == res.map_pessimistic == pytest.approx(res.map, abs=1e-12)


def test_harmonic_differences_are_accurate_for_large_indices():
    for a, b in ((0, 1), (3, 1000), (1023, 1025), (1024, 1025), (5000, 5003), (49_999, 50_000),
                 (10**6, 10**6 + 7), (2000, 90_000), (10**7 - 5, 10**7)):
        exact = float(sum(Fraction(1, k) for k in range(a + 1, b + 1))) if b - a < 50 else \
            math.fsum(1.0 / k for k in range(a + 1, b + 1))
        got = float(metrics_mod._harmonic_diff(np.array([a]), np.array([b]))[0])
        assert got == pytest.approx(exact, rel=1e-13), (a, b)


def test_to_dict_is_json_able():
    res = evaluate_retrieval(codes_from_rows([[1, 0]]), [0], codes_from_rows([[1, 0], [0, 1]]), [0, 1],
                             distance="hamming", bits=2, map_at=(1,), precision_at=(1, 2))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["map_at"] == {"1": 1.0}
    assert d["precision_at"] == {"1": 1.0, "2": 0.5}
    assert d["distance"] == "hamming" and d["queries"] == 1 and d["database"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distance="manhattan"), "unknown distance"),
        (dict(distance="hamming"), "bits"),
        (dict(distance="hamming", bits=12), "bytes per code"),
        (dict(distance="euclidean", map_at=(0,)), "positive"),
        (dict(distance="euclidean", precision_at=(-5,)), "positive"),
        (dict(distance="euclidean", knn_k=0), "knn_k"),
        (dict(distance="euclidean", chunk_size=0), "chunk_size"),
        (dict(distance="euclidean", bits=8), "bits only applies"),
    ],
)
def test_invalid_arguments_raise_deephash_error(kwargs, message):
    q = np.zeros((2, 1), dtype=np.uint8)
    db = np.zeros((3, 1), dtype=np.uint8)
    with pytest.raises(DeephashError, match=message):
        evaluate_retrieval(q, [0, 1], db, [0, 1, 1], **kwargs)


def test_invalid_shapes_and_values_raise_deephash_error():
    q = np.zeros((2, 4), dtype=np.float32)
    db = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(DeephashError, match="labels"):
        evaluate_retrieval(q, [0], db, [0, 1, 1], distance="euclidean")
    with pytest.raises(DeephashError, match="labels"):
        evaluate_retrieval(q, [0, 1], db, [0, 1], distance="euclidean")
    with pytest.raises(DeephashError, match="columns"):
        evaluate_retrieval(q, [0, 1], db[:, :3], [0, 1, 1], distance="euclidean")
    with pytest.raises(DeephashError, match="NaN"):
        evaluate_retrieval(np.full((2, 4), np.nan, np.float32), [0, 1], db, [0, 1, 1], distance="cosine")
    with pytest.raises(DeephashError, match="padding"):
        evaluate_retrieval(np.array([[0x01]], np.uint8), [0], np.zeros((1, 1), np.uint8), [0],
                           distance="hamming", bits=7)
    with pytest.raises(DeephashError, match="uint8"):
        evaluate_retrieval(q, [0, 1], db, [0, 1, 1], distance="hamming", bits=32)
    with pytest.raises(DeephashError, match="empty"):
        evaluate_retrieval(q[:0], [], db, [0, 1, 1], distance="euclidean")


# --------------------------------------------------------------------------------------
# Level 2: properties
# --------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 5),
    nq=st.integers(1, 4),
    ndb=st.integers(1, 7),
    n_labels=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    knn_k=st.integers(1, 8),
)
def test_property_hamming_equals_bruteforce(bits, nq, ndb, n_labels, seed, knn_k):
    rng = np.random.default_rng(seed)
    qb, dbb = rng.integers(0, 2, (nq, bits)), rng.integers(0, 2, (ndb, bits))
    ql, dl = rng.integers(0, n_labels, nq), rng.integers(0, n_labels, ndb)
    res = evaluate_retrieval(pack_codes(qb), ql, pack_codes(dbb), dl, distance="hamming", bits=bits,
                             map_at=(1, 3, 8), precision_at=(1, 3), knn_k=knn_k, chunk_size=int(rng.integers(1, 4)))
    ref = naive_evaluate(naive_hamming(qb, dbb), ql.tolist(), dl.tolist(), (1, 3, 8), (1, 3), knn_k)
    assert_matches(res, ref)


@settings(max_examples=40, deadline=None)
@given(
    nq=st.integers(1, 30),
    ndb=st.integers(1, 200),
    bits=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_bounds_and_ordering(nq, ndb, bits, seed):
    rng = np.random.default_rng(seed)
    q = pack_codes(rng.integers(0, 2, (nq, bits)))
    db = pack_codes(rng.integers(0, 2, (ndb, bits)))
    ql, dl = rng.integers(0, 4, nq), rng.integers(0, 4, ndb)
    res = evaluate_retrieval(q, ql, db, dl, distance="hamming", bits=bits, map_at=(1, 10, ndb), precision_at=(1, 10))
    eps = 1e-12
    assert 0 <= res.map_pessimistic <= res.map + eps and res.map <= res.map_optimistic + eps
    assert res.map_optimistic <= 1 + eps
    assert res.map_at[ndb] == pytest.approx(res.map, abs=1e-12)
    for v in list(res.map_at.values()) + list(res.precision_at.values()) + [res.knn_accuracy]:
        assert -eps <= v <= 1 + eps


@settings(max_examples=30, deadline=None)
@given(
    n_labels=st.integers(1, 6),
    bits=st.integers(3, 40),
    per_class=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_perfect_ranking_gives_one(n_labels, bits, per_class, seed):
    # Every class has its own code and all its items share it: relevant items are exactly
    # the distance-0 group, so every metric (even pessimistic) is 1.
    rng = np.random.default_rng(seed)
    class_codes = rng.permutation(2**min(bits, 12))[:n_labels]
    if len(class_codes) < n_labels:
        return
    bit_rows = (class_codes[:, None] >> np.arange(bits)[None, :]) & 1
    dl = np.repeat(np.arange(n_labels), per_class)
    db = pack_codes(bit_rows[dl])
    ql = rng.integers(0, n_labels, 5)
    res = evaluate_retrieval(pack_codes(bit_rows[ql]), ql, db, dl, distance="hamming", bits=bits,
                             map_at=(per_class,), precision_at=(per_class,), knn_k=per_class)
    assert res.map == res.map_optimistic == res.map_pessimistic == pytest.approx(1.0, abs=1e-12)
    assert res.map_at[per_class] == pytest.approx(1.0, abs=1e-12)
    assert res.precision_at[per_class] == pytest.approx(1.0, abs=1e-12)
    assert res.knn_accuracy == 1.0


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8, 12, 16]),
    nq=st.integers(1, 40),
    ndb=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([None, 1, 7]),
)
def test_property_hamming_path_equals_float_path_on_pm1_features(bits, nq, ndb, seed, chunk):
    # For ±1 vectors the squared L2 distance is exactly 4 x Hamming, so both code paths
    # (histogram-based vs sort-based) must give identical tie groups and k-NN votes.
    # Large databases exercise the paired-uint16 histogram of the hamming path.
    rng = np.random.default_rng(seed)
    qb, dbb = rng.integers(0, 2, (nq, bits)), rng.integers(0, 2, (ndb, bits))
    ql, dl = rng.integers(0, 5, nq), rng.integers(0, 5, ndb)
    kw = dict(map_at=(1, 10, 100), precision_at=(1, 10, 100), knn_k=7, chunk_size=chunk)
    rh = evaluate_retrieval(pack_codes(qb), ql, pack_codes(dbb), dl, distance="hamming", bits=bits, **kw)
    rf = evaluate_retrieval((2.0 * qb - 1).astype(np.float32), ql, (2.0 * dbb - 1).astype(np.float32), dl,
                            distance="euclidean", **kw)
    dh, df = rh.to_dict(), rf.to_dict()
    dh.pop("distance"), df.pop("distance")
    for key in ("map", "map_optimistic", "map_pessimistic"):
        assert dh.pop(key) == pytest.approx(df.pop(key), abs=1e-12)
    for key in ("map_at", "precision_at"):
        a, b = dh.pop(key), df.pop(key)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-12) for k in a)
    assert dh == df  # knn accuracy, counts


@settings(max_examples=25, deadline=None)
@given(
    nq=st.integers(1, 5),
    ndb=st.integers(2, 7),
    dim=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_float_integer_features_follow_tie_aware_definition(nq, ndb, dim, seed):
    rng = np.random.default_rng(seed)
    q, db = rng.integers(-2, 3, (nq, dim)), rng.integers(-2, 3, (ndb, dim))
    ql, dl = rng.integers(0, 2, nq), rng.integers(0, 2, ndb)
    res = evaluate_retrieval(q.astype(np.float32), ql, db.astype(np.float32), dl, distance="euclidean",
                             map_at=(2,), precision_at=(3,), knn_k=2)
    ref = naive_evaluate(naive_sq_euclidean(q, db), ql.tolist(), dl.tolist(), (2,), (3,), 2)
    assert_matches(res, ref)


def test_chunking_and_query_order_do_not_change_results():
    rng = np.random.default_rng(3)
    q = pack_codes(rng.integers(0, 2, (57, 6)))
    db = pack_codes(rng.integers(0, 2, (501, 6)))
    ql, dl = rng.integers(0, 7, 57), rng.integers(0, 7, 501)
    kw = dict(distance="hamming", bits=6, map_at=(5, 50), precision_at=(5, 50), knn_k=5)
    base = evaluate_retrieval(q, ql, db, dl, **kw).to_dict()
    for chunk in (1, 4, 1000):
        got = evaluate_retrieval(q, ql, db, dl, chunk_size=chunk, **kw).to_dict()
        assert json.dumps(got) == json.dumps(base) or got == pytest.approx(base)
    perm = rng.permutation(57)
    shuffled = evaluate_retrieval(q[perm], ql[perm], db, dl, **kw)
    assert shuffled.map == pytest.approx(base["map"], abs=1e-12)
    assert shuffled.knn_accuracy == base["knn_accuracy"]


@pytest.mark.parametrize("use_torch", [True, False])
@pytest.mark.parametrize("bits, ndb", [(8, 2500), (5, 40), (130, 60), (260, 50)])
def test_histogram_backends_agree_with_float_path(monkeypatch, use_torch, bits, ndb):
    # Covers every histogram branch: paired (large database), per-row torch, numpy
    # fallbacks (torch hidden) and uint16 distances (>= 256 bits).
    if not use_torch:
        monkeypatch.setattr(metrics_mod, "_torch", lambda: None)
    rng = np.random.default_rng(bits + ndb)
    qb, dbb = rng.integers(0, 2, (23, bits)), rng.integers(0, 2, (ndb, bits))
    ql, dl = rng.integers(0, 4, 23), rng.integers(0, 4, ndb)
    kw = dict(map_at=(3, 30), precision_at=(3, 30), knn_k=5, chunk_size=9)
    rh = evaluate_retrieval(pack_codes(qb), ql, pack_codes(dbb), dl, distance="hamming", bits=bits, **kw)
    rf = evaluate_retrieval((2.0 * qb - 1).astype(np.float32), ql, (2.0 * dbb - 1).astype(np.float32), dl,
                            distance="euclidean", **kw)
    assert rh.map == pytest.approx(rf.map, abs=1e-12)
    assert rh.map_pessimistic == pytest.approx(rf.map_pessimistic, abs=1e-12)
    assert rh.map_at == pytest.approx(rf.map_at, abs=1e-12)
    assert rh.precision_at == pytest.approx(rf.precision_at, abs=1e-12)
    assert rh.knn_accuracy == rf.knn_accuracy


def naive_leave_one_out(dist_matrix, labels, map_ks, prec_ks, knn_k):
    """Brute-force reference for exclude_self: query i ranks the set without item i."""
    labels = list(labels)
    rows = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        dist = [dist_matrix[i][j] for j in others]
        db_labels = [labels[j] for j in others]
        rel = [int(l == labels[i]) for l in db_labels]
        rows.append(naive_query_metrics(dist, rel, map_ks, prec_ks, knn_k, db_labels))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "map": mean([r[0] for r in rows]),
        "map_optimistic": mean([r[1] for r in rows]),
        "map_pessimistic": mean([r[2] for r in rows]),
        "map_at": {K: mean([r[3][K] for r in rows]) for K in map_ks},
        "precision_at": {K: mean([r[4][K] for r in rows]) for K in prec_ks},
        "knn_accuracy": mean([float(r[5] == labels[i]) for i, r in enumerate(rows)]),
    }


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(1, 4),
    n=st.integers(2, 7),
    seed=st.integers(0, 2**32 - 1),
    knn_k=st.integers(1, 7),
    chunk=st.sampled_from([None, 1, 2]),
)
def test_property_exclude_self_equals_leave_one_out_bruteforce(bits, n, seed, knn_k, chunk):
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2, (n, bits))
    lab = rng.integers(0, 3, n)
    kw = dict(map_at=(1, 3), precision_at=(1, 3), knn_k=knn_k, chunk_size=chunk, exclude_self=True)
    ref = naive_leave_one_out(naive_hamming(b, b), lab, (1, 3), (1, 3), knn_k)
    codes = pack_codes(b)
    res = evaluate_retrieval(codes, lab, codes, lab, distance="hamming", bits=bits, **kw)
    assert_matches(res, ref)
    assert res.database == n and res.knn_k == min(knn_k, n - 1)
    assert res.queries_without_relevant == sum(1 for l in lab.tolist() if lab.tolist().count(l) == 1)
    feats = (2.0 * b - 1).astype(np.float32)
    assert_matches(evaluate_retrieval(feats, lab, feats, lab, distance="euclidean", **kw), ref)


def test_exclude_self_requires_the_same_set():
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(DeephashError, match="exclude_self"):
        evaluate_retrieval(x, [0, 1, 1], x[:2], [0, 1], distance="euclidean", exclude_self=True)
    with pytest.raises(DeephashError, match="exclude_self"):
        evaluate_retrieval(x, [0, 1, 1], x, [0, 1, 0], distance="euclidean", exclude_self=True)
    with pytest.raises(DeephashError, match="at least 2"):
        evaluate_retrieval(x[:1], [0], x[:1], [0], distance="cosine", exclude_self=True)


def test_huge_features_are_rejected_instead_of_producing_nan():
    x = np.full((2, 4), 1e19, dtype=np.float32)
    with pytest.raises(DeephashError, match="too large"):
        evaluate_retrieval(x, [0, 1], x, [0, 1], distance="euclidean")


# --------------------------------------------------------------------------------------
# Float path (bucket tables): closed-form reference and invariances
# --------------------------------------------------------------------------------------


def closed_form_query_metrics(dist: list, rel: list[int], map_ks, prec_ks):
    """Tie-aware AP (expected, optimistic, pessimistic), AP@K and P@K of one query by plain
    loops over its tie groups (the closed forms of the module docstring, not its code):
    a group of m items, r relevant, after N items of which Rb relevant, contributes
    E[P(N+i) rel(N+i)] = ((r/m)(Rb+1) + (i-1) r(r-1)/(m(m-1))) / (N+i) at its i-th place."""
    n, R = len(dist), sum(rel)
    ap, ap_at, prec = 0.0, {K: 0.0 for K in map_ks}, {K: 0.0 for K in prec_ks}
    N = Rb = 0
    for _, group in itertools.groupby(sorted(zip(dist, rel)), key=lambda t: t[0]):
        flags = [t[1] for t in group]
        m, r = len(flags), sum(flags)
        for i in range(1, m + 1):
            if r == 0:
                break
            term = ((r / m) * (Rb + 1) + ((i - 1) * r * (r - 1) / (m * (m - 1)) if m > 1 else 0.0)) / (N + i)
            ap += term
            for K in map_ks:
                if N + i <= K:
                    ap_at[K] += term
        for K in prec_ks:
            prec[K] += r * min(max(min(K, n) - N, 0), m) / m
        N, Rb = N + m, Rb + r
    orders = {
        "opt": sorted(range(n), key=lambda j: (dist[j], -rel[j])),
        "pess": sorted(range(n), key=lambda j: (dist[j], rel[j])),
    }
    opt, pess = (ap_at_of_order([rel[j] for j in orders[key]], None) for key in ("opt", "pess"))
    return (
        ap / R if R else 0.0,
        opt,
        pess,
        {K: (ap_at[K] / min(R, K) if R else 0.0) for K in map_ks},
        {K: prec[K] / min(K, n) for K in prec_ks},
    )


def naive_knn(dist: list, knn_k: int, db_labels: list):
    """Tie-aware k-NN vote of one query (same rules as naive_query_metrics)."""
    n = len(dist)
    kk = min(knn_k, n)
    d_k = sorted(dist)[kk - 1]
    closer = [j for j in range(n) if dist[j] < d_k]
    tied = [j for j in range(n) if dist[j] == d_k]
    share = Fraction(kk - len(closer), len(tied))
    votes: dict[int, Fraction] = {}
    nearest: dict[int, float] = {}
    for j in closer + tied:
        votes[db_labels[j]] = votes.get(db_labels[j], Fraction(0)) + (1 if j in closer else share)
        nearest[db_labels[j]] = min(nearest.get(db_labels[j], float("inf")), dist[j])
    best = max(votes.values())
    return min((lab for lab in votes if votes[lab] == best), key=lambda lab: (nearest[lab], lab))


def closed_form_evaluate(dist_matrix, q_labels, db_labels, map_ks, prec_ks, knn_k, exclude_self=False):
    rows = []
    for i in range(len(q_labels)):
        cols = [j for j in range(len(db_labels)) if not (exclude_self and j == i)]
        dist = [float(dist_matrix[i][j]) for j in cols]
        labels = [int(db_labels[j]) for j in cols]
        rel = [int(lab == q_labels[i]) for lab in labels]
        rows.append(closed_form_query_metrics(dist, rel, map_ks, prec_ks) + (naive_knn(dist, knn_k, labels),))
    return mean_of_rows(rows, q_labels, map_ks, prec_ks)


def float32_distances(q, db, distance):
    """The module's float32 distances for small-integer features (exact dot products, so the
    result does not depend on how the matmul is blocked)."""
    q, db = np.asarray(q, np.float32), np.asarray(db, np.float32)
    dot = q @ db.T
    if distance == "euclidean":
        d = dot * np.float32(-2.0)
        d += np.einsum("ij,ij->i", db, db)[None, :]
        d += np.einsum("ij,ij->i", q, q)[:, None]
        return np.maximum(d, np.float32(0.0))
    inv = lambda x: np.where(  # noqa: E731
        (nrm := np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))) > 0, 1.0 / np.where(nrm > 0, nrm, 1.0), 0.0
    ).astype(np.float32)
    d = dot * inv(db)[None, :]
    d *= -inv(q)[:, None]
    return d + np.float32(0.0)


@pytest.mark.parametrize("seed", range(8))
def test_closed_form_reference_matches_permutation_reference(seed):
    # The closed-form reference used below is itself checked against all orderings.
    rng = np.random.default_rng(300 + seed)
    nq, ndb = int(rng.integers(1, 4)), int(rng.integers(2, 8))
    q, db = rng.integers(-1, 2, (nq, 2)), rng.integers(-1, 2, (ndb, 2))
    ql, dl = rng.integers(0, 2, nq), rng.integers(0, 2, ndb)
    dist = naive_sq_euclidean(q, db)
    ref = naive_evaluate(dist, ql.tolist(), dl.tolist(), (1, 3), (2, 5), 3)
    got = closed_form_evaluate(dist, ql.tolist(), dl.tolist(), (1, 3), (2, 5), 3)
    for key in ("map", "map_optimistic", "map_pessimistic", "knn_accuracy"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12)
    for key in ("map_at", "precision_at"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    nq=st.integers(1, 12),
    ndb=st.integers(2, 300),
    dim=st.integers(1, 4),
    spread=st.sampled_from([1, 3, 30, 1000]),
    n_labels=st.integers(1, 4),
    distance=st.sampled_from(["euclidean", "cosine"]),
    exclude_self=st.booleans(),
    chunk=st.sampled_from([None, 1, 5]),
    knn_k=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_float_path_equals_closed_form(
    nq, ndb, dim, spread, n_labels, distance, exclude_self, chunk, knn_k, seed
):
    # Integer features: exact distances.  Small spreads give massive ties (many relevant items
    # in one bucket, binary-search fallback), large ones mostly distinct distances.
    rng = np.random.default_rng(seed)
    db = rng.integers(-spread, spread + 1, (ndb, dim))
    dl = rng.integers(0, n_labels, ndb)
    q, ql = (db, dl) if exclude_self else (rng.integers(-spread, spread + 1, (nq, dim)), rng.integers(0, n_labels, nq))
    map_ks, prec_ks = (1, 10, 100), (1, 10, 1000)
    res = evaluate_retrieval(q.astype(np.float32), ql, db.astype(np.float32), dl, distance=distance, map_at=map_ks,
                             precision_at=prec_ks, knn_k=knn_k, chunk_size=chunk, exclude_self=exclude_self)
    dist = float32_distances(q, db, distance)
    ref = closed_form_evaluate(dist, ql.tolist(), dl.tolist(), map_ks, prec_ks, knn_k, exclude_self)
    assert_matches(res, ref, tol=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_float_results_do_not_depend_on_bucket_count_or_block_size(monkeypatch, distance, exclude_self):
    # The buckets only decide which items are compared exactly: results are the same with
    # 4 buckets (everything collides), one comparison before the binary search, 1-row blocks.
    monkeypatch.setenv("DEEPHASH_KERNELS", "numpy")  # these constants are the numpy path's
    rng = np.random.default_rng(7)
    db = np.concatenate([rng.normal(size=(900, 6)), np.repeat(rng.normal(size=(30, 6)), 10, axis=0)]).astype(np.float32)
    dl = rng.integers(0, 3, db.shape[0])
    q, ql = (db, dl) if exclude_self else (rng.normal(size=(37, 6)).astype(np.float32), rng.integers(0, 3, 37))
    kw = dict(distance=distance, map_at=(5, 50, 5000), precision_at=(1, 20, 300), knn_k=6, exclude_self=exclude_self)
    base = evaluate_retrieval(q, ql, db, dl, **kw).to_dict()
    from unittest import mock

    for buckets, scan, rows in ((4, 1, 1), (64, 2, 3), (1 << 10, 8, 8)):
        with mock.patch.object(metrics_mod, "_FLOAT_BUCKETS", buckets), mock.patch.object(
            metrics_mod, "_FLOAT_SCAN", scan
        ), mock.patch.object(metrics_mod, "_FLOAT_BLOCK_ROWS", rows):
            got = evaluate_retrieval(q, ql, db, dl, **kw).to_dict()
        assert got.keys() == base.keys()
        for key, value in base.items():
            if isinstance(value, (dict, float)):
                assert got[key] == pytest.approx(value, abs=1e-12), (key, buckets, scan, rows)
            else:
                assert got[key] == value, (key, buckets, scan, rows)


def test_sort_relevant_is_an_exact_sort():
    rng = np.random.default_rng(11)
    for trial in range(200):
        rows, R = int(rng.integers(1, 5)), int(rng.integers(1, 300))
        kind = trial % 3
        if kind == 0:
            v = rng.normal(size=(rows, R))
        elif kind == 1:
            v = rng.integers(-4, 5, (rows, R))  # many equal values
        else:
            v = rng.normal(size=(rows, R)) * 1e-30  # tiny and negative values
        v = v.astype(np.float32) + np.float32(0.0)
        lo, hi = v.min(axis=1), v.max(axis=1)
        n_buckets = int(rng.integers(1, 50))
        scale = np.where(hi > lo, n_buckets / np.where(hi > lo, hi - lo, 1).astype(np.float64), 0).astype(np.float32)
        buckets = ((v - lo[:, None]) * scale[:, None]).astype(np.uint16)
        rs, rbs = metrics_mod._sort_relevant(v, buckets)
        np.testing.assert_array_equal(rs, np.sort(v, axis=1))
        assert np.all(np.diff(rbs.astype(np.int64), axis=1) >= 0)


def test_float_path_matches_closed_form_on_a_larger_database():
    # Continuous features, several blocks and label runs in one chunk.  One chunk holds all
    # 40 queries, so the module's matmul is the same call as the reference's: equal float32
    # distances, including their (rare) exact ties.
    rng = np.random.default_rng(12)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    db = rng.normal(size=(4000, 16)).astype(np.float32)
    ql, dl = rng.integers(0, 5, 40), rng.integers(0, 5, 4000)
    map_ks, prec_ks = (100, 4000), (10, 500)
    res = evaluate_retrieval(q, ql, db, dl, distance="euclidean", map_at=map_ks, precision_at=prec_ks, knn_k=7)
    dist = float32_distances(q, db, "euclidean")
    assert_matches(res, closed_form_evaluate(dist, ql.tolist(), dl.tolist(), map_ks, prec_ks, 7), tol=1e-12)
    aps = [average_precision_score(dl == ql[i], -dist[i].astype(np.float64)) for i in range(40)]
    assert res.map == pytest.approx(np.mean(aps), abs=1e-6)  # sklearn: no tie-awareness


# --------------------------------------------------------------------------------------
# Float path internals: bucket table ranks, relevant sort, torch-free fallbacks
# --------------------------------------------------------------------------------------


def naive_block_ranks(D, members, self_cols):
    """rs, cnt, eqc of _block_ranks by plain loops: per row, the relevant distances sorted
    (own item dropped), and for every irrelevant item q = number of relevant distances <= it,
    counted in cnt[q], and in eqc[q] too when it equals rs[q - 1]."""
    member_set = set(members.tolist())
    out_rs, out_cnt, out_eqc = [], [], []
    for r, row in enumerate(D.tolist()):
        own = None if self_cols is None else int(self_cols[r])
        rs = sorted(row[j] for j in member_set if j != own)
        cnt, eqc = [0] * (len(rs) + 1), [0] * (len(rs) + 1)
        for j, x in enumerate(row):
            if j in member_set:
                continue
            q = sum(v <= x for v in rs)
            cnt[q] += 1
            eqc[q] += q > 0 and rs[q - 1] == x
        out_rs.append(rs), out_cnt.append(cnt), out_eqc.append(eqc)
    return np.array(out_rs, dtype=np.float32), np.array(out_cnt), np.array(out_eqc)


def block_ranks_of(D, members, self_cols, buckets):
    """Run _block_ranks as the float pass does (buckets over each row's range) with
    ``buckets`` buckets per row."""
    from unittest import mock

    with mock.patch.object(metrics_mod, "_FLOAT_BUCKETS", buckets):
        b, n = D.shape
        S = metrics_mod._FloatScratch(b, n)
        D = D.copy()
        if self_cols is not None:
            D[np.arange(b), self_cols] = np.inf
        finite = np.where(np.isfinite(D), D, -np.inf)
        lo = np.where(np.isfinite(D), D, np.inf).min(axis=1)
        span = finite.max(axis=1).astype(np.float64) - lo
        scale = np.where(span > 0, (buckets - 2) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
        idx = S.idx[:b]
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(D - lo[:, None], scale[:, None], out=idx, casting="unsafe")
        if self_cols is not None:
            idx[np.arange(b), self_cols] = buckets - 1
        idx += (np.arange(b) * buckets).astype(np.int32)[:, None]
        rs, cnt, eqc = metrics_mod._block_ranks(D, idx, members, self_cols, S)
        # The scratch tables are left clean for the next block.
        expected_inc = np.zeros(b * buckets, dtype=np.int32)
        expected_inc[buckets::buckets] = 1
        np.testing.assert_array_equal(S.inc, expected_inc)
    return rs, cnt, eqc


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 5),
    n=st.integers(2, 120),
    spread=st.sampled_from([1, 2, 5, 1000]),
    relevant=st.floats(0.05, 0.9),
    buckets=st.sampled_from([4, 16, 64, 1 << 10, 1 << 16]),
    scan=st.sampled_from([1, 2, 8]),
    exclude_self=st.booleans(),
    negative=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_block_ranks_equal_plain_counts(
    rows, n, spread, relevant, buckets, scan, exclude_self, negative, seed
):
    # Small spreads: massive ties between relevant and irrelevant distances, many relevant
    # distances per bucket (second-threshold and _advance paths); large: mostly distinct.
    from unittest import mock

    rng = np.random.default_rng(seed)
    D = rng.integers(-spread if negative else 0, spread + 1, (rows, n)).astype(np.float32)
    D += np.float32(0.0)
    members = np.flatnonzero(rng.random(n) < relevant)
    if members.size < 1 + int(exclude_self):
        members = np.arange(1 + int(exclude_self))
    self_cols = rng.choice(members, rows) if exclude_self else None
    with mock.patch.object(metrics_mod, "_FLOAT_SCAN", scan):
        rs, cnt, eqc = block_ranks_of(D, members, self_cols, buckets)
    ref_rs, ref_cnt, ref_eqc = naive_block_ranks(D, members, self_cols)
    np.testing.assert_array_equal(rs, ref_rs)
    np.testing.assert_array_equal(cnt, ref_cnt)
    np.testing.assert_array_equal(eqc, ref_eqc)


def test_block_ranks_on_continuous_distances_with_planted_ties():
    # Realistic rows (distinct float distances, 65,536 buckets) with irrelevant items planted
    # on relevant distances and relevant duplicates: the rare tie paths inside a large table.
    rng = np.random.default_rng(21)
    D = (rng.normal(size=(4, 3000)) * 30 + 250).astype(np.float32)
    members = np.flatnonzero(rng.random(3000) < 0.2)
    others = np.setdiff1d(np.arange(3000), members)
    D[:, others[:40]] = D[:, members[:40]]  # irrelevant == relevant
    D[:, members[40:60]] = D[:, members[60:80]]  # relevant == relevant
    for self_cols in (None, members[[0, 5, 9, 100]]):
        got = block_ranks_of(D, members, self_cols, 1 << 16)
        for a, b in zip(got, naive_block_ranks(D, members, self_cols)):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 4),
    R=st.integers(1, 200),
    n_buckets=st.integers(1, 300),
    values=st.sampled_from(["normal", "few", "tiny"]),
    scan=st.sampled_from([1, 2, 8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_sort_relevant_is_an_exact_sort(rows, R, n_buckets, values, scan, seed):
    # Runs of equal buckets of every length: swaps for short runs, the sort fallback for long.
    from unittest import mock

    rng = np.random.default_rng(seed)
    v = {"normal": rng.normal(size=(rows, R)), "few": rng.integers(-3, 4, (rows, R)),
         "tiny": rng.normal(size=(rows, R)) * 1e-30}[values].astype(np.float32) + np.float32(0.0)
    lo, hi = v.min(axis=1), v.max(axis=1)
    scale = np.where(hi > lo, (n_buckets - 1) / np.where(hi > lo, hi - lo, 1).astype(np.float64), 0).astype(np.float32)
    buckets = ((v - lo[:, None]) * scale[:, None]).astype(np.uint16)
    with mock.patch.object(metrics_mod, "_FLOAT_SCAN", scan):
        rs, rbs = metrics_mod._sort_relevant(v, buckets)
    np.testing.assert_array_equal(rs, np.sort(v, axis=1))
    np.testing.assert_array_equal(rbs, np.sort(buckets, axis=1))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [None, 7, 25])
@pytest.mark.parametrize("block_rows, sum_rows", [(8, 32), (3, 5)])
def test_label_runs_spanning_blocks_and_chunks_match_closed_form(monkeypatch, distance, chunk, block_rows, sum_rows):
    # 60 queries of 3 labels (one absent from the database): label runs of ~20 rows cover
    # several blocks, whose ranks are summed a few blocks at a time, and cross chunk boundaries.
    monkeypatch.setenv("DEEPHASH_KERNELS", "numpy")  # block and sum rows are the numpy path's
    monkeypatch.setattr(metrics_mod, "_FLOAT_BLOCK_ROWS", block_rows)
    monkeypatch.setattr(metrics_mod, "_FLOAT_SUM_ROWS", sum_rows)
    rng = np.random.default_rng(31)
    db = rng.integers(-3, 4, (400, 3))
    dl = rng.integers(0, 2, 400)
    q, ql = rng.integers(-3, 4, (60, 3)), rng.integers(0, 3, 60)
    map_ks, prec_ks = (5, 50, 400), (1, 30, 1000)
    res = evaluate_retrieval(q.astype(np.float32), ql, db.astype(np.float32), dl, distance=distance,
                             map_at=map_ks, precision_at=prec_ks, knn_k=7, chunk_size=chunk)
    dist = float32_distances(q, db, distance)
    assert_matches(res, closed_form_evaluate(dist, ql.tolist(), dl.tolist(), map_ks, prec_ks, 7), tol=1e-12)
    assert res.queries_without_relevant == int(np.count_nonzero(ql == 2))


@pytest.mark.parametrize("exclude_self", [False, True])
def test_float_path_without_torch_gives_the_same_results(monkeypatch, exclude_self):
    monkeypatch.setenv("DEEPHASH_KERNELS", "numpy")  # torch is used by the numpy path only
    rng = np.random.default_rng(41)
    db = np.concatenate([rng.normal(size=(500, 5)), np.repeat(rng.normal(size=(20, 5)), 6, axis=0)])
    db = db.astype(np.float32)
    dl = rng.integers(0, 3, db.shape[0])
    q, ql = (db, dl) if exclude_self else (rng.normal(size=(30, 5)).astype(np.float32), rng.integers(0, 3, 30))
    kw = dict(distance="euclidean", map_at=(10, 100), precision_at=(5, 50), knn_k=5, exclude_self=exclude_self)
    with_torch = evaluate_retrieval(q, ql, db, dl, **kw).to_dict()
    monkeypatch.setattr(metrics_mod, "_torch", lambda: None)
    without = evaluate_retrieval(q, ql, db, dl, **kw).to_dict()
    assert without == with_torch


def test_float_pass_restores_torch_threads():
    import torch

    before = torch.get_num_threads()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    evaluate_retrieval(x, rng.integers(0, 2, 20), x, rng.integers(0, 2, 20), distance="euclidean")
    assert torch.get_num_threads() == before
