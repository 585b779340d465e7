"""`deephash index` and `deephash search`: faiss results against naive references, end to end on image
folders the tests make (query by image, --add, grids), and one test per documented error."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deephash_cli import faiss_index
from deephash_cli.artifacts import ArtifactWriter, Split, read_artifact, read_index
from deephash_cli.codes import hamming_distances
from deephash_cli.errors import DeephashError
from deephash_cli.faiss_index import IndexSpec
from tests.conftest import invoke, write_features

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200), "grey": (128, 128, 128)}


def make_folder(root, per_class=(6, 2), size=8, seed=0, classes=COLOURS):
    """ROOT/{train,test}/<colour>/NN.png: noisy images around one colour per class."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for name, colour in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, size=(size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def extract(runner, data, out, *extra):
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", data, "--backbone", "pixels",
                    "--image-size", "8", "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return out


def run_ok(runner, *args):
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    return result


def search_json(runner, *args):
    lines = run_ok(runner, "search", *args, "--json").stdout.strip().splitlines()
    return [json.loads(line) for line in lines]


def write_codes(path, codes_train, labels_train, codes_test, labels_test, bits, config=None):
    with ArtifactWriter(path, kind="codes", class_names=[f"c{i}" for i in range(int(labels_train.max()) + 1)],
                        config=config or {"stage": "test", "dataset": "synthetic"}, command="pytest") as writer:
        writer.write_split("train", Split(labels_train, np.arange(len(labels_train)), codes=codes_train, bits=bits))
        writer.write_split("test", Split(labels_test, np.arange(len(labels_test)), codes=codes_test, bits=bits))
    return path


def naive_hamming_knn(queries, database, k):
    """Reference: full distance rows, stable sort (ties in database order), first k."""
    d = hamming_distances(queries, database)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


# --------------------------------------------------------------------------- faiss layer against references


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 12, 24, 48, 64, 256]), n=st.integers(1, 300), q=st.integers(1, 20),
       k=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_flat_binary_search_equals_a_stable_sort_of_hamming_distances(bits, n, q, k, seed):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    few_bits = rng.random((n + q, bits)) < rng.uniform(0.05, 0.5)  # sparse codes: many ties
    codes = np.packbits(few_bits, axis=1)
    database, queries = codes[:n], codes[n:]
    spec = faiss_index.resolve(IndexSpec("flat", True, "hamming", bits), n)
    index = faiss_index.build(spec, database)
    faiss_index.add(index, spec, database)
    distances, ids = faiss_index.search(index, faiss_index.prepare(spec, queries), k)
    expected_d, expected_i = naive_hamming_knn(queries, database, k)
    np.testing.assert_array_equal(ids, expected_i)
    np.testing.assert_array_equal(distances, expected_d)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_float_search_matches_naive_distances(metric):
    rng = np.random.default_rng(1)
    database = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    spec = IndexSpec("flat", False, metric, 16)
    index = faiss_index.build(spec, database)
    faiss_index.add(index, spec, database)
    raw, ids = faiss_index.search(index, faiss_index.prepare(spec, queries), 10)
    distances = faiss_index.to_distances(spec, raw)
    for q in range(len(queries)):
        if metric == "l2":
            naive = np.array([np.sum((queries[q].astype(np.float64) - row) ** 2) for row in database])
        else:
            naive = np.array([1 - np.dot(queries[q], row) / np.linalg.norm(queries[q]) / np.linalg.norm(row)
                              for row in database.astype(np.float64)])
        order = np.argsort(naive, kind="stable")[:10]
        np.testing.assert_array_equal(ids[q], order)
        np.testing.assert_allclose(distances[q], naive[order], rtol=1e-4, atol=1e-5)


