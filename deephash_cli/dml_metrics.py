r"""The metric-learning evaluation: Recall@K, MAP@R and the NMI of k-means clusters (pure numpy + scikit-learn).

These are the numbers the deep-metric-learning papers report on unseen classes (CUB-200-2011, Stanford Online
Products, In-shop), next to :mod:`deephash_cli.metrics`' mAP, precision@K and kNN accuracy. The definitions are
the public contract.

Setting
-------
``Q`` queries and a database of ``n`` items with integer labels; a database item is *relevant* to a query when
it has the query's label; ``R`` is the number of relevant database items of a query. Leave-one-out
(``exclude_self``, the queries are the database): a query's own item is not ranked, so ``n − 1`` items and
``R − 1`` relevant ones. Distances are those of :mod:`deephash_cli.metrics` (squared euclidean, which ranks as
euclidean; ``1 − cos``; Hamming on packed codes), computed here in float64 from the float32 inputs (so that two
items at different distances do not tie by float32 rounding) or exactly (Hamming).

* ``Recall@K`` (Song et al. 2016 and after): the fraction of queries with at least one relevant item among
  their ``K`` nearest database items (a hit, not a proportion of relevant items). ``K`` beyond the database is
  clamped to it.
* ``MAP@R`` (Musgrave, Belongie & Lim, "A metric learning reality check", ECCV 2020):
  ``(1/R) Σ_{i=1..R} P(i)·rel(i)`` over the first ``R`` ranks, ``P(i)`` the precision of the top ``i``: an
  average precision that only looks as deep as a perfect ranking would need.
* Queries with no relevant item (``R = 0``) are left out of Recall@K and MAP@R (they have no right answer),
  as pytorch-metric-learning's ``AccuracyCalculator`` does; ``queries_scored`` counts those kept. (deephash's
  mAP counts such queries as 0 instead; on the datasets of this protocol every class has at least two items, so
  the two rules agree there.)
* ``NMI``: scikit-learn's ``KMeans`` (k-means++ initialisation, ``n_init=1``, ``random_state=seed``) clusters
  the *query* items into as many clusters as they have classes; the result is
  ``normalized_mutual_info_score(labels, clusters)`` (arithmetic normalisation), as pytorch-metric-learning
  computes it (which uses faiss's k-means by default). Cosine distance clusters the L2-normalised vectors;
  Hamming codes are clustered as ±1 vectors.

Ties
----
Items at exactly equal distance (equal integers for Hamming, equal float64 values otherwise) are a tie
group with no privileged order. As for deephash's mAP, Recall@K and MAP@R are the **expected** values over all
orderings inside each tie group (exact, closed form; plain values when there are no ties):

* Recall@K: with ``N`` items strictly closer than the ``K``-th distance, none relevant, and a tie group of ``m``
  items (``r`` relevant) at it, the hit probability is ``1 − C(m − r, K − N) / C(m, K − N)``; it is 1 when one
  of the ``N`` is relevant.
* MAP@R: rank ``k`` inside a group of ``m`` (``r`` relevant) preceded by ``N`` items (``Rb`` relevant), at
  position ``i = k − N`` in it, contributes ``[(r/m)(Rb + 1) + (i − 1)·r(r − 1)/(m(m − 1))] / k``.

pytorch-metric-learning breaks ties by faiss' order instead, so the two agree exactly when there are no ties
(float features in practice; Hamming codes tie massively at short code lengths).

Cost: queries in chunks of about 4M query-database pairs: one distance pass, one ``argpartition`` for the
``max(K, R)`` nearest, a sort of those; memory about 40 bytes per pair of a chunk (160 MB) plus a float64
copy of the database (8·n·d bytes: 300 MB for 30,000 × 1280).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from deephash_cli.codes import codes_to_pm1, hamming_distances, n_bytes
from deephash_cli.errors import DeephashError

__all__ = ["NeighbourMetrics", "kmeans_nmi", "neighbour_metrics"]


@dataclass(frozen=True)
class NeighbourMetrics:
    """Recall@K (K -> value) and MAP@R (None when not asked), over ``queries_scored`` queries."""

    recall_at: dict[int, float]
    map_at_r: float | None
    queries_scored: int


def _distances(query: np.ndarray, database: np.ndarray, distance: str, db_aux: np.ndarray | None) -> np.ndarray:
    """(q, n) float64 distances (rank keys) of a chunk of queries: squared L2, −cos, or Hamming.

    Float distances are computed in float64 from the float32 inputs: float32 rounding would make items at
    slightly different distances tie (and a tie at rank R or K changes MAP@R and Recall@K)."""
    if distance == "hamming":
        return hamming_distances(query, database).astype(np.float64)
    q = query.astype(np.float64)
    if distance == "euclidean":
        d = q @ database.T
        d *= -2.0
        d += np.einsum("ij,ij->i", q, q)[:, None]
        d += db_aux[None, :]
        return np.maximum(d, 0.0, out=d)
    norms = np.sqrt(np.einsum("ij,ij->i", q, q))
    q = q * np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)[:, None]
    return -(q @ database.T)  # database rows already unit length (or 0)


def _check_inputs(query, query_labels, database, database_labels, distance, bits):
    if distance not in ("euclidean", "cosine", "hamming"):
        raise DeephashError(f"unknown distance '{distance}'; valid distances: euclidean, cosine, hamming.")
    q, db = np.asarray(query), np.asarray(database)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise DeephashError(f"queries {q.shape} and database {db.shape} must be 2-D with equal widths.")
    q_lab = np.asarray(query_labels, dtype=np.int64).reshape(-1)
    db_lab = np.asarray(database_labels, dtype=np.int64).reshape(-1)
    if q_lab.shape[0] != q.shape[0] or db_lab.shape[0] != db.shape[0]:
        raise DeephashError("every query and every database item needs one label.")
    if distance == "hamming":
        if bits is None or q.dtype != np.uint8 or db.dtype != np.uint8 or q.shape[1] != n_bytes(bits):
            raise DeephashError("hamming distance needs packed uint8 codes and their bits.")
    elif not (np.isfinite(q).all() and np.isfinite(db).all()):
        raise DeephashError("features contain NaN or infinite values.")
    return q, q_lab, db, db_lab


def neighbour_metrics(query, query_labels, database, database_labels, *, distance: str, bits: int | None = None,
                      recall_at: Iterable[int] = (), map_at_r: bool = False, exclude_self: bool = False,
                      chunk_pairs: int = 1 << 22) -> NeighbourMetrics:
    """Recall@K for every K of ``recall_at`` and (``map_at_r``) MAP@R of ``query`` against ``database``.

    query (q, d) float32 features or (q, ceil(bits/8)) uint8 codes; labels (q,) and (n,) int64; ``distance``
    euclidean, cosine or hamming (needs ``bits``). ``exclude_self``: the queries are the database, row ``i``'s
    own item ``i`` is not ranked. Definitions, ties and cost in the module docstring.
    """
    q, q_lab, db, db_lab = _check_inputs(query, query_labels, database, database_labels, distance, bits)
    ks = sorted({int(k) for k in recall_at})
    if any(k <= 0 for k in ks):
        raise DeephashError("Recall@K needs positive K.")
    n_q, n = q.shape[0], db.shape[0]
    if exclude_self and (n_q != n or not np.array_equal(q_lab, db_lab)):
        raise DeephashError("exclude_self needs the query set to be the database (same rows and labels).")
    n_eff = n - int(bool(exclude_self))
    if n_eff < 1:
        raise DeephashError("the database has no item to rank.")
    present, counts = np.unique(db_lab, return_counts=True)
    pos = np.minimum(np.searchsorted(present, q_lab), present.size - 1)
    relevant = np.where(present[pos] == q_lab, counts[pos], 0).astype(np.int64) - int(bool(exclude_self))
    scored = relevant > 0
    db_aux = None
    if distance == "euclidean":
        db = db.astype(np.float64)
        db_aux = np.einsum("ij,ij->i", db, db)
    elif distance == "cosine":
        db = db.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", db, db))
        db = db * np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)[:, None]
    hits = {k: np.zeros(n_q) for k in ks}
    ap_r = np.zeros(n_q)
    rows_per_chunk = max(1, chunk_pairs // max(n, 1))
    for c0 in range(0, n_q, rows_per_chunk):
        c1 = min(n_q, c0 + rows_per_chunk)
        rows = np.arange(c0, c1)
        dist = _distances(q[c0:c1], db, distance, db_aux)
        rel = db_lab[None, :] == q_lab[c0:c1, None]
        if exclude_self:
            dist[rows - c0, rows] = np.inf
            rel[rows - c0, rows] = False
        depth = max([*ks, int(relevant[c0:c1].max(initial=0)) if map_at_r else 0, 1])
        depth = min(depth, n_eff)
        _chunk_metrics(dist, rel, depth, ks, relevant[c0:c1], map_at_r, hits, ap_r, c0, n_eff)
    kept = int(scored.sum())
    mean = (lambda v: float(v[scored].mean()) if kept else 0.0)
    return NeighbourMetrics({k: mean(hits[k]) for k in ks}, mean(ap_r) if map_at_r else None, kept)


def _chunk_metrics(dist: np.ndarray, rel: np.ndarray, depth: int, ks: list[int], relevant: np.ndarray,
                   map_at_r: bool, hits: dict[int, np.ndarray], ap_r: np.ndarray, c0: int, n_eff: int) -> None:
    """Fill ``hits[k][c0:c1]`` and ``ap_r[c0:c1]`` for one chunk (tie-aware, see the module docstring)."""
    m, n = dist.shape
    if depth < n:
        part = np.argpartition(dist, depth - 1, axis=1)[:, :depth]
    else:
        part = np.broadcast_to(np.arange(n), (m, n))
    values = np.take_along_axis(dist, part, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    is_rel = np.take_along_axis(rel, np.take_along_axis(part, order, axis=1), axis=1)
    positions = np.arange(depth)
    new = np.ones((m, depth), dtype=bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    start = np.maximum.accumulate(np.where(new, positions, 0), axis=1)  # first position of each item's group
    is_end = np.ones((m, depth), dtype=bool)
    is_end[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(is_end, positions + 1, depth)[:, ::-1], axis=1)[:, ::-1]  # exclusive
    cum = np.zeros((m, depth + 1), dtype=np.int64)
    np.cumsum(is_rel, axis=1, out=cum[:, 1:])
    before = np.take_along_axis(cum, start, axis=1)  # relevant items ranked before the group
    size = (end - start).astype(np.float64)
    group_rel = (np.take_along_axis(cum, end, axis=1) - before).astype(np.float64)
    # The group at the cut may continue beyond it: its whole size and relevant count come from the full row.
    last_value = values[:, -1:]
    at_last = dist == last_value
    last = values == last_value
    size = np.where(last, at_last.sum(axis=1, keepdims=True), size)
    group_rel = np.where(last, (at_last & rel).sum(axis=1, keepdims=True), group_rel)
    for k in ks:
        j = min(k, n_eff) - 1
        s, b = start[:, j], before[:, j]
        g, r = size[:, j], group_rel[:, j]
        picks = j + 1 - s
        none = np.ones(m)
        for i in range(int(picks.max(initial=0))):
            active = i < picks
            factor = np.clip((g - r - i) / np.maximum(g - i, 1.0), 0.0, 1.0)
            none = np.where(active, none * factor, none)
        hits[k][c0:c0 + m] = np.where(b > 0, 1.0, 1.0 - none)
    if map_at_r:
        within = (positions - start + 1).astype(np.float64)  # 1-based position inside the group
        pair = np.where(size > 1, group_rel * (group_rel - 1) / np.maximum(size * (size - 1), 1.0), 0.0)
        expected = (group_rel / size) * (before + 1) + (within - 1) * pair  # E[rel(k) · #relevant in top k]
        terms = expected / (positions + 1)
        mask = positions[None, :] < relevant[:, None]
        total = np.where(mask, terms, 0.0).sum(axis=1)
        ap_r[c0:c0 + m] = np.where(relevant > 0, total / np.maximum(relevant, 1), 0.0)


def kmeans_nmi(points, labels, *, distance: str, bits: int | None = None, seed: int = 0) -> tuple[float, int]:
    """NMI between ``labels`` and k-means clusters of ``points`` (as many clusters as classes); returns
    (NMI, number of clusters). See the module docstring."""
    from sklearn.metrics import normalized_mutual_info_score

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if distance == "hamming":
        x = codes_to_pm1(np.asarray(points), bits).astype(np.float64)
    else:
        x = np.asarray(points, dtype=np.float64)
        if distance == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)
    k = int(np.unique(labels).size)
    if len(labels) < k or k < 1:
        raise DeephashError(f"NMI needs at least as many items as classes ({len(labels)} items, {k} classes).")
    clusters = kmeans_clusters(x, k, seed)
    return float(normalized_mutual_info_score(labels, clusters)), k


def kmeans_clusters(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """scikit-learn k-means cluster ids (n,) of the rows of ``x`` into ``k`` clusters (k-means++, one run)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)
