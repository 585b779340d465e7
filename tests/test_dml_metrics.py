"""Recall@K, MAP@R and NMI: equal to pytorch-metric-learning's AccuracyCalculator on the same embeddings (1e-6),
to naive loops, and tie-aware as documented (exhaustive enumeration of the tie orders)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from deephash_cli.codes import pack_codes
from deephash_cli.dml_metrics import kmeans_clusters, kmeans_nmi, neighbour_metrics
from deephash_cli.errors import DeephashError
from deephash_cli.protocols import select

KS = (1, 2, 4, 8)


def _embeddings(seed, n=240, d=12, classes=15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    x = (centres[labels] + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    labels[0] = classes + 7  # a class of one item: a query without relevant item when leave-one-out
    return x, labels.astype(np.int64)


def _pml_calculator(ks):
    torch = pytest.importorskip("torch")
    accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

    def recall(k):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            knn, labels = knn_labels[not_lone_query_mask], query_labels[not_lone_query_mask]
            return float((knn[:, :k] == labels[:, None]).any(dim=1).double().mean())
        return calculate

    members = {f"calculate_recall_at_{k}": recall(k) for k in ks}
    members["requires_knn"] = lambda self: accuracy.AccuracyCalculator.requires_knn(self) + [
        f"recall_at_{k}" for k in ks]
    calculator = type("WithRecall", (accuracy.AccuracyCalculator,), members)
    return calculator(include=("precision_at_1", "mean_average_precision_at_r", "NMI",
                               *(f"recall_at_{k}" for k in ks)),
                      device=torch.device("cpu"),
                      kmeans_func=lambda x, k: torch.as_tensor(kmeans_clusters(x.cpu().numpy().astype(np.float64),
                                                                               k, 0)))


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_equals_pml(seed):
    x, labels = _embeddings(seed)
    pml = _pml_calculator(KS).get_accuracy(x, labels)
    ours = neighbour_metrics(x, labels, x, labels, distance="euclidean", recall_at=KS, map_at_r=True,
                             exclude_self=True)
    assert ours.queries_scored == len(x) - 1
    for k in KS:
        assert ours.recall_at[k] == pytest.approx(pml[f"recall_at_{k}"], abs=1e-6)
    assert ours.recall_at[1] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours.map_at_r == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    nmi, clusters = kmeans_nmi(x, labels, distance="euclidean", seed=0)
    assert clusters == len(np.unique(labels)) and nmi == pytest.approx(pml["NMI"], abs=1e-6)


def test_queries_against_a_database_equal_pml():
    x, labels = _embeddings(2)
    q, q_labels = _embeddings(3, n=60)
    pml = _pml_calculator(KS).get_accuracy(q, q_labels, x, labels,
                                           include=("precision_at_1", "mean_average_precision_at_r",
                                                    *(f"recall_at_{k}" for k in KS)))
    ours = neighbour_metrics(q, q_labels, x, labels, distance="euclidean", recall_at=KS, map_at_r=True)
    for k in KS:
        assert ours.recall_at[k] == pytest.approx(pml[f"recall_at_{k}"], abs=1e-6)
    assert ours.map_at_r == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


def _naive(query, q_labels, database, db_labels, ks, exclude_self, distance):
    """Plain loops over the sorted rows (no ties in the data): Recall@K, MAP@R over queries with R > 0."""
    hits = {k: [] for k in ks}
    aps = []
    for i, (row, label) in enumerate(zip(query, q_labels)):
        if distance == "cosine":
            d = [-float(np.dot(row, other)) / (np.linalg.norm(row) * np.linalg.norm(other)) for other in database]
        else:
            d = [float(np.sum((row.astype(np.float64) - other) ** 2)) for other in database]
        order = [j for j in sorted(range(len(database)), key=lambda j: d[j]) if not (exclude_self and j == i)]
        rel = [db_labels[j] == label for j in order]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            hits[k].append(any(rel[:k]))
        found, total = 0, 0.0
        for rank, is_rel in enumerate(rel[:r], 1):
            if is_rel:
                found += 1
                total += found / rank
        aps.append(total / r)
    return {k: float(np.mean(v)) for k, v in hits.items()}, float(np.mean(aps))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_match_naive_loops(distance):
    x, labels = _embeddings(4, n=80, classes=6)
    recall, map_r = _naive(x, labels, x, labels, KS, True, distance)
    ours = neighbour_metrics(x, labels, x, labels, distance=distance, recall_at=KS, map_at_r=True,
                             exclude_self=True, chunk_pairs=500)  # several chunks
    assert ours.recall_at == pytest.approx(recall, abs=1e-12) and ours.map_at_r == pytest.approx(map_r, abs=1e-12)


def _expected_over_tie_orders(dist_row, rel_row, ks, r):
    """Exact expectations by enumerating every order of every tie group of one query's row."""
    groups = [[j for j in range(len(dist_row)) if dist_row[j] == v] for v in sorted(set(dist_row))]
    recalls, aps, count = {k: 0.0 for k in ks}, 0.0, 0
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        rel = [rel_row[j] for group in orders for j in group]
        count += 1
        for k in ks:
            recalls[k] += any(rel[:k])
        found, total = 0, 0.0
        for rank, is_rel in enumerate(rel[:r], 1):
            if is_rel:
                found += 1
                total += found / rank
        aps += total / r
    return {k: v / count for k, v in recalls.items()}, aps / count