def test_recall_counts_hamming_ties_at_the_kth_distance_as_correct():
    spec = IndexSpec("ivf", True, "hamming", 8)
    exact_d = np.array([[0, 1, 2]])
    exact_i = np.array([[5, 6, 7]])
    # An item at the k-th distance (2) other than 7 is as right; one at distance 3 and a -1 are wrong.
    assert faiss_index.recall_at_k(spec, np.array([[0, 2, 2]]), np.array([[5, 9, 7]]), exact_d, exact_i) == 1.0
    assert faiss_index.recall_at_k(spec, np.array([[0, 3, 0]]), np.array([[5, 9, -1]]), exact_d, exact_i) == \
        pytest.approx(1 / 3)
    float_spec = IndexSpec("ivf", False, "l2", 4)
    assert faiss_index.recall_at_k(float_spec, None, np.array([[7, 5, 1]]), None, exact_i) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind,bits", [("ivf", 64), ("hnsw", 64), ("hash", 64), ("factory:BIVF8", 64)])
def test_approximate_binary_indexes_find_near_duplicates(kind, bits):
    rng = np.random.default_rng(0)
    centres = rng.random((8, bits)) < 0.5
    labels = np.repeat(np.arange(8), 100)
    noisy = centres[labels] ^ (rng.random((800, bits)) < 0.03)
    database = np.packbits(noisy, axis=1)
    spec = faiss_index.resolve(IndexSpec(kind, True, "hamming", bits), len(database))
    index = faiss_index.build(spec, database)
    faiss_index.add(index, spec, database)
    queries = database[::50]
    d, i = faiss_index.search(index, queries, 5, nprobe=4, ef=64, nflip=2)
    exact_d, exact_i = faiss_index.exact_neighbours(spec, database, queries, 5)
    assert faiss_index.recall_at_k(spec, d, i, exact_d, exact_i) >= 0.9
    assert (i[:, 0] == np.arange(0, 800, 50)).all() or (d[:, 0] == 0).all()


def test_index_spec_errors_name_what_fits():
    with pytest.raises(DeephashError, match="hash .*is for binary codes"):
        IndexSpec("hash", False, "l2", 16).check()
    with pytest.raises(DeephashError, match="ivfpq is for float"):
        IndexSpec("ivfpq", True, "hamming", 64).check()
    with pytest.raises(DeephashError, match="unknown index type 'kd'; valid: flat, ivf, hnsw, hash, ivfpq"):
        IndexSpec("kd", True, "hamming", 64).check()
    with pytest.raises(DeephashError, match="exceeds the code length 16"):
        faiss_index.resolve(IndexSpec("hash", True, "hamming", 16, nhash=2, hash_bits=16), 100)
    with pytest.raises(DeephashError, match="must divide the embedding dimension 10"):
        faiss_index.resolve(IndexSpec("ivfpq", False, "l2", 10, pq_m=4), 1000)


# --------------------------------------------------------------------------- CLI: artifacts


def test_extract_records_paths_relative_to_the_data_dir(runner, tmp_path):
    data = make_folder(tmp_path / "imgs")
    art = read_artifact(extract(runner, data, tmp_path / "f.h5"))
    assert art.attrs["format_version"] == 2
    train = art.split("train")
    assert train.paths[0] == "train/blue/00.png" and len(train.paths) == 24
    assert (data / train.paths[5]).is_file()
    assert art.config["data_root"] == str(data.resolve())


