"""The HDF5 artifact module: round trips, atomic writes, provenance, and validation messages."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from deephash_cli import artifacts
from deephash_cli.artifacts import ArtifactWriter, Split, read_artifact
from deephash_cli.errors import DeephashError
from tests.conftest import write_features


def test_round_trip_keeps_arrays_attributes_and_dtypes(tmp_path):
    path = write_features(tmp_path / "a.h5", n_train=5, n_test=3, n_classes=2, dim=4)
    art = read_artifact(path)
    assert art.kind == "features"
    assert art.class_names == ["class0", "class1"]
    assert set(art.splits) == {"train", "test"}
    train = art.split("train")
    assert train.features.dtype == np.float32 and train.features.shape == (10, 4)
    assert train.labels.dtype == np.int64 and train.index.tolist() == list(range(10))
    assert art.attrs["format"] == "deephash" and art.attrs["format_version"] == artifacts.FORMAT_VERSION
    assert art.attrs["command"] == "pytest"
    assert "numpy" in art.attrs["versions"] and art.config["backbone"] == "synthetic"


def test_codes_round_trip_and_parent_hash(tmp_path):
    parent = write_features(tmp_path / "parent.h5")
    codes = np.packbits(np.random.default_rng(0).integers(0, 2, size=(6, 12)).astype(np.uint8), axis=1)
    with ArtifactWriter(tmp_path / "c.h5", kind="codes", class_names=["a", "b"], config={}, parent=parent) as w:
        w.write_split("test", Split(np.array([0, 1, 0, 1, 0, 1]), np.arange(6), codes=codes, bits=12))
    art = read_artifact(tmp_path / "c.h5")
    assert art.split("test").bits == 12 and art.split("test").codes.shape == (6, 2)
    np.testing.assert_array_equal(art.split("test").codes, codes)
    assert art.attrs["parent_sha256"] == artifacts.sha256_file(parent)


def test_failed_write_leaves_no_file_and_keeps_existing_output(tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out, kind="features", class_names=["a"], config={}) as w:
            w.create_split("train", 4, dim=2)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out, kind="features", class_names=["a"], config={}, force=True) as w:
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]


def test_existing_output_needs_force(tmp_path):
    out = write_features(tmp_path / "a.h5")
    with pytest.raises(DeephashError, match="exists; pass --force"):
        write_features(out)


def test_short_split_is_an_error_but_resizable_split_shrinks(tmp_path):
    with pytest.raises(ValueError, match="wrote 1 rows, expected 3"):
        with ArtifactWriter(tmp_path / "a.h5", kind="features", class_names=["a"], config={}) as w:
            w.create_split("train", 3, dim=2).write(np.zeros((1, 2)), np.zeros(1), np.zeros(1))
    assert not (tmp_path / "a.h5").exists()
    with ArtifactWriter(tmp_path / "b.h5", kind="features", class_names=["a"], config={}) as w:
        w.create_split("train", 3, dim=2, resizable=True).write(np.ones((2, 2)), np.zeros(2), np.arange(2))
    assert read_artifact(tmp_path / "b.h5").split("train").features.shape == (2, 2)


def _corrupt(path, mutate):
    with h5py.File(path, "r+") as f:
        mutate(f)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.attrs.__setitem__("format", "other"), "not a deephash artifact"),
    (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99 is not supported"),
    (lambda f: f.attrs.__setitem__("kind", "weird"), "unknown artifact kind"),
    (lambda f: (f["test"].__delitem__("labels"), f["test"].create_dataset("labels", data=np.zeros(3, np.int64))),
     "labels has 3 rows but index has 40"),
    (lambda f: f["train/features"].__setitem__((0, 0), np.nan), "NaN or infinite"),
    (lambda f: f["train/features"].__setitem__((5, 1), np.inf), "first at row 5"),
    (lambda f: f["train/labels"].__setitem__(0, 7), "values must lie in 0..3"),
])
def test_invalid_artifacts_name_what_was_expected_and_found(tmp_path, mutate, message):
    path = _corrupt(write_features(tmp_path / "a.h5"), mutate)
    with pytest.raises(DeephashError, match=message):
        read_artifact(path)


def test_missing_file_non_hdf5_wrong_kind_and_missing_split(tmp_path):
    with pytest.raises(DeephashError, match="no such file"):
        read_artifact(tmp_path / "nope.h5")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DeephashError, match="not an HDF5 file"):
        read_artifact(tmp_path / "x.txt")
    path = write_features(tmp_path / "a.h5")
    with pytest.raises(DeephashError, match="expected a codes artifact, found kind 'features'"):
        read_artifact(path, expect_kinds=("codes",))
    with pytest.raises(DeephashError, match=r"no split 'val' \(splits present: train, test\)"):
        read_artifact(path, splits=["val"])


def test_model_parameters_and_history_round_trip(tmp_path):
    with ArtifactWriter(tmp_path / "m.h5", kind="model", class_names=None, config={"x": 1}) as w:
        w.write_model({"type": "head", "in_dim": 3}, {"net.weight": np.ones((2, 3), np.float32)})
        w.write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    art = read_artifact(tmp_path / "m.h5", expect_kinds=("model",))
    assert art.model_attrs == {"type": "head", "in_dim": 3}
    np.testing.assert_array_equal(art.parameters["net.weight"], np.ones((2, 3)))
    assert [h["loss"] for h in art.history] == [0.5, 0.25]
    with h5py.File(tmp_path / "m.h5") as f:
        assert json.loads(f.attrs["config"]) == {"x": 1}
