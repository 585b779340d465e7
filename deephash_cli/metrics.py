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
query-database pairs for codes, 8M for float features) by two worker threads, so the
extra memory stays bounded (about 250 MB for float features, far less for codes)
whatever the database size; only a row of one query's distances grows with ``n``.

* Hamming: one XOR + popcount pass over uint64 words gives a chunk's distances; a
  per-query histogram over 0..bits of all items and of the relevant items (the
  database is grouped by label, so they are one slice) gives every tie group's size
  and relevant count, and the closed forms above need O(bits) work per query.  The
  histograms use ``torch.bincount`` when torch is importable (about 2x faster than
  ``np.bincount`` and it releases the GIL), numpy otherwise; results are identical.
* Float: one matmul per chunk, an ascending ``np.sort`` of every row and of its
  relevant block; each distinct relevant distance is located in the sorted row by
  binary search, which yields its tie group's position and size.  Rows without any
  duplicated distance skip the second search.
* k-NN: candidates ``distance <= k-th smallest distance`` are sorted by
  (distance, database index) and the first ``k`` vote.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

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
    row, N, m, Rb, r = row[multi], before[multi], size[multi], rel_before[multi], rel[multi]
    mf = m.astype(np.float64)
    rf = r.astype(np.float64)
    p1 = rf / mf  # E[rel(k)] inside the group
    p2 = rf * (rf - 1.0) / (mf * (mf - 1.0))  # E[rel(j) rel(k)], j != k, inside the group

    def expected_sum(first: np.ndarray) -> np.ndarray:
        """E[Σ_{i=1..first} P(N+i) rel(N+i)] over the group's first ``first`` positions."""
        s0 = _harmonic_diff(N, N + first)  # Σ_{i=1..first} 1/(N+i)
        # Σ_{i=1..first} (i−1)/(N+i) = first − (N+1)·s0
        return p1 * (Rb + 1) * s0 + p2 * np.maximum(first - (N + 1) * s0, 0.0)

    def per_row(single_values: np.ndarray, multi_values: np.ndarray) -> np.ndarray:
        return np.bincount(s_row, weights=single_values, minlength=n_rows) + np.bincount(
            row, weights=multi_values, minlength=n_rows
        )

    ap = mean_over(per_row(s_val, expected_sum(m)), Rf)
    # Relevant first: ranks N+1..N+r hold relevant items, Σ (Rb+i)/(N+i) = r − (N−Rb)·Σ_{N+1..N+r} 1/k.
    opt = rf - (N - Rb) * _harmonic_diff(N, N + r)
    # Relevant last: ranks N+m−r+1..N+m, Σ (Rb+t)/(N+m−r+t) = r − (N+m−r−Rb)·Σ_{N+m−r+1..N+m} 1/k.
    pess = rf - (N + m - r - Rb) * _harmonic_diff(N + m - r, N + m)
    out = _PerQuery(ap=ap, ap_opt=mean_over(per_row(s_val, opt), Rf), ap_pess=mean_over(per_row(s_val, pess), Rf))
    for K in map_ks:
        first = np.clip(K - N, 0, m)
        out.ap_at[K] = mean_over(per_row(np.where(s_N < K, s_val, 0.0), expected_sum(first)), np.minimum(Rf, float(K)))
    for K in prec_ks:
        Kc = min(K, n_db)
        first = np.clip(Kc - N, 0, m)
        out.prec_at[K] = per_row((s_N < Kc).astype(np.float64), rf * first / mf) / Kc
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
    n_cls = classes.size
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
        closer = d < kth[start + rows]
        n_closer = np.bincount(rows[closer], minlength=m)
        n_tied = np.bincount(rows[~closer], minlength=m)
        share = (k - n_closer) / np.maximum(n_tied, 1)
        weight = np.where(closer, 1.0, share[rows])
        key = rows * n_cls + db_codes[cols]
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
        pred[start : start + m] = classes[np.argmin(np.where(leading, nearest, np.inf), axis=1)]
    return pred


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