def test_flat_index_over_codes_returns_the_evaluation_paths_neighbours(runner, tmp_path):
    rng = np.random.default_rng(3)
    bits = 16
    codes = np.packbits(rng.random((130, bits)) < 0.2, axis=1)
    labels = rng.integers(0, 3, 130)
    path = write_codes(tmp_path / "c.h5", codes[:100], labels[:100], codes[100:], labels[100:], bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5", "--tie-order", "database")  # ids = database positions
    answers = search_json(runner, tmp_path / "i.h5", "--queries", path, "-k", "7")
    expected_d, expected_i = naive_hamming_knn(codes[100:], codes[:100], 7)
    assert len(answers) == 30
    for q, answer in enumerate(answers):
        assert [r["id"] for r in answer["results"]] == expected_i[q].tolist()
        assert [r["distance"] for r in answer["results"]] == expected_d[q].tolist()
        assert [r["name"] for r in answer["results"]] == [f"#{i}" for i in expected_i[q]]  # no paths: #index
        assert answer["results"][0]["relevant"] == (labels[100 + q] == labels[expected_i[q][0]])


def test_format_version_1_files_are_still_read(runner, tmp_path):
    path = write_features(tmp_path / "f.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = 1
    assert read_artifact(path).split("train").paths is None
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5")
    items = read_index(tmp_path / "i.h5").items
    assert items.paths.tolist() == [f"#{i}" for i in items.index.tolist()] and "#3" in items.paths.tolist()


def test_query_by_image_finds_the_image_itself_first(runner, tmp_path):
    data = make_folder(tmp_path / "imgs")
    features = extract(runner, data, tmp_path / "f.h5")
    run_ok(runner, "index", features, "-o", tmp_path / "i.h5", "--splits", "train")
    query = data / "train" / "green" / "03.png"
    answers = search_json(runner, tmp_path / "i.h5", query, "-k", "5")
    top = answers[0]["results"][0]
    assert top["name"] == "train/green/03.png" and top["path"] == str(data.resolve() / "train/green/03.png")
    assert top["distance"] == pytest.approx(0.0, abs=1e-4)
    assert answers[0]["class"] == "green"  # from the query's folder name
    assert all(r["class"] == "green" and r["relevant"] for r in answers[0]["results"])
    # A folder of queries: every test image, each answered by its own class first.
    answers = search_json(runner, tmp_path / "i.h5", data / "test", "-k", "3")
    assert len(answers) == 8 and all(a["results"][0]["relevant"] for a in answers)


def test_query_by_image_through_a_hash_head(runner, tmp_path):
    data = make_folder(tmp_path / "imgs", per_class=(12, 3))
    features = extract(runner, data, tmp_path / "f.h5")
    run_ok(runner, "train-hash", features, "--bits", "16", "--epochs", "2", "--classes-per-batch", "4",
           "--samples-per-class", "4", "--head", "linear", "-o", tmp_path / "h.model.h5")
    run_ok(runner, "encode", features, "--model", tmp_path / "h.model.h5", "-o", tmp_path / "c.h5")
    run_ok(runner, "index", tmp_path / "c.h5", "-o", tmp_path / "i.h5")
    codes = read_artifact(tmp_path / "c.h5")
    test = codes.split("test")
    query = data / test.paths[0]
    answer = search_json(runner, tmp_path / "i.h5", query, "-k", "4")[0]
    # The image encodes to exactly its stored code: the distances are those of its stored code.
    database = np.concatenate([codes.split("train").codes, codes.split("val").codes])
    expected_d, _ = naive_hamming_knn(test.codes[:1], database, 4)
    assert [r["distance"] for r in answer["results"]] == expected_d[0].tolist()
    # Changed or missing encoder files stop image queries with the file and the SHA-256 expected.
    model = tmp_path / "h.model.h5"
    sha = read_index(tmp_path / "i.h5").encoder["head"]["model_sha256"]
    with open(model, "ab") as handle:
        handle.write(b"x")
    result = invoke(runner, "search", tmp_path / "i.h5", query)
    assert result.exit_code == 2
    assert f"h.model.h5 changed since the index was built (expected SHA-256 {sha}" in result.stderr
    model.unlink()
    result = invoke(runner, "search", tmp_path / "i.h5", query)
    assert result.exit_code == 2 and "missing (expected a file with SHA-256" in result.stderr
    # Querying with the artifact still works: it needs no encoder files.
    run_ok(runner, "search", tmp_path / "i.h5", "--queries", tmp_path / "c.h5", "-k", "2")


def test_add_appends_new_images_and_refuses_another_encoder(runner, tmp_path):
    data = make_folder(tmp_path / "imgs")
    features = extract(runner, data, tmp_path / "f.h5")
    run_ok(runner, "index", features, "-o", tmp_path / "i.h5", "--type", "ivf", "--nlist", "2")
    new = make_folder(tmp_path / "new", per_class=(2, 1), seed=9,
                      classes={"green": (30, 180, 40), "yellow": (220, 220, 30)})
    run_ok(runner, "index", tmp_path / "i.h5", "--add", extract(runner, new, tmp_path / "new.h5"))
    stored = read_index(tmp_path / "i.h5")
    assert len(stored.items) == 24 + 6
    assert stored.class_names == ["blue", "green", "grey", "red", "yellow"]
    assert stored.spec["added_after_training"] == 6 and stored.spec["trained_on"] == 24
    answer = search_json(runner, tmp_path / "i.h5", new / "train" / "yellow" / "01.png", "-k", "1", "--nprobe",
                         "2")[0]
    assert answer["results"][0]["path"] == str((new / "train/yellow/01.png").resolve())
    info = run_ok(runner, "info", tmp_path / "i.h5").stdout
    assert "6 added after training" in info
    other = extract(runner, new, tmp_path / "other.h5", "--image-size", "4")
    result = invoke(runner, "index", tmp_path / "i.h5", "--add", other)
    assert result.exit_code == 2
    assert "made by another encoder" in result.stderr and "width: 192 (index) vs 48 (new artifact)" in result.stderr
    assert len(read_index(tmp_path / "i.h5").items) == 30  # untouched


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "hash"])
def test_check_recall_reports_recall_of_approximate_indexes(runner, tmp_path, kind):
    rng = np.random.default_rng(0)
    bits = 32
    labels = np.repeat(np.arange(4), 60)
    centres = rng.random((4, bits)) < 0.5
    codes = np.packbits(centres[labels] ^ (rng.random((240, bits)) < 0.05), axis=1)
    path = write_codes(tmp_path / "c.h5", codes[:200], labels[:200], codes[200:], labels[200:], bits)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5", "--type", kind)
    result = run_ok(runner, "search", tmp_path / "i.h5", "--queries", path, "-k", "5", "--check-recall",
                    "--nprobe", "4", "--ef", "32", "--nflip", "2")
    line = [x for x in result.stderr.splitlines() if x.startswith("recall@5")][0]
    assert float(line.split()[1]) >= 0.9


