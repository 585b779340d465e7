"""`deephash evaluate` and `plot-tsne` end to end: numbers against hand computation, JSON, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deephash_cli.artifacts import ArtifactWriter, Split
from tests.conftest import invoke, write_features


def _tiny(path):
    """Two 1-d queries against four database items: every AP can be done by hand."""
    with ArtifactWriter(path, kind="features", class_names=["a", "b"], config={}) as writer:
        writer.write_split("train", Split(np.array([0, 1, 0, 1]), np.arange(4),
                                          features=np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)))
        writer.write_split("test", Split(np.array([0, 1]), np.arange(2),
                                         features=np.array([[0.1], [2.9]], np.float32)))
    return path


def test_evaluate_json_matches_hand_computed_values(runner, tmp_path):
    path = _tiny(tmp_path / "t.h5")
    result = invoke(runner, "evaluate", path, "--json", "--metric", "map,map@2,precision@2,knn", "--k", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # Query 0 (class a at 0.1): ranking a(0.0) b(1.0) a(2.0) b(3.0): AP = (1/1 + 2/3) / 2 = 5/6.
    # Query 1 (class b at 2.9): ranking b(3.0) a(2.0) b(1.0) a(0.0): AP = (1/1 + 2/3) / 2 = 5/6.
    assert report["map"] == pytest.approx(5 / 6)
    assert report["map_at"]["2"] == pytest.approx(0.5)  # (1/min(R=2, K=2)) * (1/1) per query
    assert report["precision_at"]["2"] == pytest.approx(0.5)
    assert report["knn_accuracy"] == 1.0
    assert {"map", "knn_accuracy", "precision_at", "map_at", "queries", "database", "distance", "file"} <= set(report)
    assert (report["queries"], report["database"], report["distance"]) == (2, 4, "euclidean")


def test_cosine_distance_and_pooled_protocol(runner, tmp_path):
    path = write_features(tmp_path / "f.h5", n_train=30, n_test=20, n_classes=3)
    report = json.loads(invoke(runner, "evaluate", path, "--json", "--distance", "cosine").stdout)
    assert report["distance"] == "cosine" and report["map"] > 0.9
    pooled = json.loads(invoke(runner, "evaluate", path, "--json", "--protocol", "pooled", "--queries-per-class",
                               "5").stdout)
    assert pooled["queries"] == 15 and pooled["database"] == 90 + 60 - 15


def test_table_output_goes_to_stderr_and_path_to_stdout(runner, tmp_path):
    path = _tiny(tmp_path / "t.h5")
    result = invoke(runner, "evaluate", path)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(path)
    assert "mAP@all (expected)" in result.stderr and "0.8333" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--metric", "ndcg"], "unknown metric 'ndcg'; valid names: map, map@K, precision@K, knn"),
    (["--metric", "precision@0"], "K must be a positive integer"),
    (["--distance", "manhattan"], "unknown distance 'manhattan'; valid names: euclidean, cosine"),
    (["--query-split", "val", "--database-split", "train"], "no split 'val' (splits present: train, test)"),
    (["--query-split", "train"], "split 'train' is both the query and a database split"),
    (["--protocol", "leave-one-out"], "unknown protocol 'leave-one-out'; valid names: splits, pooled"),
    (["--ties", "random"], "unknown --ties 'random'"),
])
def test_evaluate_errors(runner, tmp_path, args, message):
    result = invoke(runner, "evaluate", _tiny(tmp_path / "t.h5"), *args)
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_evaluate_bad_files(runner, tmp_path):
    result = invoke(runner, "evaluate", tmp_path / "missing.h5")
    assert result.exit_code == 2 and "no such file" in result.stderr
    (tmp_path / "text.h5").write_text("not hdf5")
    result = invoke(runner, "evaluate", tmp_path / "text.h5")
    assert result.exit_code == 2 and "not an HDF5 file" in result.stderr


def test_debug_shows_the_traceback(runner, tmp_path):
    result = invoke(runner, "--debug", "evaluate", tmp_path / "missing.h5")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_hamming_codes_reject_float_distances(runner, tmp_path):
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(0)
    with ArtifactWriter(path, kind="codes", class_names=["a", "b"], config={}) as writer:
        for split, n in (("train", 20), ("test", 6)):
            writer.write_split(split, Split(np.arange(n) % 2, np.arange(n),
                                            codes=rng.integers(0, 256, (n, 2), dtype=np.uint8), bits=16))
    assert invoke(runner, "evaluate", path, "--distance", "cosine").exit_code == 2
    report = json.loads(invoke(runner, "evaluate", path, "--json", "--ties", "pessimistic").stdout)
    assert report["map"] == report["map_pessimistic"] and report["bits"] == 16


def test_plot_tsne_writes_a_png_for_features_and_codes(runner, tmp_path):
    path = write_features(tmp_path / "f.h5", n_train=20, n_test=15, n_classes=3)
    png = tmp_path / "t.png"
    result = invoke(runner, "plot-tsne", path, "-o", png, "--perplexity", "5", "--max-points", "30")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.stdout.strip() == str(png)
    result = invoke(runner, "plot-tsne", path, "-o", png, "--perplexity", "5")
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr
    result = invoke(runner, "plot-tsne", path, "-o", tmp_path / "x.png", "--perplexity", "500")
    assert result.exit_code == 2 and "--perplexity must lie in (0, 45)" in result.stderr


def test_stratified_subsample_keeps_proportions():
    from deephash_cli.tsne import stratified_subsample

    labels = np.repeat([0, 1, 2], [600, 300, 100])
    rows = stratified_subsample(labels, 100, seed=0)
    assert len(rows) == 100 and np.bincount(labels[rows]).tolist() == [60, 30, 10]
    assert np.array_equal(rows, stratified_subsample(labels, 100, seed=0))
