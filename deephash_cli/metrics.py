r"""Retrieval metrics with exact, tie-aware handling of equal distances (pure numpy).

Every number deephash reports for retrieval comes from :func:`evaluate_retrieval`.
The definitions below are the public contract.

Setting
-------
There are ``Q`` queries and a database of ``n`` items, each with an integer label.
A database item is *relevant* to a query when it has the same label.  ``R`` is the
number of relevant items in the whole database for that query.

Distances
---------
* ``euclidean``: L2 distance.  Computed per query chunk in float32 as
  ``max(‖q‖² + ‖d‖² − 2 q·d, 0)`` (the squared distance, which orders items exactly as
  the distance does; faiss' ``IndexFlatL2`` computes the same quantity).
* ``cosine``: ``1 − cos(q, d)``.  Items are ranked by ``−cos`` (the same order, without
  the extra rounding of ``1 − x``).  A zero vector has no direction: we define its
  cosine similarity with every vector as 0, i.e. cosine distance 1 to everything
  (never NaN).  Inputs containing NaN or infinity are rejected.
* ``hamming``: number of differing bits between packed binary codes (see
  :mod:`deephash_cli.codes`), an integer in ``0..bits``.

Ranking and ties
----------------
The database is ranked by distance, ascending.  Items at *exactly equal* distance
(equal integers for Hamming; bit-identical computed float32 values for the float
distances) form a *tie group*; no order inside a tie group is privileged.  Writing
``rel(k)`` for the relevance of the item at rank ``k`` and ``P(k)`` for the precision
of the top ``k``:

* ``AP = (1/R) Σ_{k=1..n} P(k)·rel(k)``.  Reported ``map`` is the **tie-aware** value:
  the expected AP over all orderings inside every tie group, each ordering equally
  likely (McSherry & Najork, ECIR 2008; He et al., "Hashing as Tie-Aware Learning to
  Rank", CVPR 2018).  Because ``R`` is fixed the expectation is linear and exact in
  closed form: inside a tie group of ``m`` items of which ``r`` are relevant,
  ``E[rel(k)] = r/m`` and ``E[rel(j)·rel(k)] = r(r−1)/(m(m−1))`` for ``j ≠ k``.  For a
  group preceded by ``N`` items of which ``Rb`` are relevant this gives the group's
  contribution to ``R·AP``::

      Σ_{i=1..m} [ (r/m)(Rb+1) + (i−1)·r(r−1)/(m(m−1)) ] / (N+i)

  which is evaluated with harmonic-number differences, so the cost per query is one
  distance pass plus O(number of tie groups holding a relevant item).
* ``map_optimistic`` / ``map_pessimistic``: AP when, inside every tie group, the
  relevant items are ranked first / last.  ``map_pessimistic ≤ map ≤ map_optimistic``;
  all three are equal when there are no ties.
* ``mAP@K``: ``(1/min(R, K)) Σ_{k=1..K} P(k)·rel(k)``, expected under ties (also linear,
  so also exact; a tie group straddling rank ``K`` contributes the expectation over its
  first ``K − N`` positions).  With ``K ≥ n`` it equals AP.  Note: DeepHash-pytorch's
  ``CalcTopMap`` divides by the number of relevant items *retrieved* in the top ``K``
  instead of ``min(R, K)``; we use ``min(R, K)`` because it is exact under ties and
  makes mAP@all coincide with mAP.  Our mAP@K is therefore ≤ theirs on the same
  ranking.
* ``precision@K``: expected number of relevant items in the top ``K``, divided by
  ``K``.  A tie group straddling rank ``K`` contributes ``r·(K − N)/m`` relevant
  items (the hypergeometric expectation).  ``K`` larger than the database is
  clamped to the database size ``n`` (precision of the whole ranked list).
* A query with no relevant item in the database (``R = 0``) contributes AP = 0,
  mAP@K = 0 (and precision@K = 0) and is counted in the means, as DeepHash-pytorch
  does; how many there were is reported as ``queries_without_relevant``.
* ``knn_accuracy``: the ``k = min(knn_k, n)`` nearest database items vote, tie-aware like
  mAP: items closer than the k-th smallest distance vote 1 each, and the ``k − n_closer``
  remaining votes are shared equally by all items *at* the k-th distance (the expected vote
  over all orderings of that tie group).  Hamming codes tie massively at short code lengths;
  breaking those ties by database position would favour whichever classes are stored first.
  The label with most votes wins; equal votes go to the label with the nearest member, then
  to the smallest label.  Accuracy is the fraction of queries whose winning label equals
  their own.  Without distance ties this is the plain k-NN majority vote.
* Leave-one-out (``exclude_self=True``, query set = database): query ``i``'s own item
  ``i`` is removed from its ranking; all definitions above then apply with ``n − 1``
  items and ``R − 1`` relevant ones (``R − 1 = 0`` counts as a query without relevant).

Implementation
--------------
Queries are processed in chunks (``chunk_size`` queries at a time; by default about 4M
query-database pairs for codes, 16M for float features) by two worker threads, so the
extra memory stays bounded (about 170 MB for float features, measured with tracemalloc
at 10,000 x 50,000; far less for codes) whatever the database size; only a row of one
query's distances grows with ``n``.

* Hamming: one XOR + popcount pass over uint64 words gives a chunk's distances; a
  per-query histogram over 0..bits of all items and of the relevant items (the
  database is grouped by label, so they are one slice) gives every tie group's size
  and relevant count, and the closed forms above need O(bits) work per query.  The
  histograms use ``torch.bincount`` when torch is importable (about 2x faster than
  ``np.bincount`` and it releases the GIL), numpy otherwise; results are identical.
* Float: one matmul per chunk (the two workers' matmuls share the cores: BLAS runs
  ``cores / 2`` threads each while the pass lasts), then blocks of 8 rows of one label.
  Every distance gets a bucket ``trunc((d − row minimum) · scale)`` (65,534 buckets over
  the row's range, non-decreasing in d).  The row's relevant distances are sorted (radix
  argsort by bucket, then by value inside shared buckets); a per-row table over the
  buckets gives every item the number q of relevant distances in lower buckets, and a
  comparison with the first (then the second, rarely more) relevant distance of its own
  bucket completes q = number of relevant distances ≤ the item, and tells whether it
  equals one.  A histogram of q over the irrelevant items gives every relevant item's
  rank and its exact tie group: a few passes over the distances, no sort of the row.
  Table lookups are ``torch.index_select`` with int32 indices and the histogram
  ``torch.bincount`` (numpy without torch; same results), with torch kept to one thread
  per worker during the pass.
* k-NN: for codes, candidates ``distance <= k-th smallest distance`` (from the
  histogram); for float features, the largest of the minima of k column blocks bounds
  the k-th smallest distance and the candidates below it give it exactly.  The
  candidates up to the k-th distance then vote as defined above.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from deephash_cli import float_ranks
from deephash_cli.codes import as_words, distance_dtype, hamming_words, n_bytes
from deephash_cli.errors import DeephashError

__all__ = ["RetrievalResult", "evaluate_retrieval", "DISTANCES"]

DISTANCES = ("euclidean", "cosine", "hamming")

# Harmonic numbers H(x) = Σ_{k=1..x} 1/k.  Below this bound they come from an exact table;
# above it from the asymptotic expansion, whose first omitted term (1/(252 x^6)) is then
# ~1e-21, far below float64 resolution.
_H_EXACT = 1024
_EULER_GAMMA = 0.57721566490153286061


def _harmonic_table() -> np.ndarray:
    """H(0..._H_EXACT-1) as float64, accumulated in extended precision then rounded once."""
    inv = np.ones(_H_EXACT, dtype=np.longdouble)
    inv[1:] /= np.arange(1, _H_EXACT, dtype=np.longdouble)
    inv[0] = 0
    return np.cumsum(inv).astype(np.float64)


_H_TABLE = _harmonic_table()
_H_TABLE.flags.writeable = False  # a constant, never state


def _harmonic_asym(xf: np.ndarray) -> np.ndarray:
    """H(x) for float64 x >= _H_EXACT from the asymptotic expansion."""
    inv2 = 1.0 / (xf * xf)
    return np.log(xf) + _EULER_GAMMA + 0.5 / xf - inv2 / 12.0 + inv2 * inv2 / 120.0


def _harmonic(x: np.ndarray) -> np.ndarray:
    """H(x) for int64 x >= 0 (float64)."""
    x = np.asarray(x, dtype=np.int64)
    out = np.empty(x.shape, dtype=np.float64)
    small = x < _H_EXACT
    out[small] = _H_TABLE[x[small]]
    large = ~small
    out[large] = _harmonic_asym(x[large].astype(np.float64))
    return out


def _harmonic_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """H(b) − H(a) = Σ_{k=a+1..b} 1/k for int64 arrays with 0 <= a <= b (float64).

    Subtracting two ~10-valued harmonic numbers would lose up to ~1e-8 relative accuracy
    for short spans deep in a large ranking, so for a >= _H_EXACT the difference of the
    asymptotic expansions is formed term by term (log1p keeps full relative precision).
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    out = np.empty(a.shape, dtype=np.float64)
    small = a < _H_EXACT
    out[small] = _harmonic(b[small]) - _H_TABLE[a[small]]
    large = ~small
    af = a[large].astype(np.float64)
    bf = b[large].astype(np.float64)
    span = bf - af
    out[large] = (
        np.log1p(span / af)
        - span / (2.0 * af * bf)
        + span * (af + bf) / (12.0 * af * af * bf * bf)
        + (1.0 / (bf * bf * bf * bf) - 1.0 / (af * af * af * af)) / 120.0
    )
    return out