def test_float_index_types_and_grid_and_html(runner, tmp_path):
    data = make_folder(tmp_path / "imgs")
    features = extract(runner, data, tmp_path / "f.h5")
    for kind in ("hnsw", "ivf"):
        run_ok(runner, "index", features, "-o", tmp_path / f"{kind}.h5", "--type", kind, "--metric", "cosine")
    run_ok(runner, "search", tmp_path / "hnsw.h5", data / "test", "-k", "3", "--grid", tmp_path / "g.png", "--html",
           tmp_path / "page")
    assert Image.open(tmp_path / "g.png").size[0] > 200
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("<tr>") == 8 and "train/red/" in page
    assert len(list((tmp_path / "page" / "thumbs").glob("*.png"))) == 8 * 4
    result = invoke(runner, "search", tmp_path / "hnsw.h5", data / "test", "--grid", tmp_path / "g.png")
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr


def test_piped_into_head_stops_quietly(tmp_path):
    path = write_features(tmp_path / "f.h5")
    deephash = [sys.executable, "-m", "deephash_cli"]
    subprocess.run(deephash + ["index", str(path), "-o", str(tmp_path / "i.h5")], check=True, capture_output=True)
    proc = subprocess.run(" ".join(deephash + ["search", str(tmp_path / "i.h5"), "--queries", str(path), "-k", "20",
                                               "|", "head", "-n", "2"]), shell=True, capture_output=True, text=True)
    assert len(proc.stdout.splitlines()) == 2 and "error" not in proc.stderr


# --------------------------------------------------------------------------- documented errors


def test_corrupt_query_image_is_named_and_can_be_skipped(runner, tmp_path):
    data = make_folder(tmp_path / "imgs")
    run_ok(runner, "index", extract(runner, data, tmp_path / "f.h5"), "-o", tmp_path / "i.h5")
    bad = tmp_path / "q" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not a jpeg")
    (data / "test" / "red" / "00.png").rename(tmp_path / "q" / "good.png")
    result = invoke(runner, "search", tmp_path / "i.h5", tmp_path / "q")
    assert result.exit_code == 2 and f"{bad}: cannot decode image" in result.stderr
    assert "Traceback" not in result.output
    answers = search_json(runner, tmp_path / "i.h5", tmp_path / "q", "--skip-corrupt", "-k", "2")
    assert len(answers) == 1 and answers[0]["query"].endswith("good.png")
    result = invoke(runner, "search", tmp_path / "i.h5", tmp_path / "nothing.png")
    assert result.exit_code == 2 and "nothing.png: no such image file or folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = invoke(runner, "search", tmp_path / "i.h5", tmp_path / "empty")
    assert result.exit_code == 2 and "empty: no images (" in result.stderr