@pytest.mark.parametrize("seed", range(4))
def test_hamming_ties_give_the_expectation_over_every_tie_order(seed):
    rng = np.random.default_rng(seed)
    bits = 3  # 8 possible codes for 9 items: many ties
    db_bits = rng.integers(0, 2, size=(9, bits))
    db_labels = rng.integers(0, 3, 9)
    q_bits = rng.integers(0, 2, size=(4, bits))
    q_labels = np.array([0, 1, 2, 0])
    ks = (1, 2, 3, 5)
    ours = neighbour_metrics(pack_codes(q_bits), q_labels, pack_codes(db_bits), db_labels, distance="hamming",
                             bits=bits, recall_at=ks, map_at_r=True)
    recalls, aps = {k: [] for k in ks}, []
    for row, label in zip(q_bits, q_labels):
        r = int((db_labels == label).sum())
        if r == 0:
            continue
        d = [int((row != other).sum()) for other in db_bits]
        rec, ap = _expected_over_tie_orders(d, [lab == label for lab in db_labels], ks, r)
        for k in ks:
            recalls[k].append(rec[k])
        aps.append(ap)
    assert ours.queries_scored == len(aps)
    for k in ks:
        assert ours.recall_at[k] == pytest.approx(np.mean(recalls[k]), abs=1e-12)
    assert ours.map_at_r == pytest.approx(np.mean(aps), abs=1e-12)


def test_recall_at_k_beyond_the_database_and_closed_form_of_one_tie_group():
    # One query, four items at the same distance, one relevant: Recall@2 = 1 - C(3,2)/C(4,2) = 1/2.
    codes = pack_codes(np.zeros((5, 8), dtype=np.uint8))
    labels = np.array([0, 0, 1, 2, 3])
    result = neighbour_metrics(codes[:1], labels[:1], codes[1:], labels[1:], distance="hamming", bits=8,
                               recall_at=(1, 2, 4, 50), map_at_r=True)
    assert result.recall_at == pytest.approx({1: 0.25, 2: 1 - math.comb(3, 2) / math.comb(4, 2), 4: 1.0, 50: 1.0})
    assert result.map_at_r == pytest.approx(0.25)  # R = 1: P(relevant at rank 1)


def test_inputs_are_checked():
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(DeephashError, match="exclude_self needs the query set to be the database"):
        neighbour_metrics(x, [0, 0, 1], x[:2], [0, 0], distance="euclidean", recall_at=(1,), exclude_self=True)
    with pytest.raises(DeephashError, match="NaN"):
        neighbour_metrics(np.full((2, 2), np.nan, dtype=np.float32), [0, 1], x, [0, 0, 1], distance="euclidean")
    with pytest.raises(DeephashError, match="unknown distance"):
        neighbour_metrics(x, [0, 0, 1], x, [0, 0, 1], distance="manhattan")


def test_within_protocol_selects_leave_one_out_or_query_against_gallery():
    from deephash_cli.artifacts import Artifact, Split

    split = lambda n: Split(np.arange(n) % 2, np.arange(n), features=np.zeros((n, 2), dtype=np.float32))  # noqa: E731
    plain = Artifact("a.h5", "features", {}, ["a", "b"], {"train": split(4), "test": split(6)})
    chosen = select(plain, protocol="within")
    assert chosen.exclude_self and len(chosen.query) == 6 and chosen.description.startswith("every item of test")
    inshop = Artifact("b.h5", "features", {}, ["a", "b"], {"train": split(4), "query": split(3), "gallery": split(5)})
    chosen = select(inshop, protocol="within")
    assert not chosen.exclude_self and len(chosen.query) == 3 and len(chosen.database) == 5
