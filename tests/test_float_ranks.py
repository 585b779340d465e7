"""The compiled float rank kernel (deephash_cli/float_ranks.py, numba) against the numpy path and
the naive per-query references of test_metrics.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli import float_ranks
from deephash_cli.errors import DeephashError
from deephash_cli.metrics import evaluate_retrieval
from test_metrics import assert_matches, closed_form_evaluate, float32_distances, naive_evaluate

pytest.importorskip("numba")


def both_paths(monkeypatch, *args, **kwargs) -> tuple[dict, dict]:
    """evaluate_retrieval(...).to_dict() with the numba kernel and with the numpy path."""
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numba")
    fast = evaluate_retrieval(*args, **kwargs)
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numpy")
    slow = evaluate_retrieval(*args, **kwargs)
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numba")
    return fast, slow


def assert_same(fast, slow, tol=1e-9):
    a, b = fast.to_dict(), slow.to_dict()
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, dict):
            assert a[key].keys() == value.keys()
            for sub in value:
                assert abs(a[key][sub] - value[sub]) <= tol, (key, sub, a[key][sub], value[sub])
        elif isinstance(value, float):
            assert abs(a[key] - value) <= tol, (key, a[key], value)
        else:
            assert a[key] == value, key


def test_kernel_selection(monkeypatch):
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numpy")
    assert float_ranks.kernel() is None
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numba")
    assert float_ranks.kernel() is not None
    assert float_ranks.kernel(pairs=10) is not None  # forced: any size
    monkeypatch.delenv(float_ranks.KERNELS_ENV)
    assert float_ranks.kernel() is not None  # auto: numba when importable
    assert float_ranks.kernel(pairs=float_ranks.AUTO_MIN_PAIRS) is not None
    assert float_ranks.kernel(pairs=float_ranks.AUTO_MIN_PAIRS - 1) is None  # small: numpy, no numba import
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "fortran")
    with pytest.raises(DeephashError, match="DEEPHASH_KERNELS"):
        float_ranks.kernel()


def test_missing_numba_falls_back_or_raises(monkeypatch):
    def no_numba():
        raise ImportError("numba")

    monkeypatch.setattr(float_ranks, "_compiled", None)
    monkeypatch.setattr(float_ranks, "_load", no_numba)
    monkeypatch.delenv(float_ranks.KERNELS_ENV, raising=False)
    assert float_ranks.kernel() is None
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numba")
    with pytest.raises(DeephashError, match="not installed"):
        float_ranks.kernel()


@pytest.mark.parametrize("seed", range(4))
def test_tiny_cases_match_the_permutation_reference(monkeypatch, seed):
    # All orderings inside tie groups enumerated (integer features: exact distances, many ties).
    rng = np.random.default_rng(500 + seed)
    nq, ndb = int(rng.integers(1, 4)), int(rng.integers(2, 8))
    q, db = rng.integers(-1, 2, (nq, 2)), rng.integers(-1, 2, (ndb, 2))
    ql, dl = rng.integers(0, 2, nq), rng.integers(0, 2, ndb)
    monkeypatch.setenv(float_ranks.KERNELS_ENV, "numba")
    res = evaluate_retrieval(q.astype(np.float32), ql, db.astype(np.float32), dl, distance="euclidean",
                             map_at=(1, 3), precision_at=(2, 5), knn_k=3)
    ref = naive_evaluate(float32_distances(q, db, "euclidean"), ql.tolist(), dl.tolist(), (1, 3), (2, 5), 3)
    assert_matches(res, ref, tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    nq=st.integers(1, 10),
    ndb=st.integers(2, 250),
    dim=st.integers(1, 4),
    spread=st.sampled_from([0, 1, 3, 1000]),
    n_labels=st.integers(1, 4),
    distance=st.sampled_from(["euclidean", "cosine"]),
    exclude_self=st.booleans(),
    chunk=st.sampled_from([None, 1, 4]),
    knn_k=st.integers(1, 300),
    tiny_tables=st.booleans(),
    knn_block=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_kernel_equals_numpy_path_and_reference(
    nq, ndb, dim, spread, n_labels, distance, exclude_self, chunk, knn_k, tiny_tables, knn_block, seed
):
    # Integer features: exact distances.  spread 0 makes every vector zero (all distances tie;
    # cosine: zero vectors), small spreads give duplicates and massive ties, 1000 mostly distinct
    # distances.  Query labels can be absent from the database (label n_labels); knn_k and the
    # cutoffs can exceed the database.  tiny_tables: 4 buckets, so buckets hold many relevant
    # distances (linear scans of crowded buckets, np.sort runs).  knn_block: blocks of 1 or 3 items for
    # the k-NN bound, so that rows have more blocks than k and only some blocks are scanned.
    rng = np.random.default_rng(seed)
    db = rng.integers(-spread, spread + 1, (ndb, dim))
    dl = rng.integers(0, n_labels, ndb)
    if exclude_self:
        q, ql = db, dl
    else:
        q, ql = rng.integers(-spread, spread + 1, (nq, dim)), rng.integers(0, n_labels + 1, nq)
    map_ks, prec_ks = (1, 10, 100, 1000), (1, 10, 1000)
    kw = dict(distance=distance, map_at=map_ks, precision_at=prec_ks, knn_k=knn_k, chunk_size=chunk,
              exclude_self=exclude_self)
    with pytest.MonkeyPatch.context() as monkeypatch:  # a fixture would not be reset between examples
        if tiny_tables:
            monkeypatch.setattr(float_ranks, "buckets_for", lambda n: 4)
        if knn_block:
            monkeypatch.setattr(float_ranks, "KNN_BLOCK", knn_block)
        fast, slow = both_paths(monkeypatch, q.astype(np.float32), ql, db.astype(np.float32), dl, **kw)
    assert_same(fast, slow)
    ref = closed_form_evaluate(float32_distances(q, db, distance), ql.tolist(), dl.tolist(), map_ks, prec_ks, knn_k,
                               exclude_self)
    assert_matches(fast, ref, tol=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_continuous_features_with_planted_ties(monkeypatch, distance, exclude_self):
    # Realistic rows (distinct float distances) with duplicated database vectors, so relevant and
    # irrelevant items tie exactly; several chunks and label runs; cutoffs given out of order (the
    # kernel records each AP@K / P@K sum when the walk first reaches K).
    rng = np.random.default_rng(61)
    db = np.concatenate([rng.normal(size=(2500, 8)), np.repeat(rng.normal(size=(50, 8)), 6, axis=0)])
    db = db.astype(np.float32)
    dl = rng.integers(0, 4, db.shape[0])
    q, ql = (db, dl) if exclude_self else (rng.normal(size=(60, 8)).astype(np.float32), rng.integers(0, 5, 60))
    kw = dict(distance=distance, map_at=(500, 10, 37), precision_at=(100, 5), knn_k=7, exclude_self=exclude_self,
              chunk_size=None if exclude_self else 17)
    fast, slow = both_paths(monkeypatch, q, ql, db, dl, **kw)
    assert_same(fast, slow, tol=1e-12)
    assert fast.map_optimistic > fast.map_pessimistic  # the planted ties are there


def test_non_prescaled_euclidean_matches(monkeypatch):
    # Features with tiny entries: -2·q is not applied before the matmul (subnormal products), the
    # kernel multiplies the matmul output by -2 itself.
    rng = np.random.default_rng(71)
    db = (rng.normal(size=(300, 4)) * 1e-20).astype(np.float32)
    dl = rng.integers(0, 3, 300)
    q = (rng.normal(size=(20, 4)) * 1e-20).astype(np.float32)
    ql = rng.integers(0, 3, 20)
    fast, slow = both_paths(monkeypatch, q, ql, db, dl, distance="euclidean", map_at=(50,), knn_k=5)
    assert_same(fast, slow, tol=1e-12)


def test_output_buffers_refill_across_rows(monkeypatch):
    # Every distance ties (zero vectors): each row returns all n items as k-NN candidates and one
    # tie group, so the kernel stops and resumes several times within a chunk.
    db = np.zeros((200, 3), dtype=np.float32)
    dl = np.arange(200) % 3
    q = np.zeros((25, 3), dtype=np.float32)
    ql = np.arange(25) % 4
    fast, slow = both_paths(monkeypatch, q, ql, db, dl, distance="euclidean", map_at=(7,), precision_at=(30,),
                            knn_k=5)
    assert_same(fast, slow, tol=1e-12)
    assert fast.map == pytest.approx(slow.map, abs=1e-15)


def test_wide_table_for_many_relevant_items(monkeypatch):
    # Rows with more relevant items than an int16 table holds use an int32 table (a separate
    # compiled specialization); forced here on small data, with crowded buckets and planted ties.
    monkeypatch.setattr(float_ranks, "TABLE_INT16_MAX_R", 0)
    monkeypatch.setattr(float_ranks, "buckets_for", lambda n: 16)
    rng = np.random.default_rng(83)
    db = np.concatenate([rng.normal(size=(400, 6)), np.repeat(rng.normal(size=(20, 6)), 5, axis=0)])
    db = db.astype(np.float32)
    dl = rng.integers(0, 3, db.shape[0])
    q, ql = rng.normal(size=(30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    scratch = []
    real = float_ranks.FloatRankScratch
    monkeypatch.setattr(float_ranks, "FloatRankScratch", lambda *a: scratch.append(real(*a)) or scratch[-1])
    fast, slow = both_paths(monkeypatch, q, ql, db, dl, distance="euclidean", map_at=(50,), precision_at=(20,),
                            knn_k=5)
    assert scratch and all(s.table.dtype == np.int32 for s in scratch)
    assert_same(fast, slow, tol=1e-12)
