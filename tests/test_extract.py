"""`deephash extract` end to end on small data the tests make, plus its documented errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deephash_cli.artifacts import read_artifact
from deephash_cli.backbones import BACKBONES, build_backbone
from deephash_cli.datasets import load_dataset, read_cifar_batch
from deephash_cli.errors import DeephashError
from tests.conftest import invoke

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_digits_pixels_features_are_the_normalised_pixels(runner, tmp_path):
    out = tmp_path / "digits.h5"
    result = invoke(runner, "extract", "--dataset", "digits", "--backbone", "pixels", "--mean", "0.5", "--std",
                    "0.25", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # stdout carries only the path
    art = read_artifact(out)
    train, test = art.split("train"), art.split("test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.features.shape == (1438, 192)  # 3 channels x 8 x 8, native size
    from sklearn.datasets import load_digits

    image = load_digits().images[train.index[0]]
    pixels = np.clip(np.round(image * 255 / 16), 0, 255) / 255.0
    expected = np.tile(((pixels - 0.5) / 0.25).ravel(), 3)
    np.testing.assert_allclose(train.features[0], expected, atol=1e-6)
    np.testing.assert_array_equal(train.labels, load_digits().target[train.index])
    # The stratified split keeps class proportions and is disjoint.
    assert not set(train.index) & set(test.index)
    assert np.bincount(test.labels).min() >= 35
    assert art.config["split_test_split"] == "stratified" and art.config["split_seed"] == 0


def _write_tiny_cifar(root, n_train_per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n)),
                 "batch_label": name, "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": n_train_per_batch}, handle, protocol=2)
    return folder


def test_cifar10_batches_are_read_in_order_with_their_labels(runner, tmp_path):
    folder = _write_tiny_cifar(tmp_path / "data")
    out = tmp_path / "c.h5"
    result = invoke(runner, "extract", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--backbone",
                    "pixels", "--mean", "0", "--std", "1", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert art.class_names == CIFAR_NAMES
    images, labels = read_cifar_batch(folder / "data_batch_2")
    train = art.split("train")
    assert len(train) == 20 and len(art.split("test")) == 6
    np.testing.assert_array_equal(train.labels[4:8], labels)
    # Pixel features in CHW order, scaled to [0, 1].
    np.testing.assert_allclose(train.features[4], images[0].transpose(2, 0, 1).ravel() / 255.0, atol=1e-6)


def test_cifar10_reader_refuses_pickled_code(tmp_path):
    folder = _write_tiny_cifar(tmp_path / "data")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": [0]}, handle)
    with pytest.raises(DeephashError, match="refusing to load global builtins.print"):
        read_cifar_batch(folder / "data_batch_1")


def test_cifar10_missing_offline_is_one_clear_error(runner, tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    result = invoke(runner, "extract", "--dataset", "cifar10", "--data-dir", tmp_path, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2
    assert "CIFAR-10 not found" in result.stderr and "download failed" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "o.h5").exists()


def _image_folder(root, corrupt=False):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "9.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_imagefolder_with_mobilenet_random_weights(runner, tmp_path):
    root = _image_folder(tmp_path / "imgs")
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, "--backbone", "mobilenet_v2",
                    "--weights", "none", "--image-size", "32", "--workers", "0", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert art.class_names == ["cat", "dog"]
    assert art.split("train").features.shape == (6, 1280) and art.split("test").labels.tolist() == [0, 0, 1, 1]
    assert art.split("test").index.tolist() == [6, 7, 8, 9]


def test_imagefolder_corrupt_image_fails_with_its_path_or_is_skipped(runner, tmp_path):
    root = _image_folder(tmp_path / "imgs", corrupt=True)
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, "--workers", "0", "-o", out)
    assert result.exit_code == 2 and "9.jpg: cannot decode image" in result.stderr
    assert not out.exists()
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, "--workers", "0",
                    "--skip-corrupt", "-o", out)
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable" in result.stderr
    art = read_artifact(out)
    assert len(art.split("train")) == 6 and art.attrs["extraction"].count("9.jpg") == 1


def test_imagefolder_without_test_folder_makes_a_stratified_split(runner, tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    data = load_dataset("imagefolder", str(root), test_fraction=0.4, seed=3)
    assert len(data.train) == 6 and np.bincount(data.test.labels).tolist() == [2, 2]
    assert data.split_info == {"test_split": "stratified", "test_fraction": 0.4, "seed": 3, "root": str(root)}


@pytest.mark.parametrize("args, message", [
    (["--backbone", "alexnet"], "unknown backbone 'alexnet'; valid names: vgg16, vgg19, resnet18"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid names: digits, cifar10, imagefolder"),
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5': 2 values; expected 1 or 3 comma-separated values (R,G,B)"),
])
def test_unknown_names_list_the_valid_ones(runner, tmp_path, args, message):
    result = invoke(runner, "extract", *args, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()


def test_existing_output_needs_force(runner, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    result = invoke(runner, "extract", "-o", out)
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert invoke(runner, "extract", "-o", out, "--force").exit_code == 0


def test_weights_file_errors(runner, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage")
    result = invoke(runner, "extract", "--backbone", "resnet18", "--weights", garbage, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and "not a readable state_dict" in result.stderr
    wrong = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), wrong)
    result = invoke(runner, "extract", "--backbone", "resnet18", "--weights", wrong, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and "does not fit backbone resnet18" in result.stderr
    assert "missing keys" in result.stderr and not (tmp_path / "o.h5").exists()
    result = invoke(runner, "extract", "--backbone", "resnet18", "--weights", tmp_path / "none.pth", "-o",
                    tmp_path / "o.h5")
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_weights_path_loads_exactly_the_saved_parameters(tmp_path):
    torch.manual_seed(0)
    full = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    model, spec = build_backbone("resnet18", str(path))
    x = torch.randn(2, 3, 32, 32)
    full.eval()
    full.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x))
    assert spec.dim == 512


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if n not in ("pixels", "vgg19", "resnet101",
                                                                             "resnet152")])
def test_every_backbone_outputs_its_documented_dimension(name):
    model, spec = build_backbone(name, "none")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, spec.dim)
