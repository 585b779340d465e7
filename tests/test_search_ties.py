"""Ties: `index --tie-order shuffled|database` (a seeded permutation of the items, applied to every per-item
field) and `search`'s tie counts (`tied_at_kth`, `closer_than_kth`, the table/grid/page line), each against
a naive reference."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deephash_cli import faiss_index
from deephash_cli.artifacts import ArtifactWriter, Split, read_index
from deephash_cli.codes import hamming_distances
from deephash_cli.faiss_index import IndexSpec
from tests.conftest import invoke, write_features

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run_ok(runner, *args):
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    return result


def search_json(runner, *args):
    return [json.loads(line) for line in run_ok(runner, "search", *args, "--json").stdout.strip().splitlines()]


def write_codes(path, train, train_labels, test, test_labels, bits, class_names=None):
    """A codes artifact without paths: item names are `#<position>` (here the database position)."""
    names = class_names or [f"c{i}" for i in range(int(max(train_labels.max(), test_labels.max())) + 1)]
    with ArtifactWriter(path, kind="codes", class_names=names, config={"stage": "test", "dataset": "synthetic"},
                        command="pytest") as writer:
        writer.write_split("train", Split(train_labels, np.arange(len(train_labels)), codes=train, bits=bits))
        writer.write_split("test", Split(test_labels, np.arange(len(test_labels)), codes=test, bits=bits))
    return path


def sparse_codes(rng, n, bits, density=0.15):
    """Codes with few set bits: many items at the same Hamming distance."""
    return np.packbits(rng.random((n, bits)) < density, axis=1)


def naive_stable_knn(queries, database, k):
    d = hamming_distances(queries, database)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def naive_tie_counts(queries, database, k):
    """(closer, tied) per query from the full distance rows."""
    d = hamming_distances(queries, database).astype(np.int64)
    kth = np.sort(d, axis=1)[:, k - 1:k]
    return (d < kth).sum(axis=1), (d == kth).sum(axis=1)


# --------------------------------------------------------------------------- tie order


def test_shuffled_index_is_a_seeded_permutation_of_every_item_field(runner, tmp_path):
    rng = np.random.default_rng(0)
    bits, n = 24, 150
    codes, labels = sparse_codes(rng, n + 12, bits), rng.integers(0, 4, n + 12)
    path = write_codes(tmp_path / "c.h5", codes[:n], labels[:n], codes[n:], labels[n:], bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5", "--seed", "3")
    items = read_index(tmp_path / "i.h5").items
    perm = np.random.default_rng(3).permutation(n)  # documented: numpy.random.default_rng(seed).permutation(n)
    assert not np.array_equal(perm, np.arange(n))
    np.testing.assert_array_equal(items.vectors, codes[:n][perm])
    np.testing.assert_array_equal(items.labels, labels[:n][perm])
    np.testing.assert_array_equal(items.index, perm)
    assert items.paths.tolist() == [f"#{i}" for i in perm]
    # Results: a stable sort of the distances over the index's (permuted) item order.
    answers = search_json(runner, tmp_path / "i.h5", "--queries", path, "-k", "9")
    expected_d, expected_i = naive_stable_knn(codes[n:], codes[:n][perm], 9)
    for q, answer in enumerate(answers):
        assert [r["id"] for r in answer["results"]] == expected_i[q].tolist()
        assert [r["name"] for r in answer["results"]] == [f"#{perm[i]}" for i in expected_i[q]]
        assert [r["distance"] for r in answer["results"]] == expected_d[q].tolist()
        assert [r["class"] for r in answer["results"]] == [f"c{labels[perm[i]]}" for i in expected_i[q]]


def test_same_seed_same_answers_other_seed_other_ties_same_distances(runner, tmp_path):
    rng = np.random.default_rng(1)
    bits, n = 16, 200
    codes, labels = sparse_codes(rng, n + 20, bits, 0.1), rng.integers(0, 3, n + 20)
    path = write_codes(tmp_path / "c.h5", codes[:n], labels[:n], codes[n:], labels[n:], bits)
    for name, seed in (("a", "0"), ("b", "0"), ("other", "1")):
        run_ok(runner, "index", path, "-o", tmp_path / f"{name}.index.h5", "--seed", seed)
    a, b, c = (search_json(runner, tmp_path / f"{name}.index.h5", "--queries", path, "-k", "10")
               for name in ("a", "b", "other"))
    assert a == b
    assert [[r["distance"] for r in x["results"]] for x in a] == [[r["distance"] for r in x["results"]] for x in c]
    assert [[r["name"] for r in x["results"]] for x in a] != [[r["name"] for r in x["results"]] for x in c]
    assert [(x["tied_at_kth"], x["closer_than_kth"]) for x in a] == [(x["tied_at_kth"], x["closer_than_kth"])
                                                                     for x in c]


def test_database_order_keeps_the_artifacts_order(runner, tmp_path):
    rng = np.random.default_rng(2)
    bits, n = 16, 120
    codes, labels = sparse_codes(rng, n + 10, bits), rng.integers(0, 3, n + 10)
    path = write_codes(tmp_path / "c.h5", codes[:n], labels[:n], codes[n:], labels[n:], bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5", "--tie-order", "database", "--seed", "7")
    stored = read_index(tmp_path / "i.h5")
    assert (stored.spec["tie_order"], stored.spec["tie_seed"]) == ("database", None)
    np.testing.assert_array_equal(stored.items.index, np.arange(n))
    np.testing.assert_array_equal(stored.items.vectors, codes[:n])
    answers = search_json(runner, tmp_path / "i.h5", "--queries", path, "-k", "6")
    _, expected_i = naive_stable_knn(codes[n:], codes[:n], 6)
    assert [[r["id"] for r in x["results"]] for x in answers] == expected_i.tolist()


def _class_sorted_bucket(tmp_path):
    """CIFAR-like: 10 classes of 40 items in class order; 12 items of each class share the query's code
    (a distance-0 bucket of 120 across every class), the others are far away."""
    rng = np.random.default_rng(4)
    bits = 48
    query = rng.random(bits) < 0.5
    labels = np.repeat(np.arange(10), 40)
    far = rng.random((400, bits)) < 0.5
    far[:, :12] = ~query[:12]  # at least 12 bits from the query
    unpacked = np.where((np.arange(400) % 40 < 12)[:, None], query[None, :], far)
    path = write_codes(tmp_path / "c.h5", np.packbits(unpacked, axis=1), labels,
                       np.packbits(query[None, :], axis=1), np.array([9]), bits, class_names=CIFAR)
    return path


def test_shuffled_ties_do_not_favour_the_lowest_classes(runner, tmp_path):
    path = _class_sorted_bucket(tmp_path)
    run_ok(runner, "index", path, "-o", tmp_path / "db.h5", "--tie-order", "database")
    run_ok(runner, "index", path, "-o", tmp_path / "sh.h5", "--seed", "0")
    database = search_json(runner, tmp_path / "db.h5", "--queries", path, "-k", "8")[0]
    shuffled = search_json(runner, tmp_path / "sh.h5", "--queries", path, "-k", "8")[0]
    assert [r["class"] for r in database["results"]] == ["airplane"] * 8  # the lowest ids of the bucket
    classes = [r["class"] for r in shuffled["results"]]
    assert all(r["distance"] == 0 for r in shuffled["results"])
    assert len(set(classes)) >= 4 and set(classes) != {"airplane"}  # seed 0: a draw from the whole bucket
    for answer in (database, shuffled):
        assert (answer["tied_at_kth"], answer["closer_than_kth"]) == (120, 0)
    table = run_ok(runner, "search", tmp_path / "sh.h5", "--queries", path, "-k", "8").stdout
    assert "  ranks 1-8 drawn from 120 items tied at distance 0" in table.splitlines()


# --------------------------------------------------------------------------- tie counts


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 16, 48, 64]), n=st.integers(1, 300), q=st.integers(1, 25), k=st.integers(1, 30),
       density=st.sampled_from([0.02, 0.1, 0.3]), budget=st.sampled_from([1, 50, 1 << 23]),
       seed=st.integers(0, 2**16))
def test_binary_tie_counts_equal_a_naive_count_over_all_distances(bits, n, q, k, density, budget, seed):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    codes = sparse_codes(rng, n + q, bits, density)
    database, queries = codes[:n], codes[n:]
    spec = IndexSpec("flat", True, "hamming", bits)
    index = faiss_index.build(spec, database)
    faiss_index.add(index, spec, database)
    raw, ids = faiss_index.search(index, queries, k)
    saved, faiss_index.TIE_COUNT_RESULTS = faiss_index.TIE_COUNT_RESULTS, budget  # budget 1: one query per chunk
    try:
        closer, tied = faiss_index.count_ties(index, spec, queries, raw, ids)
    finally:
        faiss_index.TIE_COUNT_RESULTS = saved
    expected_closer, expected_tied = naive_tie_counts(queries, database, k)
    np.testing.assert_array_equal(closer, expected_closer)
    np.testing.assert_array_equal(tied, expected_tied)
    assert (closer < k).all() and (closer + tied >= k).all()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_float_tie_counts_count_duplicate_vectors(metric):
    rng = np.random.default_rng(5)
    database = rng.normal(size=(300, 12)).astype(np.float32)
    database[40:57] = database[7]  # 18 copies of item 7
    queries = np.concatenate([database[7:8] + 0.01, rng.normal(size=(30, 12)).astype(np.float32)])
    spec = IndexSpec("flat", False, metric, 12)
    index = faiss_index.build(spec, database)
    faiss_index.add(index, spec, database)
    prepared = faiss_index.prepare(spec, queries)
    raw, ids = faiss_index.search(index, prepared, 5)
    closer, tied = faiss_index.count_ties(index, spec, prepared, raw, ids)
    assert (closer[0], tied[0]) == (0, 18)
    # Random queries: no two distances are equal, so the k-th result stands alone behind k - 1 closer ones.
    assert (closer[1:] == 4).all() and (tied[1:] == 1).all()


def test_json_fields_for_flat_indexes_only(runner, tmp_path):
    path = write_features(tmp_path / "f.h5")
    run_ok(runner, "index", path, "-o", tmp_path / "flat.h5")
    run_ok(runner, "index", path, "-o", tmp_path / "hnsw.h5", "--type", "hnsw")
    flat = search_json(runner, tmp_path / "flat.h5", "--queries", path, "-k", "3")
    assert all(a["tied_at_kth"] == 1 and a["closer_than_kth"] == 2 for a in flat)  # float blobs: no ties
    for answers in (search_json(runner, tmp_path / "hnsw.h5", "--queries", path, "-k", "3"),
                    search_json(runner, tmp_path / "flat.h5", "--queries", path, "-k", "3", "--no-tie-counts")):
        assert all("tied_at_kth" not in a and "closer_than_kth" not in a for a in answers)


def test_tie_line_only_when_the_results_are_a_choice(runner, tmp_path):
    # Database: distances 0, 1, 1, 1, 2 from the query; k = 2 picks one of three at distance 1, k = 4 takes
    # all three (no line), k = 1 takes the single closest (no line).
    bits = 8
    rows = [0b00000000, 0b00000001, 0b00000010, 0b00000100, 0b00000011]
    codes = np.array(rows, dtype=np.uint8)[:, None]
    path = write_codes(tmp_path / "c.h5", codes, np.zeros(5, np.int64), codes[:1], np.zeros(1, np.int64), bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5")
    lines = {k: run_ok(runner, "search", tmp_path / "i.h5", "--queries", path, "-k", str(k)).stdout.splitlines()
             for k in (1, 2, 3, 4)}
    assert lines[2][-1] == "  rank 2 drawn from 3 items tied at distance 1"
    assert lines[3][-1] == "  ranks 2-3 drawn from 3 items tied at distance 1"
    assert not any("drawn from" in line for k in (1, 4) for line in lines[k])
    answer = search_json(runner, tmp_path / "i.h5", "--queries", path, "-k", "3")[0]
    assert (answer["tied_at_kth"], answer["closer_than_kth"]) == (3, 1)


def test_grid_and_page_say_how_many_were_tied(runner, tmp_path):
    path = _class_sorted_bucket(tmp_path)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5")
    run_ok(runner, "search", tmp_path / "i.h5", "--queries", path, "-k", "8", "--grid", tmp_path / "g.png", "--html",
           tmp_path / "page")
    page = (tmp_path / "page" / "index.html").read_text()
    assert "8 of 120 tied at distance 0" in page and "tie order shuffled (seed 0)" in page
    assert Image.open(tmp_path / "g.png").size[0] > 200


# --------------------------------------------------------------------------- --add, info, --check-recall, errors


def test_add_to_a_shuffled_index_appends_the_new_items_shuffled(runner, tmp_path):
    rng = np.random.default_rng(6)
    bits = 16
    old, new = sparse_codes(rng, 60, bits), sparse_codes(rng, 45, bits)
    path = write_codes(tmp_path / "old.h5", old[:50], rng.integers(0, 3, 50), old[50:], np.zeros(10, np.int64), bits)
    extra = write_codes(tmp_path / "new.h5", new[:40], rng.integers(0, 3, 40), new[40:], np.zeros(5, np.int64), bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5", "--seed", "5")
    before = read_index(tmp_path / "i.h5").items
    result = run_ok(runner, "index", tmp_path / "i.h5", "--add", extra, "--splits", "train")
    assert "ties shuffled (seed 5)" in result.stderr
    after = read_index(tmp_path / "i.h5")
    perm = np.random.default_rng(5).permutation(40)
    np.testing.assert_array_equal(after.items.vectors, np.concatenate([before.vectors, new[:40][perm]]))
    np.testing.assert_array_equal(after.items.index, np.concatenate([before.index, perm]))
    np.testing.assert_array_equal(after.items.source, np.r_[np.zeros(50), np.ones(40)])
    assert after.spec["tie_order"] == "shuffled" and after.spec["tie_seed"] == 5
    # Exact over the grown order: old items first, so ties between old and new items favour old ones.
    answers = search_json(runner, tmp_path / "i.h5", "--queries", path, "-k", "8")
    expected_d, expected_i = naive_stable_knn(old[50:], after.items.vectors, 8)
    assert [[r["id"] for r in a["results"]] for a in answers] == expected_i.tolist()
    expected_closer, expected_tied = naive_tie_counts(old[50:], after.items.vectors, 8)
    assert [a["tied_at_kth"] for a in answers] == expected_tied.tolist()
    assert [a["closer_than_kth"] for a in answers] == expected_closer.tolist()
    # The order is the index's: --add refuses --tie-order and --seed.
    for option in (["--tie-order", "database"], ["--seed", "1"]):
        refused = invoke(runner, "index", tmp_path / "i.h5", "--add", extra, *option)
        assert refused.exit_code == 2 and "fixed when the index is built" in refused.stderr
    assert len(read_index(tmp_path / "i.h5").items) == 90


def test_info_shows_the_tie_order(runner, tmp_path):
    path = write_features(tmp_path / "f.h5")
    run_ok(runner, "index", path, "-o", tmp_path / "s.h5", "--seed", "11")
    run_ok(runner, "index", path, "-o", tmp_path / "d.h5", "--tie-order", "database")
    assert "  ties      shuffled (seed 11): items entered in a seeded random order" in \
        run_ok(runner, "info", tmp_path / "s.h5").stdout
    assert "  ties      database order" in run_ok(runner, "info", tmp_path / "d.h5").stdout
    spec = json.loads(run_ok(runner, "info", tmp_path / "s.h5", "--json").stdout)["index"]["spec"]
    assert (spec["tie_order"], spec["tie_seed"]) == ("shuffled", 11)
    # An index written before tie orders existed was in database order.
    with h5py.File(tmp_path / "s.h5", "r+") as handle:
        legacy = {k: v for k, v in json.loads(handle["index"].attrs["spec"]).items() if not k.startswith("tie_")}
        handle["index"].attrs["spec"] = json.dumps(legacy)
    assert "  ties      database order" in run_ok(runner, "info", tmp_path / "s.h5").stdout


def test_check_recall_compares_over_the_same_shuffled_order(runner, tmp_path):
    path = write_features(tmp_path / "f.h5", n_train=100)
    run_ok(runner, "index", path, "-o", tmp_path / "ivf.h5", "--type", "ivf", "--nlist", "4", "--seed", "2")
    # Every list probed: the IVF search is exhaustive, so recall must be exactly 1 (ids in the same order).
    result = run_ok(runner, "search", tmp_path / "ivf.h5", "--queries", path, "-k", "5", "--nprobe", "4",
                    "--check-recall")
    assert "recall@5 1.0000" in result.stderr


def test_unknown_tie_order_is_one_line_listing_the_choices(runner, tmp_path):
    path = write_features(tmp_path / "f.h5")
    result = invoke(runner, "index", path, "-o", tmp_path / "i.h5", "--tie-order", "random")
    assert result.exit_code == 2 and "unknown --tie-order 'random'; valid: shuffled, database" in result.stderr
    assert not (tmp_path / "i.h5").exists()
    result = invoke(runner, "index", path, "-o", tmp_path / "i.h5", "--seed", "-1")
    assert result.exit_code == 2 and "--seed must be an integer ≥ 0, got -1" in result.stderr
    help_text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", run_ok(runner, "index", "--help").stdout).split())
    assert "shuffled: items enter the index in a seeded random order" in help_text and "database: items" in help_text
