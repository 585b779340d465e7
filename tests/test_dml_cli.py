"""The metric-learning job end to end through the CLI: an image folder split by classes, extract, train-triplet with
the N-pair and the margin loss, evaluate --protocol within with Recall@K, NMI and MAP@R (checked against a naive
recomputation), and the documented errors of the new options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from deephash_cli.artifacts import read_artifact
from deephash_cli.records import read_records
from tests.conftest import invoke, write_features
from tests.test_dml_metrics import _naive

KS = (1, 2, 4, 8)
METRICS = "recall@1,2,4,8,nmi,map@r"


def _folder(root, classes=4, train=10, test=5):
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(0, 256, size=3)
        for split, n in (("train", train), ("test", test)):
            for k in range(n):
                pixels = np.clip(colour + rng.normal(0, 40, size=(8, 8, 3)), 0, 255).astype(np.uint8)
                path = root / split / f"class{c}" / f"{k:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def class_split_features(tmp_path_factory):
    from typer.testing import CliRunner

    tmp = tmp_path_factory.mktemp("dml")
    out = tmp / "folder.h5"
    result = invoke(CliRunner(), "extract", "--dataset", "imagefolder", "--data-dir", _folder(tmp / "images"),
                    "--backbone", "pixels", "--split", "classes", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def _check_against_naive(result, artifact_path, seed=0):
    test = read_artifact(artifact_path).split("test")
    recall, map_r = _naive(test.features, test.labels, test.features, test.labels, KS, True, "euclidean")
    for k in KS:
        assert 0.0 <= result["recall_at"][str(k)] <= 1.0
        assert result["recall_at"][str(k)] == pytest.approx(recall[k], abs=1e-12)
    assert result["recall_at"]["1"] <= result["recall_at"]["2"] <= result["recall_at"]["4"] <= result["recall_at"]["8"]
    assert result["map_at_r"] == pytest.approx(map_r, abs=1e-12) and 0.0 <= result["map_at_r"] <= 1.0
    clusters = KMeans(n_clusters=2, n_init=1, random_state=seed).fit_predict(test.features.astype(np.float64))
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(test.labels, clusters), abs=1e-12)
    assert result["nmi_clusters"] == 2 and result["queries"] == 30 and result["dml_queries"] == 30


def test_class_split_of_an_image_folder(class_split_features):
    art = read_artifact(class_split_features)
    assert art.class_names == ["class0", "class1", "class2", "class3"]
    assert set(art.split("train").labels.tolist()) == {0, 1} and set(art.split("test").labels.tolist()) == {2, 3}
    assert len(art.split("train")) == len(art.split("test")) == 30  # 10 train + 5 test images of each class
    assert art.config["split"] == "classes" and art.config["split_pooled_from"] == "predefined"
    assert any(p.startswith("test/class0/") for p in art.split("train").paths)


def test_evaluate_within_on_frozen_features(runner, class_split_features):
    result = invoke(runner, "evaluate", class_split_features, "--protocol", "within", "--metric", METRICS + ",map",
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_against_naive(report, class_split_features)
    assert report["metrics"] == ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "map"]
    assert report["selection"] == "every item of test (30) against the other 29"
    assert report["setting"]["metrics"]["recall_at"] == [1, 2, 4, 8] and report["setting"]["database_split"] is None
    table = invoke(runner, "evaluate", class_split_features, "--protocol", "within", "--metric", METRICS)
    assert "Recall@8" in table.stderr and "MAP@R" in table.stderr and "NMI (k-means, 2 clusters)" in table.stderr


@pytest.mark.parametrize("loss, extra", [
    ("npair", ["--miner", "all", "--classes-per-batch", "2", "--samples-per-class", "2"]),
    ("margin", ["--miner", "distance-weighted", "--margin", "0.2", "--classes-per-batch", "2",
                "--samples-per-class", "5", "--beta-lr", "0.01"]),
])
def test_train_triplet_then_evaluate_within(runner, tmp_path, class_split_features, loss, extra):
    out = tmp_path / f"{loss}.h5"
    result = invoke(runner, "train-triplet", class_split_features, "--loss", loss, *extra, "--epochs", "2",
                    "--head", "linear", "--dim", "8", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert set(art.split("train").labels.tolist()) == {0, 1}  # trained on the first half of the classes only
    if loss == "margin":
        assert art.config["beta"] == "class" and art.config["beta_lr"] == 0.01
        assert "beta_mean" in art.config["margin_search"][0] and "beta_mean" in art.history[0]
    else:
        assert art.config["npair_reg"] == 0.002 and art.config["chosen_margin"] is None
    result = invoke(runner, "evaluate", out, "--protocol", "within", "--metric", METRICS, "--json", "--record")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_against_naive(report, out)
    assert read_records(out)[0]["recall_at"] == report["recall_at"]


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{f}", "--metric", "recall"], "unknown metric 'recall'; valid names: map, map@K, precision@K, knn, "
                                                "recall@K, map@r, nmi"),
    (["evaluate", "{f}", "--metric", "recall@0"], "metric 'recall@0': K must be a positive integer"),
    (["evaluate", "{f}", "--metric", "nmi@5"], "unknown metric 'nmi@5'"),
    (["evaluate", "{f}", "--protocol", "within", "--query-split", "val"], "no split 'val'"),
    (["train-triplet", "{f}", "--loss", "margin", "--beta", "each"], "unknown --beta 'each'; valid names: class, "
                                                                     "global"),
    (["train-triplet", "{f}", "--loss", "margin", "--beta-lr", "-1"], "--beta-lr must be ≥ 0"),
    (["train-triplet", "{f}", "--loss", "npair", "--npair-reg", "-1"], "--npair-reg must be ≥ 0"),
    (["train-triplet", "{f}", "--loss", "npairs"], "unknown loss 'npairs'; valid names: hoffer, facenet, contrastive, "
                                                   "dtsh, triplet-ranking, npair, margin"),
    (["finetune", "--dataset", "digits", "--split", "half"], "unknown --split 'half'; valid names: official, classes"),
])
def test_documented_errors(runner, tmp_path, args, message):
    features = write_features(tmp_path / "f.h5")
    result = invoke(runner, *[a.format(f=features) for a in args], "-o" if args[0] != "evaluate" else "--json",
                    *([tmp_path / "out.h5"] if args[0] != "evaluate" else []))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_metric_list_shorthand():
    from deephash_cli.cli import _parse_metrics

    assert _parse_metrics("recall@1,2,4,8,nmi,map@r,map,precision@10,100") == (
        [], [10, 100], ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "map", "precision@10",
                        "precision@100"])
    assert _parse_metrics("MAP@R,map@5,10")[0] == [5, 10]


def test_finetune_margin_loss_on_the_class_split_checkpoints_beta(runner, tmp_path, one_thread):
    import torch
    import torchvision

    from deephash_cli.artifacts import read_checkpoint, read_header
    from deephash_cli.finetune import read_resume

    root = _folder(tmp_path / "images", train=6, test=2)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)  # random init, BatchNorm statistics of random images
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 16, 16))
    torch.save(model.state_dict(), tmp_path / "init.pth")
    out = tmp_path / "m.model.h5"
    result = invoke(runner, "finetune", "--dataset", "imagefolder", "--data-dir", root, "--weights",
                    tmp_path / "init.pth", "--image-size", "16", "--classes-per-batch", "2", "--samples-per-class",
                    "2", "--val-fraction", "0.25", "--dim", "8", "--device", "cpu", "--epochs", "1", "--split",
                    "classes", "--loss", "margin", "--miner", "distance-weighted", "--beta-lr", "0.01", "-o", out)
    assert result.exit_code == 0, result.output
    config = read_header(out)["config"]
    assert config["fingerprint"]["split"] == "classes" and config["fingerprint"]["beta_lr"] == 0.01
    assert config["split"]["train_classes"] == "0..1" and config["items"]["train"] + config["items"]["val"] == 16
    beta = read_checkpoint(out)[1]["loss/beta"]
    assert beta.shape == (4,) and np.all(beta[2:] == np.float32(1.2)) and np.any(beta[:2] != np.float32(1.2))
    np.testing.assert_array_equal(read_resume(out, config["fingerprint"]).loss["beta"].numpy(), beta)
