"""train-triplet, train-hash and encode end to end on small synthetic features, plus their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deephash_cli.artifacts import ArtifactWriter, Split, read_artifact
from deephash_cli.errors import DeephashError
from deephash_cli.train import TrainOptions, fit
from tests.conftest import invoke, write_features

FAST = ["--epochs", "3", "--hidden", "32"]


def test_train_triplet_selects_margin_on_validation_and_writes_every_split(runner, tmp_path, features_file):
    out = tmp_path / "emb.h5"
    result = invoke(runner, "train-triplet", features_file, "-o", out, "--margin", "0.1,0.5", "--dim", "8", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    art = read_artifact(out)
    assert art.kind == "embeddings" and set(art.splits) == {"train", "val", "test"}
    # 10% of each class of 40 carved into val; train keeps the rest; test untouched.
    assert np.bincount(art.split("val").labels).tolist() == [4, 4, 4, 4]
    assert len(art.split("train")) == 144 and len(art.split("test")) == 40
    assert not set(art.split("val").index) & set(art.split("train").index)
    assert art.split("test").features.shape == (40, 8)
    np.testing.assert_allclose(np.linalg.norm(art.split("test").features, axis=1), 1.0, atol=1e-5)
    search = art.config["margin_search"]
    assert [run["margin"] for run in search] == [0.1, 0.5]
    best = max(search, key=lambda run: run["val_map"])
    assert art.config["chosen_margin"] == best["margin"] and art.config["best_val_map"] == best["val_map"]
    assert len(art.history) == 3 and all(0.0 <= row["val_map"] <= 1.0 for row in art.history)
    assert art.attrs["parent"] == str(features_file) and len(art.attrs["parent_sha256"]) == 64
    assert "chosen margin" in result.stderr


def test_train_triplet_is_deterministic_on_cpu(runner, tmp_path, features_file):
    outs = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for out in outs:
        result = invoke(runner, "train-triplet", features_file, "-o", out, "--margin", "0.2", "--miner", "hardest",
                        "--classes-per-batch", "4", "--samples-per-class", "5", "--device", "cpu", *FAST)
        assert result.exit_code == 0, result.output
    a, b = (read_artifact(p) for p in outs)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(split).features, b.split(split).features)


def test_trained_embeddings_beat_a_random_head(runner, tmp_path):
    # Blobs with heavy noise in 32 dims: the trained head must rank better than it did at init.
    features = write_features(tmp_path / "f.h5", n_train=60, n_test=20, n_classes=5, dim=32, spread=1.5)
    out = tmp_path / "e.h5"
    result = invoke(runner, "train-triplet", features, "-o", out, "--margin", "0.2", "--epochs", "8", "--lr",
                    "3e-3", "--hidden", "64", "--dim", "16")
    assert result.exit_code == 0, result.output
    history = read_artifact(out).history
    assert history[-1]["loss"] < history[0]["loss"]
    evaluated = json.loads(invoke(runner, "evaluate", out, "--json").stdout)
    baseline = json.loads(invoke(runner, "evaluate", features, "--json").stdout)
    assert evaluated["database"] == baseline["database"] == 300  # train + val = the parent's train
    assert evaluated["map"] > 0.5


def test_saved_model_reproduces_the_embeddings_through_encode(runner, tmp_path, features_file):
    emb, model = tmp_path / "emb.h5", tmp_path / "model.h5"
    assert invoke(runner, "train-triplet", features_file, "-o", emb, "--save-model", model, "--margin", "0.2",
                  "--loss", "hoffer", *FAST).exit_code == 0
    again = tmp_path / "again.h5"
    result = invoke(runner, "encode", features_file, "--model", model, "-o", again)
    assert result.exit_code == 0, result.output
    a, b = read_artifact(emb), read_artifact(again)
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(a.split(split).features, b.split(split).features, atol=1e-6)
        np.testing.assert_array_equal(a.split(split).index, b.split(split).index)
    assert read_artifact(model).model_attrs["loss"] == "hoffer"


def test_train_hash_encode_evaluate_chain(runner, tmp_path, features_file):
    model, codes = tmp_path / "h.model.h5", tmp_path / "codes.h5"
    result = invoke(runner, "train-hash", features_file, "-o", model, "--bits", "12", "--method", "dtsh",
                    "--lam-warmup", "1", "--alpha-ramp", "1:4:1", *FAST)
    assert result.exit_code == 0, result.output
    history = read_artifact(model).history
    # λ: 0 during the warm-up, then the default 1/bits (the penalty averaged over the 12 bits)
    assert [row["alpha"] for row in history] == [1.0, 2.0, 4.0] and [row["lam"] for row in history] == [0, 1 / 12,
                                                                                                         1 / 12]
    result = invoke(runner, "encode", features_file, "--model", model, "-o", codes)
    assert result.exit_code == 0, result.output
    art = read_artifact(codes)
    assert art.kind == "codes" and art.split("test").codes.shape == (40, 2) and art.split("test").bits == 12
    assert not np.any(art.split("test").codes[:, 1] & 0x0F)  # 4 unused trailing bits are zero
    report = json.loads(invoke(runner, "evaluate", codes, "--json").stdout)
    assert report["distance"] == "hamming"
    assert report["map_pessimistic"] <= report["map_expected"] <= report["map_optimistic"]
    relaxed = tmp_path / "relaxed.h5"
    assert invoke(runner, "encode", features_file, "--model", model, "-o", relaxed, "--relaxed").exit_code == 0
    relaxed_art = read_artifact(relaxed)
    from deephash_cli.codes import pack_codes

    np.testing.assert_array_equal(pack_codes(relaxed_art.split("test").features), art.split("test").codes)


def test_triplet_ranking_with_a_miner(runner, tmp_path, features_file):
    model = tmp_path / "h.model.h5"
    result = invoke(runner, "train-hash", features_file, "-o", model, "--bits", "16", "--method", "triplet-ranking",
                    "--miner", "semihard", "--classes-per-batch", "4", "--samples-per-class", "6", *FAST)
    assert result.exit_code == 0, result.output
    assert read_artifact(model).config["method"] == "triplet-ranking"


def _codes_file(path):
    with ArtifactWriter(path, kind="codes", class_names=["a", "b"], config={}) as writer:
        writer.write_split("train", Split(np.array([0, 1] * 5), np.arange(10), codes=np.zeros((10, 1), np.uint8),
                                          bits=8))
    return path


@pytest.mark.parametrize("command", ["train-triplet", "train-hash"])
def test_codes_given_as_features(runner, tmp_path, command):
    result = invoke(runner, command, _codes_file(tmp_path / "c.h5"), "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and "expected a features or embeddings artifact, found kind 'codes'" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--margin", ""], "--margin '': an empty item; expected comma-separated values, each a number > 0"),
    (["--margin", "0.2,-1"], "--margin '0.2,-1': '-1' is not a number > 0"),
    (["--margin", "0"], "--margin '0': '0' is not a number > 0"),
    (["--dim", "0"], "--dim must be positive, got 0"),
    (["--val-fraction", "0.01"], "leaves one side of the split without any item"),
    (["--loss", "dtsh"], "is a hashing loss"),
    (["--loss", "arcface"], "unknown loss 'arcface'; valid names: hoffer, facenet, contrastive"),
    (["--miner", "easy"], "unknown miner 'easy'; valid names: all, hardest, semihard"),
    (["--lr-milestones", "5,3"], "--lr-milestones '5,3': 3 comes after 5; expected increasing values"),
    (["--lr-milestones", "x"], "--lr-milestones 'x': 'x' is not an epoch ≥ 1"),
    (["--lr-gamma", "0"], "--lr-gamma must lie in (0, 1], got 0.0"),
])
def test_train_triplet_bad_options(runner, tmp_path, features_file, args, message):
    out = tmp_path / "o.h5"
    result = invoke(runner, "train-triplet", features_file, "-o", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and not out.exists()


def test_single_class_train_split(runner, tmp_path):
    path = tmp_path / "one.h5"
    with ArtifactWriter(path, kind="features", class_names=["a"], config={}) as writer:
        writer.write_split("train", Split(np.zeros(10, np.int64), np.arange(10), features=np.ones((10, 3), np.float32)))
    result = invoke(runner, "train-triplet", path, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and "single class" in result.stderr


@pytest.mark.parametrize("bits", ["4", "300"])
def test_bits_out_of_range(runner, tmp_path, features_file, bits):
    result = invoke(runner, "train-hash", features_file, "--bits", bits, "-o", tmp_path / "m.h5")
    assert result.exit_code == 2 and "--bits must lie in 8..256" in result.stderr


def test_encode_refuses_a_model_of_other_features(runner, tmp_path, features_file):
    model = tmp_path / "m.h5"
    assert invoke(runner, "train-hash", features_file, "-o", model, "--bits", "8", "--epochs", "1").exit_code == 0
    other = write_features(tmp_path / "other.h5", dim=24)
    result = invoke(runner, "encode", other, "--model", model, "-o", tmp_path / "c.h5")
    assert result.exit_code == 2 and "dim 16 (model) vs 24 (features)" in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_nan_in_training_names_the_epoch_and_keeps_no_model(runner, tmp_path, features_file, monkeypatch):
    from deephash_cli.losses import DTSHLoss

    original = DTSHLoss.terms

    def poisoned(self, embeddings, labels, a, p, n):
        terms = original(self, embeddings, labels, a, p, n)
        return terms * float("nan") if self.alpha >= 2 else terms

    monkeypatch.setattr(DTSHLoss, "terms", poisoned)
    model = tmp_path / "m.h5"
    result = invoke(runner, "train-hash", features_file, "-o", model, "--bits", "8", "--method", "dtsh", "--alpha-ramp", "1:8:1",
                    "--epochs", "3")
    assert result.exit_code == 2 and "loss is nan at epoch 2" in result.stderr
    assert not model.exists() and list(tmp_path.iterdir()) == [features_file]


def test_fit_keeps_the_best_validation_epoch_and_stops_early():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.arange(40) % 4
    model = torch.nn.Linear(4, 4)
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95])
    seen = []

    def validate(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    from deephash_cli.losses import FaceNetTripletLoss

    result = fit(model, FaceNetTripletLoss(0.2), x, y, TrainOptions(epochs=5, early_stopping=2, batch_size=16),
                 validate=validate)
    assert result.best_epoch == 2 and result.best_score == 0.9 and len(result.history) == 4
    torch.testing.assert_close(model.state_dict()["weight"], seen[1]["weight"])


def test_train_options_are_checked():
    with pytest.raises(DeephashError, match="--epochs must be positive"):
        TrainOptions(epochs=0).check()
    with pytest.raises(DeephashError, match="unknown optimizer 'rmsprop'"):
        TrainOptions(optimizer="rmsprop").check()


def test_collapsed_embeddings_warn_once():
    # A head whose outputs ignore the input (all rows the same point) is what batch-hard collapse
    # looks like; the loop must say so once, not on every batch.
    x, y = torch.randn(40, 4), torch.arange(40) % 4
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(1.0)
    messages = []
    from deephash_cli.losses import FaceNetTripletLoss

    fit(model, FaceNetTripletLoss(0.2), x, y, TrainOptions(epochs=2, miner="hardest", classes_per_batch=4,
                                                          samples_per_class=5, lr=1e-9),
        validate=lambda m: 0.0, warn=messages.append)
    assert len(messages) == 1 and "collapsed" in messages[0]


def test_lr_factor_steps_after_each_milestone():
    from deephash_cli.train import lr_factor

    assert [lr_factor(epoch, (2, 4), 0.1) for epoch in range(1, 7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(9, (), 0.1) == 1


def test_fit_decays_learning_rates_after_milestones_and_resumes_into_the_schedule():
    import copy

    from deephash_cli.losses import FaceNetTripletLoss

    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.arange(40) % 4
    options = TrainOptions(epochs=3, batch_size=16, lr=1e-2, lr_milestones=(1, 2), lr_gamma=0.5)

    def run(resume=None):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 3)
        checkpoints = []  # deep copies: the loop goes on mutating its tensors
        result = fit(model, FaceNetTripletLoss(0.2), x, y, options, validate=lambda m: 0.0, resume=resume,
                     on_checkpoint=lambda checkpoint: checkpoints.append(copy.deepcopy(checkpoint)))
        return result, checkpoints

    result, checkpoints = run()
    assert [row["lr_factor"] for row in result.history] == [1.0, 0.5, 0.25]
    assert [c.optimizer["param_groups"][0]["lr"] for c in checkpoints] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    # Resumed after epoch 2, whose checkpoint holds an already decayed rate: epoch 3 still gets base × 0.25.
    _, resumed = run(resume=checkpoints[1])
    assert [c.optimizer["param_groups"][0]["lr"] for c in resumed] == pytest.approx([2.5e-3])
    for name, value in checkpoints[-1].model.items():
        assert torch.equal(resumed[-1].model[name], value), name