def test_k_larger_than_the_database(runner, tmp_path):
    path = write_features(tmp_path / "f.h5", n_train=5, n_classes=2)
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5")
    result = invoke(runner, "search", tmp_path / "i.h5", "--queries", path, "-k", "11")
    assert result.exit_code == 2 and "-k 11 exceeds the 10 items in" in result.stderr


def test_empty_database_split(runner, tmp_path):
    path = tmp_path / "e.h5"
    with ArtifactWriter(path, kind="features", class_names=["a"], config={"stage": "test"}, command="t") as writer:
        writer.write_split("train", Split(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                          features=np.zeros((0, 4), np.float32)))
    result = invoke(runner, "index", path, "-o", tmp_path / "i.h5")
    assert result.exit_code == 2 and "hold no items; nothing to index" in result.stderr
    assert not (tmp_path / "i.h5").exists() and not list(tmp_path.glob(".i.h5.*"))


def test_truncated_or_foreign_index_files(runner, tmp_path):
    path = write_features(tmp_path / "f.h5")
    run_ok(runner, "index", path, "-o", tmp_path / "i.h5")
    data = (tmp_path / "i.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 2])
    result = invoke(runner, "search", tmp_path / "t.h5", "--queries", path)
    assert result.exit_code == 2 and "t.h5" in result.stderr and "Traceback" not in result.output
    (tmp_path / "i.h5").rename(tmp_path / "g.h5")
    with h5py.File(tmp_path / "g.h5", "r+") as handle:
        garbage = np.frombuffer(b"IxF2" + bytes(range(200)), dtype=np.uint8)
        del handle["index/faiss"]
        handle["index"].create_dataset("faiss", data=garbage)
    result = invoke(runner, "search", tmp_path / "g.h5", "--queries", path)
    assert result.exit_code == 2
    assert "the stored faiss index cannot be read by faiss" in result.stderr and "rebuild it" in result.stderr


def test_query_artifact_of_the_other_kind(runner, tmp_path):
    features = write_features(tmp_path / "f.h5")
    run_ok(runner, "index", features, "-o", tmp_path / "i.h5")
    codes = write_codes(tmp_path / "c.h5", np.zeros((4, 2), np.uint8), np.array([0, 1, 0, 1]),
                        np.zeros((2, 2), np.uint8), np.array([0, 1]), 16)
    result = invoke(runner, "search", tmp_path / "i.h5", "--queries", codes)
    assert result.exit_code == 2
    assert "holds binary codes, but the index holds 16-d float vectors" in result.stderr


def test_embeddings_without_a_saved_model_say_so(runner, tmp_path):
    data = make_folder(tmp_path / "imgs", per_class=(12, 3))
    features = extract(runner, data, tmp_path / "f.h5")
    run_ok(runner, "train-triplet", features, "--epochs", "1", "--dim", "4", "--margin", "0.2",
           "--classes-per-batch", "4", "--samples-per-class", "4", "-o", tmp_path / "e.h5")
    result = run_ok(runner, "index", tmp_path / "e.h5", "-o", tmp_path / "i.h5")
    assert "saved no model for these embeddings (rerun it with --save-model)" in result.stderr
    result = invoke(runner, "search", tmp_path / "i.h5", data / "test" / "red" / "00.png")
    assert result.exit_code == 2 and "cannot encode new images" in result.stderr
    # With --save-model the embeddings name their model and image queries work.
    run_ok(runner, "train-triplet", features, "--epochs", "1", "--dim", "4", "--margin", "0.2",
           "--classes-per-batch", "4", "--samples-per-class", "4", "-o", tmp_path / "e2.h5", "--save-model",
           tmp_path / "e2.model.h5")
    run_ok(runner, "index", tmp_path / "e2.h5", "-o", tmp_path / "i2.h5")
    answer = search_json(runner, tmp_path / "i2.h5", data / "train" / "red" / "00.png", "-k", "1")[0]
    assert answer["results"][0]["name"] == "train/red/00.png"
