"""Shared fixtures: small synthetic artifacts and a CliRunner that separates stdout from stderr."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from deephash_cli.artifacts import ArtifactWriter, Split
from deephash_cli.cli import app


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (CNN tests: the CPU is shared, and 2 threads on a busy machine are
    many times slower). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run `deephash ARGS` in-process; returns the click Result (result.stdout / result.stderr separate)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: features (n, dim) float32 around one random centre per class, labels (n,) int64."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels.astype(np.int64)


def write_features(path, *, n_train=40, n_test=10, n_classes=4, dim=16, seed=0, spread=0.3, kind="features",
                   config=None):
    """A features artifact of Gaussian blobs with train and test splits."""
    x_train, y_train = blobs(n_train, n_classes, dim, seed, spread)
    x_test, y_test = blobs(n_test, n_classes, dim, seed, spread)
    rng = np.random.default_rng(seed + 1)
    x_test = x_test + 0.05 * rng.normal(size=x_test.shape).astype(np.float32)
    with ArtifactWriter(path, kind=kind, class_names=[f"class{i}" for i in range(n_classes)],
                        config=config or {"stage": "test", "backbone": "synthetic", "dataset": "blobs"},
                        command="pytest") as writer:
        writer.write_split("train", Split(y_train, np.arange(len(y_train)), features=x_train))
        writer.write_split("test", Split(y_test, np.arange(len(y_test)), features=x_test))
    return path


@pytest.fixture
def features_file(tmp_path):
    return write_features(tmp_path / "features.h5")


# Wall-clock columns of the training history: the only datasets a rerun may change.
TIMING = ("history/seconds", "history/seconds_with_validation")


def datasets(path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its path."""
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return found


def assert_bitwise_equal(path, other) -> int:
    """Every dataset of ``path`` equals ``other``'s bit for bit (dtype, shape, bytes), timing columns aside;
    returns how many were compared."""
    mine, theirs = datasets(path), datasets(other)
    assert mine.keys() == theirs.keys()
    compared = 0
    for name, value in mine.items():
        if name in TIMING:
            continue
        found = theirs[name]
        assert (value.dtype, value.shape) == (found.dtype, found.shape), name
        if value.dtype.kind == "O":  # variable-length strings: the stored bytes, not the object pointers
            assert np.asarray(value).tolist() == np.asarray(found).tolist(), f"{path}:{name} differs from {other}"
        else:
            assert np.asarray(value).tobytes() == np.asarray(found).tobytes(), f"{path}:{name} differs from {other}"
        compared += 1
    return compared


def without_timing(config: dict) -> dict:
    """A training config without its seconds (and the model file's hash, which covers the model's timing)."""
    drop = ("seconds_per_epoch", "model_sha256")
    return {key: ([{k: v for k, v in run.items() if "seconds" not in k} for run in value]
                  if key == "margin_search" else value) for key, value in config.items() if key not in drop}