@dataclass(frozen=True)
class RetrievalResult:
    """All retrieval metrics of one evaluation (definitions in the module docstring)."""

    map: float
    map_optimistic: float
    map_pessimistic: float
    map_at: dict[int, float]
    precision_at: dict[int, float]
    knn_accuracy: float
    knn_k: int  # effective k = min(requested knn_k, database size)
    queries: int
    database: int
    queries_without_relevant: int
    distance: str

    def to_dict(self) -> dict:
        """JSON-able dict; the keys of ``map_at`` / ``precision_at`` become ``str(K)``."""
        return {
            "map": float(self.map),
            "map_optimistic": float(self.map_optimistic),
            "map_pessimistic": float(self.map_pessimistic),
            "map_at": {str(k): float(v) for k, v in self.map_at.items()},
            "precision_at": {str(k): float(v) for k, v in self.precision_at.items()},
            "knn_accuracy": float(self.knn_accuracy),
            "knn_k": int(self.knn_k),
            "queries": int(self.queries),
            "database": int(self.database),
            "queries_without_relevant": int(self.queries_without_relevant),
            "distance": self.distance,
        }


# --------------------------------------------------------------------------------------
# Tie-aware closed forms over tie groups
# --------------------------------------------------------------------------------------


@dataclass
class _PerQuery:
    """Per-query metric values of one chunk (float64 arrays, one entry per chunk row)."""

    ap: np.ndarray
    ap_opt: np.ndarray
    ap_pess: np.ndarray
    ap_at: dict[int, np.ndarray] = field(default_factory=dict)
    prec_at: dict[int, np.ndarray] = field(default_factory=dict)


def _group_metrics(
    row: np.ndarray,
    before: np.ndarray,
    size: np.ndarray,
    rel_before: np.ndarray,
    rel: np.ndarray,
    n_rows: int,
    n_db: int,
    R: np.ndarray,
    map_ks: tuple[int, ...],
    prec_ks: tuple[int, ...],
) -> _PerQuery:
    """Exact tie-aware AP, optimistic/pessimistic AP, AP@K and precision@K from tie groups.

    Each entry describes one tie group that holds at least one relevant item (groups
    without relevant items contribute nothing to any of these metrics):
    row (g,) int64 query row; before (g,) int64 items ranked before the group (N);
    size (g,) int64 group size (m); rel_before (g,) int64 relevant items before it (Rb);
    rel (g,) int64 relevant items in it (r).  R (n_rows,) relevant items per query.
    Returns per-query arrays of length n_rows.
    """
    Rf = R.astype(np.float64)
    has_rel = R > 0

    def mean_over(total: np.ndarray, denom: np.ndarray) -> np.ndarray:
        return np.where(has_rel, total / np.maximum(denom, 1.0), 0.0)

    # Singleton groups (no tie; with float features almost all of them) have r = m = 1 and
    # contribute P(N+1) = (Rb+1)/(N+1) to every AP variant; only true ties need the sums.
    single = size == 1
    s_row, s_N = row[single], before[single].astype(np.float64)
    s_val = (rel_before[single] + 1.0) / (s_N + 1.0)
    multi = ~single
    row = row[multi]
    ties = _tie_group_terms(before[multi], size[multi], rel_before[multi], rel[multi], map_ks, prec_ks, n_db)

    def per_row(single_values: np.ndarray, multi_values: np.ndarray) -> np.ndarray:
        return np.bincount(s_row, weights=single_values, minlength=n_rows) + np.bincount(
            row, weights=multi_values, minlength=n_rows
        )

    out = _PerQuery(
        ap=mean_over(per_row(s_val, ties.ap), Rf),
        ap_opt=mean_over(per_row(s_val, ties.ap_opt), Rf),
        ap_pess=mean_over(per_row(s_val, ties.ap_pess), Rf),
    )
    for K in map_ks:
        out.ap_at[K] = mean_over(per_row(np.where(s_N < K, s_val, 0.0), ties.ap_at[K]), np.minimum(Rf, float(K)))
    for K in prec_ks:
        out.prec_at[K] = per_row((s_N < min(K, n_db)).astype(np.float64), ties.prec_at[K]) / min(K, n_db)
    return out


def _tie_group_terms(
    N: np.ndarray,
    m: np.ndarray,
    Rb: np.ndarray,
    r: np.ndarray,
    map_ks: tuple[int, ...],
    prec_ks: tuple[int, ...],
    n_db: int,
) -> _PerQuery:
    """Contributions of tie groups of size m >= 2 (one entry per group, not yet per query).

    N items before the group, Rb relevant ones among them, r relevant items in the group.
    Returns R·AP (expected, optimistic, pessimistic), min(R,K)·AP@K and the expected number
    of relevant items in the top K, each as a per-group array.
    """
    mf = m.astype(np.float64)
    rf = r.astype(np.float64)
    p1 = rf / mf  # E[rel(k)] inside the group
    p2 = rf * (rf - 1.0) / (mf * (mf - 1.0))  # E[rel(j) rel(k)], j != k, inside the group

    def expected_sum(first: np.ndarray) -> np.ndarray:
        """E[Σ_{i=1..first} P(N+i) rel(N+i)] over the group's first ``first`` positions."""
        s0 = _harmonic_diff(N, N + first)  # Σ_{i=1..first} 1/(N+i)
        # Σ_{i=1..first} (i−1)/(N+i) = first − (N+1)·s0
        return p1 * (Rb + 1) * s0 + p2 * np.maximum(first - (N + 1) * s0, 0.0)

    out = _PerQuery(
        ap=expected_sum(m),
        # Relevant first: ranks N+1..N+r hold relevant items, Σ (Rb+i)/(N+i) = r − (N−Rb)·Σ_{N+1..N+r} 1/k.
        ap_opt=rf - (N - Rb) * _harmonic_diff(N, N + r),
        # Relevant last: ranks N+m−r+1..N+m, Σ (Rb+t)/(N+m−r+t) = r − (N+m−r−Rb)·Σ_{N+m−r+1..N+m} 1/k.
        ap_pess=rf - (N + m - r - Rb) * _harmonic_diff(N + m - r, N + m),
    )
    for K in map_ks:
        out.ap_at[K] = expected_sum(np.clip(K - N, 0, m))
    for K in prec_ks:
        out.prec_at[K] = rf * np.clip(min(K, n_db) - N, 0, m) / mf
    return out


