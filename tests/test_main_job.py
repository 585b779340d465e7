"""The README's main job as a test: the whole chain on a digits subset, in-process, checking numbers.

Also the P×K batch options of the mined training paths and their documented errors/fallbacks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deephash_cli.artifacts import ArtifactWriter, Split, read_artifact
from tests.conftest import invoke


def test_main_job_chain_on_digits(runner, tmp_path):
    features, emb = tmp_path / "digits.h5", tmp_path / "emb.h5"
    model, codes = tmp_path / "hash.model.h5", tmp_path / "codes.h5"
    assert invoke(runner, "extract", "--dataset", "digits", "--limit-per-class", "40", "-o", features).exit_code == 0
    base = json.loads(invoke(runner, "evaluate", features, "--json", "--record").stdout)
    assert (base["queries"], base["database"]) == (359, 400)  # 40 per class in train; test is not limited below
    result = invoke(runner, "train-triplet", features, "-o", emb, "--margin", "0.5", "--epochs", "6", "--dim", "16",
                    "--hidden", "64", "--miner", "semihard", "--classes-per-batch", "10", "--samples-per-class", "8")
    assert result.exit_code == 0, result.output
    trained = json.loads(invoke(runner, "evaluate", emb, "--json", "--record").stdout)
    assert trained["database"] == base["database"]
    assert trained["map"] > base["map"] + 0.1  # pixels 0.6-0.7; a semi-hard FaceNet head ranks far better
    result = invoke(runner, "train-hash", features, "-o", model, "--bits", "16", "--epochs", "6", "--hidden", "64")
    assert result.exit_code == 0, result.output
    assert invoke(runner, "encode", features, "--model", model, "-o", codes).exit_code == 0
    hashed = json.loads(invoke(runner, "evaluate", codes, "--json", "--record").stdout)
    assert hashed["bits"] == 16 and 0.3 < hashed["map"] <= hashed["map_optimistic"]
    png = tmp_path / "emb.tsne.png"
    assert invoke(runner, "plot-tsne", emb, "-o", png, "--max-points", "200").exit_code == 0
    result = invoke(runner, "report", tmp_path, "-o", tmp_path / "report.md")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    for value in (base["map"], trained["map"], hashed["map"]):
        assert f"{value:.4f}" in report
    # The job ends by indexing the codes and searching them with the test digits, drawing a grid.
    index = tmp_path / "codes.index.h5"
    assert invoke(runner, "index", codes, "-o", index).exit_code == 0
    result = invoke(runner, "search", index, "--queries", codes, "-k", "5", "--json", "--grid", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 359 and (tmp_path / "s.png").stat().st_size > 10_000
    hits = np.mean([row["relevant"] for answer in answers for row in answer["results"]])
    assert hits > 0.5  # 16-bit codes of 10 digit classes: most neighbours share the query's class


@pytest.mark.parametrize("args, message", [
    (["--classes-per-batch", "5"], "classes per batch (5) exceeds the 4 classes in the data"),
    (["--samples-per-class", "1"], "samples per class must be at least 2"),
])
def test_pk_batches_larger_than_the_data_allow(runner, tmp_path, features_file, args, message):
    out = tmp_path / "o.h5"
    result = invoke(runner, "train-triplet", features_file, "-o", out, "--miner", "hardest", "--epochs", "1",
                    "--classes-per-batch", "4", *args)
    assert result.exit_code == 2 and message in result.stderr and not out.exists()


def test_class_with_fewer_than_k_items_is_sampled_with_replacement(runner, tmp_path):
    # Class 2 has 6 train items (5 after the validation split), K = 8: documented fallback, not an error.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 30, 6])
    features = (rng.normal(size=(3, 8))[labels] + 0.1 * rng.normal(size=(len(labels), 8))).astype(np.float32)
    path = tmp_path / "f.h5"
    with ArtifactWriter(path, kind="features", class_names=["a", "b", "c"], config={}) as writer:
        writer.write_split("train", Split(labels, np.arange(len(labels)), features=features))
        writer.write_split("test", Split(labels[::3], np.arange(len(labels))[::3], features=features[::3]))
    out = tmp_path / "e.h5"
    result = invoke(runner, "train-triplet", path, "-o", out, "--miner", "hardest", "--classes-per-batch", "3",
                    "--samples-per-class", "8", "--epochs", "2", "--val-fraction", "0.2", "--hidden", "16")
    assert result.exit_code == 0, result.output
    assert read_artifact(out).split("val").labels.tolist().count(2) == 1