def _groups_from_sorted(sorted_all: np.ndarray, rel_sorted: np.ndarray, has_ties: bool):
    """Tie groups with relevant items of one query with float distances.

    sorted_all (n,) all distances ascending; rel_sorted (R,) distances of the relevant
    items ascending.  Returns (before, size, rel_before, rel) int64 arrays, one per distinct
    relevant distance.
    """
    right = np.searchsorted(sorted_all, rel_sorted, side="right")
    if not has_ties:
        # All distances distinct: every relevant item is its own group of size 1.
        ones = np.ones(rel_sorted.size, dtype=np.int64)
        return right - 1, ones, np.arange(rel_sorted.size, dtype=np.int64), ones
    first = np.ones(rel_sorted.size, dtype=bool)
    first[1:] = rel_sorted[1:] != rel_sorted[:-1]
    f = np.flatnonzero(first)
    left = np.searchsorted(sorted_all, rel_sorted[f], side="left")
    rel = np.diff(np.append(f, rel_sorted.size))
    return left, right[f] - left, f, rel


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
        # ~8M pairs: distances + sorted copy (float32) + mask ~ 80 MB per chunk.
        chunk = chunk_size or _default_chunk(n_db, 1 << 23)
        # Relevant items of a query are the database items with its label: index lists per label.
        db_order = np.argsort(db_lab, kind="stable")
        db_sorted_lab = db_lab[db_order]
        label_members = {int(db_sorted_lab[a]): db_order[a:b] for a, b in _label_runs(db_sorted_lab)}
        chunks = _float_pass(qf, q_lab, q_order, dbf, db_lab, label_members, distance, k, chunk, bool(exclude_self))

    # Per-query values, rows in q_order; tie groups are turned into metrics chunk by chunk
    # so their arrays never exceed one chunk.
    R_sorted = R[q_order]
    ap, ap_opt, ap_pess = (np.empty(n_q) for _ in range(3))
    ap_at = {K: np.empty(n_q) for K in map_ks}
    prec = {K: np.empty(n_q) for K in prec_ks}
    pred = np.empty(n_q, dtype=np.int64)
    for c0, c1, (row, before, size, rel_before, rel), chunk_pred in chunks:
        per_q = _group_metrics(row, before, size, rel_before, rel, c1 - c0, n_eff, R_sorted[c0:c1], map_ks, prec_ks)
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


def _concat_groups(parts: list[tuple[np.ndarray, ...]]):
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    return tuple(np.concatenate([p[i] for p in parts]).astype(np.int64, copy=False) for i in range(5))


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


def _float_pass(qf, q_lab, q_order, dbf, db_lab, label_members, distance, k, chunk, exclude_self=False):
    """Yield (c0, c1, tie groups, k-NN predictions) per chunk of rows c0:c1 of ``q_order``.

    Per query chunk: distances by one matmul, an ascending sort of every row, and of the
    relevant block; each distinct relevant distance is then located in the sorted row
    (binary search) to get its tie group's position and size.
    """
    n_q = q_order.size
    q_lab_sorted = q_lab[q_order]
    if distance == "euclidean":
        db_sq = np.einsum("ij,ij->i", dbf, dbf)
    else:
        norms = np.sqrt(np.einsum("ij,ij->i", dbf, dbf, dtype=np.float64))
        # Zero vectors get similarity 0 with everything (distance 1), never NaN.
        db_inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
    starts = list(range(0, n_q, chunk))

    def process(i: int):
        c0 = starts[i]
        c1 = min(c0 + chunk, n_q)
        qc = qf[q_order[c0:c1]]
        dist = qc @ dbf.T  # (rows, n) float32
        if distance == "euclidean":
            # ||q||^2 + ||d||^2 - 2 q.d, clamped at 0 against rounding (as faiss does).
            dist *= -2.0
            dist += db_sq[None, :]
            dist += np.einsum("ij,ij->i", qc, qc)[:, None]
            np.maximum(dist, 0.0, out=dist)
        else:
            # Rank by -cos (same order as 1 - cos, one rounding fewer).
            q_norm = np.sqrt(np.einsum("ij,ij->i", qc, qc, dtype=np.float64))
            q_inv = np.where(q_norm > 0, 1.0 / np.where(q_norm > 0, q_norm, 1.0), 0.0).astype(np.float32)
            dist *= db_inv[None, :]
            dist *= -q_inv[:, None]
            dist += 0.0  # turn -0.0 into +0.0 so equal similarities compare and sort as equal
        if exclude_self:
            # Leave-one-out: the own item moves behind every finite distance, so it is the
            # last relevant group of its row (dropped below) and never a k-NN candidate.
            dist[np.arange(c1 - c0), q_order[c0:c1]] = np.inf
        sorted_all = np.sort(dist, axis=1)
        has_ties = np.any(sorted_all[:, 1:] == sorted_all[:, :-1], axis=1)
        parts = []
        for a, b in _label_runs(q_lab_sorted[c0:c1]):
            members = label_members.get(int(q_lab_sorted[c0 + a]))
            if members is None:
                continue
            rel_sorted = np.sort(dist[a:b][:, members], axis=1)
            for r in range(a, b):
                before, size, rel_before, rel = _groups_from_sorted(sorted_all[r], rel_sorted[r - a], bool(has_ties[r]))
                if exclude_self:
                    before, size, rel_before, rel = before[:-1], size[:-1], rel_before[:-1], rel[:-1]
                parts.append((np.full(before.size, r, dtype=np.int64), before, size, rel_before, rel))
        return c0, c1, _concat_groups(parts), _knn_predict(dist, sorted_all[:, k - 1], k, db_lab)

    yield from _pipelined(process, len(starts), _workers(len(starts)))