# --------------------------------------------------------------------------------------
# k-NN vote
# --------------------------------------------------------------------------------------

# Pairs scanned per block by the k-NN candidate selection; every candidate costs ~40 bytes
# across the index arrays, so a block's worst case (all pairs candidates) stays ~80 MB.
_KNN_BLOCK_PAIRS = 1 << 21


def _knn_predict(
    dist: np.ndarray,
    kth: np.ndarray,
    k: int,
    db_labels: np.ndarray,
    exclude_cols: np.ndarray | None = None,
) -> np.ndarray:
    """Tie-aware majority-vote label of the k nearest database items for every row of ``dist``.

    dist (q, n) real or unsigned; kth (q,) same dtype, the k-th smallest distance of each
    row; db_labels (n,) int64 label of each column; exclude_cols (q,) int64 optional column
    that row i must not use (leave-one-out). Returns (q,) int64.

    Items closer than the k-th distance vote 1 each; the ``k - n_closer`` remaining votes are
    shared equally by the items *at* the k-th distance (the expected vote over all orderings
    of that tie group, so neither database order nor label order decides a tie). The label
    with most votes wins; equal votes go to the label with the nearest member, then to the
    smallest label.
    """
    q, n = dist.shape
    classes, db_codes = np.unique(db_labels, return_inverse=True)
    pred = np.empty(q, dtype=np.int64)
    step = max(1, _KNN_BLOCK_PAIRS // max(n, 1))
    for start in range(0, q, step):
        block = dist[start : start + step]
        m = block.shape[0]
        # np.flatnonzero is ~10x faster than 2-D np.nonzero here.
        flat = np.flatnonzero(block <= kth[start : start + step, None])
        rows, cols = np.divmod(flat, n)
        if exclude_cols is not None:
            keep = cols != exclude_cols[start + rows]
            flat, rows, cols = flat[keep], rows[keep], cols[keep]
        d = block.ravel()[flat]
        pred[start : start + m] = _knn_vote(rows, db_codes[cols], d, kth[start : start + m], k, classes)
    return pred


def _knn_vote(rows: np.ndarray, codes: np.ndarray, d: np.ndarray, kth: np.ndarray, k: int, classes: np.ndarray):
    """Tie-aware vote of :func:`_knn_predict` from candidate neighbours.

    rows (c,) int64 query row of each candidate, codes (c,) its label's index in
    ``classes``, d (c,) its distance; every item at distance <= kth[row] (the k-th smallest
    distance of the row) must be among the candidates, farther ones are ignored.
    Returns the predicted label of each of the len(kth) rows.
    """
    m = kth.size
    n_cls = classes.size
    keep = d <= kth[rows]
    rows, codes, d = rows[keep], codes[keep], d[keep]
    closer = d < kth[rows]
    n_closer = np.bincount(rows[closer], minlength=m)
    n_tied = np.bincount(rows[~closer], minlength=m)
    share = (k - n_closer) / np.maximum(n_tied, 1)
    weight = np.where(closer, 1.0, share[rows])
    key = rows * n_cls + codes
    votes = np.bincount(key, weights=weight, minlength=m * n_cls).reshape(m, n_cls)
    # Nearest member of each (row, label): sort by (key, distance), first of each key.
    order = np.lexsort((d, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    nearest = np.full(m * n_cls, np.inf)
    nearest[key[order][first]] = d[order][first]
    nearest = nearest.reshape(m, n_cls)
    # Shares are rationals summed in float64: equal votes may differ in the last bits.
    leading = votes >= votes.max(axis=1, keepdims=True) - 1e-9
    return classes[np.argmin(np.where(leading, nearest, np.inf), axis=1)]


# --------------------------------------------------------------------------------------
# Per-chunk tie-group extraction
# --------------------------------------------------------------------------------------


def _label_runs(labels_sorted: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of equal values in a sorted 1-D array."""
    if labels_sorted.size == 0:
        return []
    cut = np.flatnonzero(labels_sorted[1:] != labels_sorted[:-1]) + 1
    bounds = np.concatenate(([0], cut, [labels_sorted.size]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _torch():
    """The torch module if importable, else None (imported lazily: it is slow to import)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        return None
    return torch


def _row_histograms(dist: np.ndarray, n_bins: int, n_valid: int) -> np.ndarray:
    """Per-row histogram of small non-negative integer distances.

    dist (q, w) unsigned (rows may be a strided slice), columns >= n_valid are zero padding
    (w - n_valid of them per row) -> (q, n_bins) int64 counts of the first n_valid columns.

    This is the dominant cost of the Hamming path.  torch.bincount is used when available:
    it is ~2x faster than np.bincount here and releases the GIL, so two chunks are
    histogrammed in parallel by the worker threads of ``_hamming_pass``.
    """
    q, w = dist.shape
    pad = w - n_valid
    torch = _torch() if dist.dtype == np.uint8 else None
    hist = np.empty((q, n_bins), dtype=np.int64)
    paired = dist.dtype == np.uint8 and w % 2 == 0 and 256 * n_bins <= w and dist.strides[1] == 1
    if paired and torch is not None and n_bins <= 128:
        # Count pairs of adjacent distances at once: viewed as int16 each element is
        # d[2i] + 256*d[2i+1] (< 2^15 for distances <= 127), so one bincount over w/2
        # values gives the joint histogram of (d[2i+1], d[2i]); the sum of its two
        # marginals is the histogram.  Halves the counting work.
        pairs = torch.from_numpy(np.ascontiguousarray(dist).view(np.int16))
        size = 256 * n_bins
        sub = 32  # rows whose joint histograms are held at once (32 x n_bins x 256 int64)
        for r0 in range(0, q, sub):
            r1 = min(r0 + sub, q)
            joint = torch.stack([torch.bincount(pairs[i], minlength=size) for i in range(r0, r1)])
            joint = joint.view(r1 - r0, n_bins, 256)[:, :, :n_bins]
            hist[r0:r1] = (joint.sum(dim=1) + joint.sum(dim=2)).numpy()
    elif paired and torch is None:
        # Same pairing trick with numpy (uint16 view, no sign limit).
        pairs = np.ascontiguousarray(dist).view(np.uint16)
        sub = 32
        joint = np.empty((sub, n_bins, 256), dtype=np.int64)
        for r0 in range(0, q, sub):
            r1 = min(r0 + sub, q)
            for i in range(r0, r1):
                joint[i - r0] = np.bincount(pairs[i], minlength=256 * n_bins).reshape(n_bins, 256)
            j = joint[: r1 - r0, :, :n_bins]
            hist[r0:r1] = j.sum(axis=1) + j.sum(axis=2)
    elif torch is not None:
        for i in range(q):
            hist[i] = torch.bincount(torch.from_numpy(dist[i]), minlength=n_bins).numpy()
    else:
        offsets = np.arange(q, dtype=np.intp)[:, None] * n_bins
        keys = np.add(dist, offsets, dtype=np.intp)
        hist[:] = np.bincount(keys.ravel(), minlength=q * n_bins).reshape(q, n_bins)
    if pad:
        hist[:, 0] -= pad
    return hist


def _groups_from_histograms(hist_rel: np.ndarray, hist_all: np.ndarray):
    """Tie groups with relevant items from per-distance counts (rows, distance bins)."""
    before = np.cumsum(hist_all, axis=1) - hist_all
    rel_before = np.cumsum(hist_rel, axis=1) - hist_rel
    row, col = np.nonzero(hist_rel)
    return row, before[row, col], hist_all[row, col], rel_before[row, col], hist_rel[row, col]


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_ks(ks: Iterable[int], what: str) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise DeephashError(f"{what} cutoffs must be positive integers, got {k!r}.")
        out.append(int(k))
    return tuple(dict.fromkeys(out))  # de-duplicated, order kept


def _check_labels(labels, n: int, what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise DeephashError(f"{what} labels must be a 1-D array, got shape {lab.shape}.")
    if lab.shape[0] != n:
        raise DeephashError(f"{what} has {n} items but {lab.shape[0]} labels.")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise DeephashError(f"{what} labels must be integers, got dtype {lab.dtype}.")
    return lab.astype(np.int64, copy=False)


def _check_2d(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DeephashError(f"{what} must be a 2-D (items, dims) array, got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise DeephashError(f"{what} is empty.")
    return arr


def _default_chunk(n_db: int, pair_budget: int) -> int:
    """Queries per chunk so that one chunk holds about ``pair_budget`` query-database pairs."""
    return int(max(1, min(4096, pair_budget // max(n_db, 1))))


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def evaluate_retrieval(
    query,
    query_labels,
    database,
    database_labels,
    *,
    distance: str,
    bits: int | None = None,
    map_at: Iterable[int] = (),
    precision_at: Iterable[int] = (100,),
    knn_k: int = 10,
    chunk_size: int | None = None,
    exclude_self: bool = False,
) -> RetrievalResult:
    """Rank the database for every query and compute all retrieval metrics.

    query (q, d) float32 features, or (q, ceil(bits/8)) uint8 packed codes for hamming;
    query_labels (q,) int64; database (n, d) float32 or (n, ceil(bits/8)) uint8;
    database_labels (n,) int64.  ``distance`` is 'euclidean', 'cosine' or 'hamming'
    (the latter needs ``bits``).  ``map_at`` / ``precision_at`` are the cutoffs K,
    ``knn_k`` the number of voting neighbours, ``chunk_size`` the queries processed at a
    time (None: chosen from the database size to bound memory).

    ``exclude_self=True`` is leave-one-out retrieval of a set against itself: the query
    set must be the database (same rows, same labels) and query i's own database item i
    is removed from its ranking, so every query sees n − 1 items and R − 1 relevant ones.

    Definitions are in the module docstring.  Invalid inputs raise DeephashError.
    """
    if distance not in DISTANCES:
        raise DeephashError(f"unknown distance '{distance}'; valid distances: {', '.join(DISTANCES)}.")
    map_ks = _check_ks(map_at, "mAP@K")
    prec_ks = _check_ks(precision_at, "precision@K")
    if isinstance(knn_k, bool) or not isinstance(knn_k, (int, np.integer)) or knn_k <= 0:
        raise DeephashError(f"knn_k must be a positive integer, got {knn_k!r}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0
    ):
        raise DeephashError(f"chunk_size must be a positive integer, got {chunk_size!r}.")

    q_arr = _check_2d(query, "the query set")
    db_arr = _check_2d(database, "the database")
    q_lab = _check_labels(query_labels, q_arr.shape[0], "the query set")
    db_lab = _check_labels(database_labels, db_arr.shape[0], "the database")
    if q_arr.shape[1] != db_arr.shape[1]:
        raise DeephashError(
            f"queries have {q_arr.shape[1]} columns but database items have {db_arr.shape[1]}."
        )
    n_q, n_db = q_arr.shape[0], db_arr.shape[0]
    if exclude_self:
        if n_q != n_db or not np.array_equal(q_lab, db_lab):
            raise DeephashError("exclude_self needs the query set to be the database (same rows and labels).")
        if n_db < 2:
            raise DeephashError("exclude_self needs at least 2 items.")
    n_eff = n_db - int(bool(exclude_self))  # database size each query actually ranks
    k = int(min(knn_k, n_eff))

    # Queries are processed grouped by label so each label's relevant block is one slice.
    q_order = np.argsort(q_lab, kind="stable")
    present, counts = np.unique(db_lab, return_counts=True)
    pos = np.minimum(np.searchsorted(present, q_lab), present.size - 1)
    R = np.where(present[pos] == q_lab, counts[pos], 0).astype(np.int64)  # relevant items per query
    if exclude_self:
        R -= 1  # a query's own item is always relevant to it

    if distance == "hamming":
        if bits is None:
            raise DeephashError("hamming distance needs the code length: pass bits.")
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
            raise DeephashError(f"bits must be a positive integer, got {bits!r}.")
        bits = int(bits)
        for arr, what in ((q_arr, "query codes"), (db_arr, "database codes")):
            if arr.dtype != np.uint8:
                raise DeephashError(f"{what} must be packed uint8 codes for hamming distance, got dtype {arr.dtype}.")
            if arr.shape[1] != n_bytes(bits):
                raise DeephashError(f"{what} have {arr.shape[1]} bytes per code but {bits} bits need {n_bytes(bits)}.")
            if bits % 8 and np.any(arr[:, -1] & np.uint8(0xFF >> (bits % 8))):
                raise DeephashError(
                    f"{what} have non-zero padding bits beyond bit {bits}; pack them with pack_codes."
                )
        # ~4M pairs (4 MB of uint8 distances) keeps the XOR/popcount/histogram passes
        # cache-friendly; measured ~2x faster than 100 MB chunks.
        chunk = chunk_size or _default_chunk(n_db, 1 << 22)
        chunks = _hamming_pass(q_arr, q_lab, q_order, db_arr, db_lab, bits, k, chunk, bool(exclude_self))
    else:
        if bits is not None:
            raise DeephashError(f"bits only applies to hamming distance, not {distance}.")
        if not np.issubdtype(q_arr.dtype, np.number) or not np.issubdtype(db_arr.dtype, np.number):
            raise DeephashError(f"{distance} distance needs numeric feature arrays.")
        qf = np.asarray(q_arr, dtype=np.float32)
        dbf = np.asarray(db_arr, dtype=np.float32)
        if not (np.isfinite(qf).all() and np.isfinite(dbf).all()):
            raise DeephashError("features contain NaN or infinite values.")
        # Squared norms (and so the float32 distances) must not overflow to inf, or
        # inf - inf = NaN would silently corrupt the ranking.
        largest = max(float(np.einsum("ij,ij->i", a, a, dtype=np.float64).max()) for a in (qf, dbf))
        if 4.0 * largest > float(np.finfo(np.float32).max) / 4.0:
            raise DeephashError("features are too large for float32 distances (squared norm above ~2e37); rescale them.")
        # ~16M pairs (64 MB of float32 distances) per chunk and worker: large enough for an
        # efficient matmul (every call re-packs the whole database: 167-row chunks measured
        # 3.45 ns per pair, 335-row ones 2.9, one thread); the rank work then runs on blocks of
        # a few rows.
        chunk = chunk_size or _default_chunk(n_db, _FLOAT_CHUNK_PAIRS)
        chunks = _float_pass(
            qf, q_lab, q_order, dbf, db_lab, distance, k, chunk, bool(exclude_self), R[q_order], n_eff, map_ks, prec_ks
        )

    # Per-query values, rows in q_order; tie groups (hamming) are turned into metrics chunk
    # by chunk so their arrays never exceed one chunk; the float pass returns metrics.
    R_sorted = R[q_order]
    ap, ap_opt, ap_pess = (np.empty(n_q) for _ in range(3))
    ap_at = {K: np.empty(n_q) for K in map_ks}
    prec = {K: np.empty(n_q) for K in prec_ks}
    pred = np.empty(n_q, dtype=np.int64)
    for c0, c1, per_q, chunk_pred in chunks:
        if not isinstance(per_q, _PerQuery):  # hamming: tie groups
            per_q = _group_metrics(*per_q, c1 - c0, n_eff, R_sorted[c0:c1], map_ks, prec_ks)
        ap[c0:c1], ap_opt[c0:c1], ap_pess[c0:c1] = per_q.ap, per_q.ap_opt, per_q.ap_pess
        for K in map_ks:
            ap_at[K][c0:c1] = per_q.ap_at[K]
        for K in prec_ks:
            prec[K][c0:c1] = per_q.prec_at[K]
        pred[c0:c1] = chunk_pred
    return RetrievalResult(
        map=float(ap.mean()),
        map_optimistic=float(ap_opt.mean()),
        map_pessimistic=float(ap_pess.mean()),
        map_at={K: float(v.mean()) for K, v in ap_at.items()},
        precision_at={K: float(v.mean()) for K, v in prec.items()},
        knn_accuracy=float(np.mean(pred == q_lab[q_order])),
        knn_k=k,
        queries=n_q,
        database=n_db,
        queries_without_relevant=int(np.count_nonzero(R == 0)),
        distance=distance,
    )


def _pipelined(process, n_tasks: int, workers: int):
    """Yield ``process(i)`` for i = 0..n_tasks-1 in order, computed by worker threads.

    numpy ufuncs, BLAS, np.sort and torch.bincount release the GIL, so two chunks progress
    in parallel on two cores.  At most ``workers + 1`` tasks are pending at a time, so
    ``process`` may reuse buffer ``i % (workers + 1)`` and memory stays bounded.
    """
    if workers <= 1:
        for i in range(n_tasks):
            yield process(i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(process, i) for i in range(min(workers + 1, n_tasks)))
        next_i = len(pending)
        while pending:
            result = pending.popleft().result()
            if next_i < n_tasks:
                pending.append(pool.submit(process, next_i))
                next_i += 1
            yield result


def _blas_threads(n: int | None):
    """Context limiting numpy's BLAS to ``n`` threads (None: unchanged; also unchanged when
    threadpoolctl, a scikit-learn dependency, is missing)."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


@contextlib.contextmanager
def _torch_one_thread():
    """Context in which torch runs every op on the calling thread (its setting is restored
    after).  The float pass calls torch.bincount from its worker threads once per block of
    rows; torch's own intra-op threads (it checks the input's min and max in parallel) would
    fork and join on every call and compete with the workers for the cores."""
    torch = _torch()
    if torch is None:  # pragma: no cover - torch is a project dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _workers(n_tasks: int) -> int:
    """Worker threads for the chunk pipeline: at most 2 (more only adds memory traffic)."""
    return max(1, min(2, os.cpu_count() or 1, n_tasks))


def _hamming_pass(q_codes, q_lab, q_order, db_codes, db_lab, bits, k, chunk, exclude_self=False):
    """Yield (c0, c1, tie groups, k-NN predictions) per chunk of rows c0:c1 of ``q_order``.

    Tie groups have chunk-local row numbers.  ``k=None`` skips the k-NN vote (its
    predictions are then None).

    Per query chunk: one XOR/popcount pass gives the distances (rows, n) uint8/uint16;
    a per-row histogram over 0..bits gives the tie-group sizes, and the histogram of
    the relevant columns the relevant counts.  The database is reordered by label so a
    label's relevant columns are one contiguous slice.  The exact tie-aware metrics then
    need O(bits) work per query.

    """
    n_q = q_order.size
    db_order = np.argsort(db_lab, kind="stable")
    db_lab_sorted = db_lab[db_order]
    db_position = np.empty_like(db_order)
    db_position[db_order] = np.arange(db_order.size)  # original index -> column
    blocks = {int(db_lab_sorted[a]): (a, b) for a, b in _label_runs(db_lab_sorted)}
    db_words = as_words(db_codes[db_order])
    n_db = db_words.shape[0]
    n_bins = bits + 1
    q_words = as_words(q_codes)
    q_lab_sorted = q_lab[q_order]
    width = n_db + (n_db % 2)  # even width allows the paired histogram; the pad column stays 0
    rows = min(chunk, n_q)
    starts = list(range(0, n_q, chunk))
    workers = _workers(len(starts))
    # One distance buffer per chunk that can be pending in _pipelined.
    buffers = [np.zeros((rows, width), dtype=distance_dtype(bits)) for _ in range(min(workers + 1, len(starts)))]

    def process(i: int):
        c0, c1 = starts[i], min(starts[i] + chunk, n_q)
        dist = buffers[i % len(buffers)][: c1 - c0]
        hamming_words(q_words[q_order[c0:c1]], db_words, dist[:, :n_db])
        hist_all = _row_histograms(dist, n_bins, n_db)
        hist_rel = np.zeros_like(hist_all)
        for a, b in _label_runs(q_lab_sorted[c0:c1]):
            block = blocks.get(int(q_lab_sorted[c0 + a]))
            if block is None:
                continue  # no relevant item in the database: R = 0
            hist_rel[a:b] = _row_histograms(dist[a:b, block[0] : block[1]], n_bins, block[1] - block[0])
        self_cols = None
        if exclude_self:
            # Leave-one-out: remove each query's own (always relevant) item from both counts.
            self_cols = db_position[q_order[c0:c1]]
            local = np.arange(c1 - c0)
            d_self = dist[local, self_cols].astype(np.intp)
            hist_all[local, d_self] -= 1
            hist_rel[local, d_self] -= 1
        # All returned arrays are copies, so the buffer can be reused once this is consumed.
        groups = _groups_from_histograms(hist_rel, hist_all)
        pred = None
        if k is not None:
            # k-th smallest distance of each row: first bin where the cumulative count reaches k.
            kth = np.argmax(np.cumsum(hist_all, axis=1) >= k, axis=1).astype(dist.dtype)
            pred = _knn_predict(dist[:, :n_db], kth, k, db_lab_sorted, self_cols)
        return c0, c1, groups, pred

    yield from _pipelined(process, len(starts), workers)


# --------------------------------------------------------------------------------------
# Float features: ranks of the relevant items from per-row bucket tables
# --------------------------------------------------------------------------------------

# Value buckets per query row.  Bucket _FLOAT_BUCKETS - 1 is reserved for the query's own
# item under leave-one-out; the distances use buckets 0.._FLOAT_BUCKETS - 2.
_FLOAT_BUCKETS = 1 << 16
# Query-database pairs per chunk of the float pass (one float32 distance buffer per worker).
_FLOAT_CHUNK_PAIRS = 1 << 24
# Rows processed together after the matmul: their scratch arrays (~2 MB per row) stay in cache.
_FLOAT_BLOCK_ROWS = 8
# Rows whose ranks are turned into metrics together (fewer calls; bounded temporaries).
_FLOAT_SUM_ROWS = 32
# Relevant items of one bucket compared one by one before falling back to binary search.
_FLOAT_SCAN = 8


def _monotone_int32(a: np.ndarray) -> np.ndarray:
    """int32 keys ordered like the float32 values ``a`` (no NaN; -0.0 sorts below +0.0)."""
    bits = a.view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _sort_relevant(values: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row of ``values`` (rows, R) float32 (no NaN, no -0.0) exactly, given buckets
    (rows, R) uint16 non-decreasing in the value.  Returns the sorted values and buckets.

    A stable radix argsort by bucket (numpy radix-sorts 16-bit integers) orders all but the
    items sharing a bucket.  Those runs are short (mostly pairs): a few odd-even transposition
    passes, each swapping the out-of-order neighbours of one column parity, sort them; what
    is left after _FLOAT_SCAN passes (long runs) is sorted by (row, value).  Measured faster
    than np.sort of the values.
    """
    rows, R = values.shape
    perm = np.argsort(buckets, axis=1, kind="stable")
    perm += (np.arange(rows) * R)[:, None]
    rs = values.take(perm, mode="clip")  # flat takes: faster than take_along_axis
    rbs = buckets.take(perm, mode="clip")
    if R < 2:
        return rs, rbs
    same = rbs[:, 1:] == rbs[:, :-1]
    p = np.flatnonzero(same)  # neighbours sharing a bucket, flat in (rows, R - 1)
    if not p.size:
        return rs, rbs
    j = p + p // (R - 1)  # left neighbour, flat in (rows, R)
    odd = (j - p // (R - 1) * R) % 2 == 1  # its column parity
    flat = rs.reshape(-1)
    for sweep in range(2 * _FLOAT_SCAN):
        bad = flat[j + 1] < flat[j]
        if not bad.any():
            return rs, rbs
        swap = j[bad & (odd == bool(sweep % 2))]  # disjoint pairs: one column parity
        left = flat[swap]
        flat[swap] = flat[swap + 1]
        flat[swap + 1] = left
    shared = np.zeros((rows, R), dtype=bool)
    shared[:, 1:] = same
    shared[:, :-1] |= same
    pos = np.flatnonzero(shared)
    key = _monotone_int32(flat[pos]).astype(np.int64) + (pos // R) * (np.int64(1) << 32)
    flat[pos] = flat[pos][np.argsort(key)]
    return rs, rbs


def _advance(x, q, A, W, R):
    """Move q (flat index row·W + j into the sorted relevant distances A, +inf at j = R) past
    every relevant distance <= x; returns whether x equals one of them.  The loop is short:
    it only passes relevant items of x's own bucket."""
    e = np.zeros(x.size, dtype=bool)
    active = np.arange(x.size)
    for _ in range(_FLOAT_SCAN):
        if not active.size:
            return e
        v = A.take(q.take(active, mode="clip"), mode="clip")
        xa = x.take(active, mode="clip")
        e[active] |= v == xa
        active = active[v <= xa]
        q[active] += 1
    # Heavy ties (many relevant items in one bucket): binary search in the row.
    row = q.take(active, mode="clip") // W
    for r in np.unique(row).tolist():
        sel = active[row == r]
        vals = A[r * W : r * W + R]
        right = np.searchsorted(vals, x[sel], side="right")
        q[sel] = r * W + right
        e[sel] |= np.searchsorted(vals, x[sel], side="left") != right
    return e


def _min_abs_nonzero(a: np.ndarray) -> float:
    """Smallest non-zero |a| (float64; inf if all zero)."""
    mag = np.abs(a)
    return float(np.min(mag, initial=np.inf, where=mag > 0))


def _block_minima(D: np.ndarray, k: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Minima of the k column blocks of width w of every row of D, and the row minima."""
    nb, n = D.shape
    block_min = D[:, : k * w].reshape(nb, k, w).min(axis=2)
    lo = block_min.min(axis=1)
    if k * w < n:
        lo = np.minimum(lo, D[:, k * w :].min(axis=1))
    return block_min, lo


class _FloatScratch:
    """Reusable buffers of the float pass (one set per worker).

    ``inc`` keeps a clean state between blocks (zero except at row starts):
    :func:`_block_ranks` writes only the relevant buckets and restores them.
    """

    def __init__(self, rows: int, n: int):
        G, b = _FLOAT_BUCKETS, min(_FLOAT_BLOCK_ROWS, rows)
        self.dist = np.empty((rows, n), dtype=np.float32)
        self.scaled = np.empty((b, n), dtype=np.float32)
        self.idx = np.empty((b, n), dtype=np.int32)  # row·G + bucket
        self.q = np.empty((b, n), dtype=np.int32)  # row·(R+1) + relevant distances <= the item
        self.nxt = np.empty((b, n), dtype=np.float32)  # a relevant distance looked up per item
        self.ge = np.empty((b, n), dtype=bool)
        self.ge2 = np.empty((b, n), dtype=bool)
        self.eq = np.empty((b, n), dtype=bool)
        # Bucket tables of the block's rows, end to end (b·G entries).
        self.inc = np.zeros(b * G, dtype=np.int32)
        self.inc[G::G] = 1  # a new row adds W − R = 1 (its last bucket, reserved, holds none)
        self.L = np.empty(b * G, dtype=np.int32)


def _gather(table: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out[...] = table[idx] for a 1-D table and int32 indices of out's shape (all valid).

    torch.index_select takes the int32 indices as they are (numpy's take would first convert
    them to intp) and releases the GIL; numpy is the fallback without torch.
    """
    torch = _torch()
    if torch is None:  # pragma: no cover - torch is a project dependency
        np.take(table, idx, out=out, mode="clip")
        return
    torch.index_select(
        torch.from_numpy(table), 0, torch.from_numpy(idx.reshape(-1)), out=torch.from_numpy(out.reshape(-1))
    )


def _block_ranks(D, idx, members, self_cols, S):
    """Relevant ranks of a block of rows that share a label.

    D (b, n) float32 distances; the relevant columns are ``members`` (sorted database
    indices of the rows' label); under leave-one-out ``self_cols`` (b,) are the own items, at
    distance +inf.  idx (b, n) int32: row·G + bucket of every distance (G = _FLOAT_BUCKETS),
    the bucket non-decreasing in d along a row, the own item in the reserved bucket G − 1.

    Returns rs (b, R) the relevant distances ascending (own item dropped), cnt (b, R+1) the
    number of irrelevant items with q = j relevant distances <= them, and eqc (b, R+1) how
    many of those equal the relevant distance rs[:, j-1].

    Per row, a table over the buckets: L[u] = row·(R+1) + number of relevant distances in
    lower buckets, i.e. the flat index of the first relevant distance at or above bucket u
    in A = the sorted relevant distances (+inf after the last).  An item at distance d in
    bucket u then has q = L[u] + (d >= A[L[u]]) + (d >= A2[L[u]]), where A2[j] = A[j+1] when
    that distance shares the bucket of A[j] (else +inf); the rare items at or above a
    second relevant distance of their bucket are finished by :func:`_advance`.  Per item: one
    gather from the bucket table, two from the small relevant arrays, a few comparisons, and
    the histogram of q gives cnt.
    """
    b, n = D.shape
    G = _FLOAT_BUCKETS
    rows = np.arange(b)
    rel = D.take(members, axis=1, mode="clip")
    rb = idx.take(members, axis=1, mode="clip")
    rb -= (rows * G).astype(np.int32)[:, None]
    rs, rbs = _sort_relevant(rel, rb.astype(np.uint16))
    if self_cols is not None:  # the own item (inf, last bucket) is sorted last
        rs, rbs = rs[:, :-1], rbs[:, :-1]
    R = rs.shape[1]
    W = R + 1
    # L is the running sum of its increments: every relevant distance in bucket u adds 1 from
    # bucket u + 1 on (u + 1 stays inside the row: distances use buckets 0..G-2).
    inc, L = S.inc[: b * G], S.L[: b * G]
    above = (rbs + (rows * G + 1).astype(np.int32)[:, None]).reshape(-1)
    _add_ones(inc, above)
    np.cumsum(inc, out=L)
    inc[above] = 0
    A = np.full((b, W), np.inf, dtype=np.float32)
    A[:, :R] = rs
    A2 = np.full((b, W), np.inf, dtype=np.float32)
    A2[:, : R - 1] = np.where(rbs[:, 1:] == rbs[:, :-1], rs[:, 1:], np.inf)
    A, A2 = A.reshape(-1), A2.reshape(-1)
    q, nxt, ge, ge2, eq = S.q[:b], S.nxt[:b], S.ge[:b], S.ge2[:b], S.eq[:b]
    _gather(L, idx, q)
    _gather(A, q, nxt)
    np.greater_equal(D, nxt, out=ge)
    np.equal(D, nxt, out=eq)  # ties (rare)
    _gather(A2, q, nxt)
    np.greater_equal(D, nxt, out=ge2)
    np.add(ge.view(np.uint8), ge2.view(np.uint8), out=ge.view(np.uint8))  # 0, 1 or 2
    np.add(q, ge.view(np.uint8), out=q, casting="unsafe")
    q[:, members] = (rows * W + R)[:, None]  # relevant columns: counted in bin R, removed below
    eq[:, members] = False
    ge2[:, members] = False
    qf = q.reshape(-1)
    more = np.flatnonzero(ge2)  # at or above a 2nd relevant distance of the bucket (rare)
    if more.size:
        g = qf.take(more) - 1  # row·W + index of that 2nd relevant distance: <= x
        e = _advance(D.reshape(-1).take(more), g, A, W, R)
        qf[more] = g
        eq.reshape(-1)[more[e]] = True
    eq_pos = np.flatnonzero(eq)
    cnt = _bincount(qf, b * W)
    cnt[rows * W + R] -= members.size
    eqc = np.bincount(qf.take(eq_pos), minlength=b * W)
    return np.ascontiguousarray(rs), cnt.reshape(b, W), eqc.reshape(b, W)


def _add_ones(counts: np.ndarray, at: np.ndarray) -> None:
    """counts[at] += 1 for every entry of ``at`` (repeats add up); counts int32 1-D.
    torch's index_add_ (when importable) is several times faster than np.add.at."""
    torch = _torch()
    if torch is None:  # pragma: no cover - torch is a project dependency
        np.add.at(counts, at, 1)
        return
    index = torch.from_numpy(at).long()
    torch.from_numpy(counts).index_add_(0, index, torch.ones(index.numel(), dtype=torch.int32))


def _bincount(x: np.ndarray, size: int) -> np.ndarray:
    """np.bincount(x, minlength=size) for a 1-D array of small non-negative integers; torch's
    (when importable) is faster on int32 and releases the GIL, so both chunk workers count
    at once."""
    torch = _torch()
    if torch is None:  # pragma: no cover - torch is a project dependency
        return np.bincount(x, minlength=size)
    return torch.bincount(torch.from_numpy(x), minlength=size).numpy()


def _tie_groups(rs: np.ndarray, eqc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last flat index (row·R + j) of every tie group holding relevant items that
    is not a single item: runs of equal relevant distances, and relevant distances equalled
    by irrelevant items (eqc[:, j+1] > 0 for the run ending at j)."""
    b, R = rs.shape
    if R > 1:
        p = np.flatnonzero(rs[:, 1:] == rs[:, :-1])
        p += p // (R - 1)  # rs[j] == rs[j+1], flat in (b, R)
    else:
        p = np.zeros(0, dtype=np.int64)
    brk = np.ones(p.size, dtype=bool)
    brk[1:] = p[1:] != p[:-1] + 1
    starts = p[brk]
    ends = np.append(p[np.flatnonzero(brk)[1:] - 1], p[-1:]) + 1
    lone = np.flatnonzero(eqc[:, 1:])  # group ends with irrelevant ties
    if ends.size:
        at = np.minimum(np.searchsorted(ends, lone), ends.size - 1)
        lone = lone[ends[at] != lone]
    first = np.concatenate((starts, lone))
    last = np.concatenate((ends, lone))
    return first, last


def _rank_sums(rs, cnt, eqc, n_db, map_ks, prec_ks):
    """Per-row numerators (R·AP variants, min(R,K)·AP@K, relevant count in the top K) of the
    relevant items that are alone in their tie group, from the output of
    :func:`_block_ranks`; and the true tie groups as (row, N, m, Rb, r) arrays, whose terms
    the caller adds (see :func:`_tie_group_terms`)."""
    b, R = rs.shape
    # Items before the group starting at relevant index j: j relevant + irrelevant with q <= j.
    before = np.cumsum(cnt, axis=1)[:, :R]
    before += np.arange(R)
    # Every relevant item taken as a singleton group: P(before + 1) = (j + 1) / (before + 1);
    # the members of true tie groups are removed below.
    terms = np.arange(1, R + 1, dtype=np.float64) / (before + 1.0)
    ap = terms.sum(axis=1)
    out = _PerQuery(ap=ap, ap_opt=ap.copy(), ap_pess=ap.copy())
    # before is increasing along a row: the items before rank K are a prefix.
    for K in map_ks:
        out.ap_at[K] = np.where(before < K, terms, 0.0).sum(axis=1)
    for K in prec_ks:
        out.prec_at[K] = np.count_nonzero(before < min(K, n_db), axis=1).astype(np.float64)
    first, last = _tie_groups(rs, eqc)
    if not first.size:
        return out, None
    size = last - first + 1
    grow = first // R
    # Remove the members' singleton terms.
    pos = np.repeat(first - np.cumsum(size) + size, size) + np.arange(size.sum())
    prow = pos // R
    bpos = before.reshape(-1)[pos]
    term = (pos - prow * R + 1.0) / (bpos + 1.0)
    sub = lambda total, w: total.__isub__(np.bincount(prow, weights=w, minlength=b))  # noqa: E731
    sub(out.ap, term), sub(out.ap_opt, term), sub(out.ap_pess, term)
    for K in map_ks:
        sub(out.ap_at[K], np.where(bpos < K, term, 0.0))
    for K in prec_ks:
        sub(out.prec_at[K], (bpos < min(K, n_db)).astype(np.float64))
    groups = (grow, before.reshape(-1)[first], size + eqc[:, 1:].reshape(-1)[last], first - grow * R, size)
    return out, groups


def _float_pass(qf, q_lab, q_order, dbf, db_lab, distance, k, chunk, exclude_self, R_sorted, n_eff, map_ks, prec_ks):
    """Yield (c0, c1, per-query metrics, k-NN predictions) per chunk of rows c0:c1 of ``q_order``.

    Per chunk: one matmul gives the distances; then, for blocks of rows of one label, each
    distance gets a bucket linear in it (65,534 buckets over the row's range) and
    :func:`_block_ranks` counts, for every irrelevant item, the relevant distances <= it
    (a table over the buckets, plus comparisons with the relevant distances of its own
    bucket only); :func:`_rank_sums` turns the counts into the metrics.
    """
    n_q = q_order.size
    q_lab_sorted = q_lab[q_order]
    # Relevant items of a query are the database items with its label: index lists per label.
    # The database is not reordered: the matmul's rounding can depend on column positions
    # (for single-row chunks), and distances must not depend on the database order.
    db_order = np.argsort(db_lab, kind="stable")
    db_sorted_lab = db_lab[db_order]
    members_of = {int(db_sorted_lab[a]): np.sort(db_order[a:b]) for a, b in _label_runs(db_sorted_lab)}
    classes, db_codes = np.unique(db_lab, return_inverse=True)
    n = dbf.shape[0]
    if distance == "euclidean":
        db_sq = np.einsum("ij,ij->i", dbf, dbf)
    else:
        norms = np.sqrt(np.einsum("ij,ij->i", dbf, dbf, dtype=np.float64))
        # Zero vectors get similarity 0 with everything (distance 1), never NaN.
        db_inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
    # -2·(q·d) as the matmul of -2·q: exact (a power-of-two scaling commutes with every
    # rounding) unless products or partial sums could be subnormal; saves one pass.
    prescale = distance == "euclidean" and _min_abs_nonzero(qf) * _min_abs_nonzero(dbf) >= 2.0**-60
    starts = list(range(0, n_q, chunk))
    workers = _workers(len(starts))
    # One set of buffers per worker: a chunk's results never point into them, so a worker
    # takes a free set for the chunk it computes and returns it when done.
    compiled = float_ranks.kernel(n_q * n)  # None: the numpy implementation below
    if compiled is not None:
        member_ptr = np.zeros(len(members_of) + 1, dtype=np.int64)
        member_ptr[1:] = np.cumsum([v.size for v in members_of.values()])
        members_flat = np.concatenate(list(members_of.values())).astype(np.int64)
        class_of = {label: c for c, label in enumerate(members_of)}
        row_class = np.array([class_of.get(int(x), -1) for x in q_lab_sorted.tolist()], dtype=np.int64)
        r_max = int(np.diff(member_ptr).max())
        G = float_ranks.buckets_for(r_max)
        col_scale = db_sq if distance == "euclidean" else db_inv
    scratch = queue.SimpleQueue()
    for _ in range(min(workers, len(starts))):
        if compiled is None:
            scratch.put(_FloatScratch(min(chunk, n_q), n))
        else:
            scratch.put(float_ranks.FloatRankScratch(min(chunk, n_q), n, r_max, k, 1 + len(map_ks) + len(prec_ks), G))
    w_blocks = n // k  # k-NN: the k row blocks' minima bound the k-th smallest distance
    big = float(np.finfo(np.float32).max)

    def process(i: int):
        S = scratch.get()
        try:
            return compute(i, S)
        finally:
            scratch.put(S)

    def compute(i: int, S: _FloatScratch):
        c0 = starts[i]
        c1 = min(c0 + chunk, n_q)
        m = c1 - c0
        qc = qf[q_order[c0:c1]]
        dist = S.dist[:m]
        np.matmul(qc * np.float32(-2.0) if prescale else qc, dbf.T, out=dist)
        if distance == "euclidean":
            q_sq = np.einsum("ij,ij->i", qc, qc)
        else:
            q_norm = np.sqrt(np.einsum("ij,ij->i", qc, qc, dtype=np.float64))
            q_inv = np.where(q_norm > 0, 1.0 / np.where(q_norm > 0, q_norm, 1.0), 0.0).astype(np.float32)
        self_cols = q_order[c0:c1] if exclude_self else None
        if compiled is not None:
            row_add = q_sq if distance == "euclidean" else -q_inv
            own = self_cols if exclude_self else np.full(m, -1, dtype=np.int64)
            raw, groups, rows, cols, d, kth = float_ranks.rank_chunk(
                compiled, dist, distance == "euclidean", prescale, col_scale, row_add, row_class[c0:c1], member_ptr,
                members_flat, own, k, map_ks, prec_ks, n_eff, S, G)
            sums = _PerQuery(ap=raw[:, 0], ap_opt=raw[:, 0].copy(), ap_pess=raw[:, 0].copy())
            sums.ap_at.update({K: raw[:, 1 + c] for c, K in enumerate(map_ks)})
            sums.prec_at.update({K: raw[:, 1 + len(map_ks) + c] for c, K in enumerate(prec_ks)})
            return finish(c0, c1, sums, [groups] if groups[0].size else [], rows, cols, d, kth)
        sums = _PerQuery(ap=np.zeros(m), ap_opt=np.zeros(m), ap_pess=np.zeros(m))
        sums.ap_at.update({K: np.zeros(m) for K in map_ks})
        sums.prec_at.update({K: np.zeros(m) for K in prec_ks})
        cand_rows, cand_cols, cand_d, tie_parts = [], [], [], []
        for a, b in _label_runs(q_lab_sorted[c0:c1]):
            label = int(q_lab_sorted[c0 + a])
            members = members_of.get(label)
            ranks = []  # _block_ranks of consecutive blocks of the run (same R), summed together
            ranks_start = a
            for r0 in range(a, b, _FLOAT_BLOCK_ROWS):
                r1 = min(r0 + _FLOAT_BLOCK_ROWS, b)
                nb = r1 - r0
                D = dist[r0:r1]
                if distance == "euclidean":
                    # ||q||^2 + ||d||^2 - 2 q.d, clamped at 0 against rounding (as faiss does;
                    # below, in the rows that have a negative value: the others are unchanged).
                    if not prescale:
                        D *= -2.0
                    D += db_sq[None, :]
                    D += q_sq[r0:r1, None]
                else:
                    # Rank by -cos (same order as 1 - cos, one rounding fewer).
                    D *= db_inv[None, :]
                    D *= -q_inv[r0:r1, None]
                    D += 0.0  # turn -0.0 into +0.0 so equal similarities compare and sort as equal
                hi = D.max(axis=1)
                local = np.arange(nb)
                if exclude_self:
                    # Leave-one-out: the own item moves behind every finite distance; it is the
                    # last relevant item of its row (dropped) and never a k-NN candidate.
                    D[local, self_cols[r0:r1]] = np.inf
                block_min, lo = _block_minima(D, k, w_blocks)
                if distance == "euclidean" and lo.min() < 0:
                    neg = np.flatnonzero(lo < 0)
                    for r in neg.tolist():
                        np.maximum(D[r], 0.0, out=D[r])
                    hi = np.maximum(hi, 0.0)
                    block_min, lo = _block_minima(D, k, w_blocks)
                # k-NN candidates: every item within the largest block minimum (>= k-th distance).
                flat = np.flatnonzero(D <= block_min.max(axis=1)[:, None])
                rr, cc = np.divmod(flat, n)
                cand_rows.append(rr + r0)
                cand_cols.append(cc)
                cand_d.append(D.reshape(-1)[flat])
                if members is None or members.size - int(exclude_self) <= 0:
                    continue  # no relevant item: every metric is 0
                # Buckets: trunc((d - lo) * scale), non-decreasing in d, 0..B-2.
                span = hi.astype(np.float64) - lo
                scale = np.where(span > 1e-30, (_FLOAT_BUCKETS - 2) / np.where(span > 1e-30, span, 1.0), 0.0)
                scale = np.minimum(scale, big).astype(np.float32)
                scaled, idx = S.scaled[:nb], S.idx[:nb]
                with np.errstate(invalid="ignore", over="ignore"):
                    np.subtract(D, lo[:, None], out=scaled)
                    np.multiply(scaled, scale[:, None], out=idx, casting="unsafe")
                if exclude_self:
                    idx[local, self_cols[r0:r1]] = _FLOAT_BUCKETS - 1
                idx += (local * _FLOAT_BUCKETS).astype(np.int32)[:, None]  # flat index into the rows' tables
                ranks.append(_block_ranks(D, idx, members, self_cols[r0:r1] if exclude_self else None, S))
                if r1 < b and r1 - ranks_start < _FLOAT_SUM_ROWS:
                    continue
                # Metrics of rows ranks_start:r1 at once (a bounded number of rows: the
                # temporaries of _rank_sums are rows x R arrays).
                rs, cnt, eqc = (np.concatenate(x) if len(ranks) > 1 else x[0] for x in zip(*ranks))
                part, groups = _rank_sums(rs, cnt, eqc, n_eff, map_ks, prec_ks)
                done = slice(ranks_start, r1)
                if groups is not None:
                    tie_parts.append((groups[0] + ranks_start,) + groups[1:])
                sums.ap[done], sums.ap_opt[done], sums.ap_pess[done] = part.ap, part.ap_opt, part.ap_pess
                for K in map_ks:
                    sums.ap_at[K][done] = part.ap_at[K]
                for K in prec_ks:
                    sums.prec_at[K][done] = part.prec_at[K]
                ranks, ranks_start = [], r1
        rows = np.concatenate(cand_rows)
        cols = np.concatenate(cand_cols)
        d = np.concatenate(cand_d)
        if exclude_self:
            keep = cols != self_cols[rows]
            rows, cols, d = rows[keep], cols[keep], d[keep]
        # Exact k-th distance of every row from its candidates (at least k per row).
        order = np.lexsort((d, rows))
        kth = d[order][np.searchsorted(rows[order], np.arange(m)) + k - 1]
        return finish(c0, c1, sums, tie_parts, rows, cols, d, kth)

    def finish(c0, c1, sums, tie_parts, rows, cols, d, kth):
        """Add the true tie groups' terms to the singleton sums, divide, vote."""
        m = c1 - c0
        if tie_parts:  # the exact terms of all true tie groups of the chunk at once
            grow, N, size, Rb, r = (np.concatenate(part) for part in zip(*tie_parts))
            ties = _tie_group_terms(N, size, Rb, r, map_ks, prec_ks, n_eff)
            add = lambda total, w: total.__iadd__(np.bincount(grow, weights=w, minlength=m))  # noqa: E731
            add(sums.ap, ties.ap), add(sums.ap_opt, ties.ap_opt), add(sums.ap_pess, ties.ap_pess)
            for K in map_ks:
                add(sums.ap_at[K], ties.ap_at[K])
            for K in prec_ks:
                add(sums.prec_at[K], ties.prec_at[K])
        pred = _knn_vote(rows, db_codes[cols], d, kth, k, classes)
        R = R_sorted[c0:c1].astype(np.float64)
        has = R > 0
        per_q = _PerQuery(
            ap=np.where(has, sums.ap / np.maximum(R, 1.0), 0.0),
            ap_opt=np.where(has, sums.ap_opt / np.maximum(R, 1.0), 0.0),
            ap_pess=np.where(has, sums.ap_pess / np.maximum(R, 1.0), 0.0),
        )
        for K in map_ks:
            per_q.ap_at[K] = np.where(has, sums.ap_at[K] / np.maximum(np.minimum(R, float(K)), 1.0), 0.0)
        for K in prec_ks:
            per_q.prec_at[K] = sums.prec_at[K] / min(K, n_eff)
        return c0, c1, per_q, pred

    # Each worker runs its own matmul: share the cores between them instead of letting every
    # matmul start one BLAS thread per core (measured ~15% faster on 2 cores; same results).
    with _blas_threads(max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None), _torch_one_thread():
        yield from _pipelined(process, len(starts), workers)
