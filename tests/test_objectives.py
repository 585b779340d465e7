"""Objectives, shared distances, hash centres and the label-based hash methods (issue 12).

Levels: the losses against slow references written from the papers' formulas; properties of the hash centres
and distances; the objective/miner agreement for every registered loss; CLI runs of every method with resume.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_bitwise_equal, invoke, write_features
from deephash_cli.distances import Distance
from deephash_cli.embedding_losses import EMBEDDING_LOSSES, LossOptions
from deephash_cli.errors import DeephashError
from deephash_cli.hash_centers import hadamard, hash_centers, min_distance, paley
from deephash_cli.hashing import HASH_METHODS, HashOptions, TrainingData, parse_ramp, ramp_value
from deephash_cli.losses.base import LabelLoss
from deephash_cli.losses.central import CentralSimilarityLoss
from deephash_cli.losses.greedyhash import GreedyHashLoss, sign_straight_through
from deephash_cli.miners import MINERS
from deephash_cli.objectives import embedding_objective, hash_objective
from deephash_cli.train import TrainOptions, fit, make_miner


def _data(n_classes=4, n=40, seed=0):
    return TrainingData(n_classes, np.arange(n) % n_classes, seed)


# --------------------------------------------------------------------------- distances shared by loss and miner


@pytest.mark.parametrize("distance", [Distance(), Distance(True, False), Distance(False, True),
                                      Distance(False, False), Distance(False, True, tanh=True),
                                      Distance(False, inner=True)])
def test_distance_pairwise_matches_a_naive_loop(distance):
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64)
    got = distance.pairwise(x)
    for i in range(6):
        for j in range(6):
            u, v = x[i], x[j]
            if distance.tanh:
                u, v = torch.tanh(u), torch.tanh(v)
            if distance.normalize:
                u, v = u / u.norm(), v / v.norm()
            if distance.inner:
                expected = -0.5 * float(u @ v)
            else:
                expected = float(((u - v) ** 2).sum())
                expected = expected if distance.squared else math.sqrt(expected)
            assert float(got[i, j]) == pytest.approx(expected, abs=1e-9)


def _every_objective():
    for name in EMBEDDING_LOSSES:
        yield embedding_objective(name, 0.3, 4, LossOptions())
    for method in HASH_METHODS:
        yield hash_objective(method, 16, HashOptions(), _data())


@pytest.mark.parametrize("objective", list(_every_objective()), ids=lambda o: f"{o.family}-{o.name}")
def test_every_miner_measures_the_losss_distance_and_margin(objective):
    loss = objective.loss
    if not loss.uses_triplets:
        assert loss.distance is None  # nothing is mined for label losses
        return
    assert isinstance(loss.distance, Distance), objective.name
    for name in MINERS:
        miner = make_miner(name, loss)
        if name == "distance-weighted":  # its density needs plain distances on the unit sphere
            assert miner.distance == Distance(normalize=True, squared=False)
        else:
            assert miner.distance == loss.distance, (objective.name, name)
    if objective.name == "triplet-ranking":
        assert loss.margin == 16 / 4 and loss.distance == Distance(normalize=False, squared=True)
    if objective.name == "dtsh":
        loss.alpha = 3.0  # a schedule changes α: the miner's margin follows
        assert loss.margin == 3.0 and loss.distance.inner


def test_semihard_window_of_dtsh_is_on_its_inner_product_scale():
    """A DTSH miner picks negatives by −½uᵀv with α as the window (not FaceNet's unit-sphere distances)."""
    loss = HASH_METHODS.get("dtsh").make_loss(8, HashOptions(alpha=1.0), _data())
    miner = make_miner("semihard", loss)
    u = torch.tensor([[2.0, 0.0], [2.0, 0.1], [1.5, 0.0], [-2.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = miner(u, labels, margin=loss.margin)
    d = -0.5 * (u @ u.t())
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert d[i, j] < d[i, k] < d[i, j] + loss.margin


# --------------------------------------------------------------------------- hash centres


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 44, 48, 64, 96, 128])
def test_hadamard_matrices_are_orthogonal(n):
    h = hadamard(n)
    assert h is not None and h.dtype == np.int8 and set(np.unique(h)) <= {-1, 1}
    assert np.array_equal(h.astype(np.int64) @ h.T.astype(np.int64), n * np.eye(n, dtype=np.int64))


def test_paley_refuses_other_orders_and_unknown_sizes_fall_back_to_random():
    with pytest.raises(ValueError):
        paley(13)  # 13 ≡ 1 (mod 4)
    assert hadamard(36) is None  # not built here (no q = 35 prime)
    centers, how = hash_centers(10, 36, seed=0)
    assert how == "random" and centers.shape == (10, 36) and len(np.unique(centers, axis=0)) == 10
    assert (centers == 1).sum(axis=1).tolist() == [18] * 10  # balanced


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_centres_for_ten_classes_are_half_the_bits_apart(bits):
    centers, how = hash_centers(10, bits)
    assert how == "hadamard" and centers.shape == (10, bits)
    c = centers.astype(np.int64)
    distances = (bits - c @ c.T) // 2
    assert set(distances[~np.eye(10, dtype=bool)].tolist()) == {bits // 2}


def test_centres_beyond_twice_the_bits_add_random_codes_and_too_many_classes_fail():
    centers, how = hash_centers(40, 16, seed=3)
    assert how == "hadamard+random" and len(np.unique(centers, axis=0)) == 40 and min_distance(centers) > 0
    assert np.array_equal(hash_centers(40, 16, seed=3)[0], centers)  # seeded
    with pytest.raises(DeephashError, match="more than 2"):
        hash_centers(300, 8)


# --------------------------------------------------------------------------- losses against the papers' formulas


def _csq_reference(x, labels, centers, lam):
    """CSQ (Yuan et al. 2020), written out: mean over items and bits of the BCE of (h+1)/2 to (c+1)/2, h=tanh x,
    plus λ mean (|h| − 1)²."""
    total, quant, count = 0.0, 0.0, 0
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            h = math.tanh(float(x[i, k]))
            p = (h + 1) / 2
            t = (float(centers[labels[i], k]) + 1) / 2
            total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            quant += (abs(h) - 1) ** 2
            count += 1
    return total / count + lam * quant / count


def test_central_similarity_loss_matches_the_formula():
    torch.manual_seed(0)
    x = torch.randn(7, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    centers = torch.from_numpy(hash_centers(3, 8)[0].astype(np.float64))
    loss = CentralSimilarityLoss(centers, lam=0.3).double()
    assert float(loss(x, labels)) == pytest.approx(_csq_reference(x, labels, centers, 0.3), rel=1e-10)


def _greedyhash_reference(h, labels, weight, bias, alpha):
    """GreedyHash (Su et al. 2018): CE of the classifier on sign(h) plus α mean |(|h| − 1)³|."""
    ce, penalty = 0.0, 0.0
    for i in range(h.shape[0]):
        b = [1.0 if float(v) >= 0 else -1.0 for v in h[i]]
        logits = [float(bias[c]) + sum(float(weight[c, k]) * b[k] for k in range(len(b))) for c in range(len(bias))]
        top = max(logits)
        ce += -(logits[labels[i]] - top - math.log(sum(math.exp(v - top) for v in logits)))
        penalty += sum(abs((abs(float(v)) - 1) ** 3) for v in h[i])
    return ce / h.shape[0] + alpha * penalty / h.numel()


def test_greedyhash_loss_matches_the_formula_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    h = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = GreedyHashLoss(5, 4, lam=0.1, seed=2).double()
    value = loss(h, labels)
    expected = _greedyhash_reference(h.detach(), labels, loss.classifier.weight.detach(),
                                     loss.classifier.bias.detach(), 0.1)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-10)
    # Straight through: d/dh of a function of sign(h) is the gradient with respect to sign(h).
    x = torch.randn(4, 3, requires_grad=True)
    sign_straight_through(x).mul(torch.arange(12.0).reshape(4, 3)).sum().backward()
    assert torch.equal(x.grad, torch.arange(12.0).reshape(4, 3))
    # The classifier's initial weights depend on the seed only.
    torch.manual_seed(99)
    assert torch.equal(GreedyHashLoss(5, 4, 0.1, seed=2).classifier.weight, GreedyHashLoss(5, 4, 0.1, seed=2)
                       .classifier.weight)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 10_000))
def test_label_losses_are_finite_and_ignore_triplets(b, n_classes, seed):
    torch.manual_seed(seed)
    x = torch.randn(b, 16) * 10
    labels = torch.randint(0, n_classes, (b,))
    for loss in (CentralSimilarityLoss(torch.from_numpy(hash_centers(5, 16)[0].astype(np.float32)), 1e-4),
                 GreedyHashLoss(16, 5, 0.1)):
        value = loss(x, labels)
        assert torch.isfinite(value) and float(value.detach()) >= 0
        assert torch.equal(loss(x, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))), value)


# --------------------------------------------------------------------------- the training loop with label losses


def test_label_losses_see_every_training_item_once_per_epoch():
    seen = []

    class Recorder(LabelLoss):
        def loss(self, embeddings, labels):
            return embeddings.pow(2).mean()

    x, y = torch.randn(53, 4), torch.arange(53) % 3
    model = torch.nn.Linear(4, 2)

    def embed_rows(rows, epoch, step):
        seen.append((epoch, rows.tolist()))
        return model(x[rows])

    fit(model, Recorder(), x, y, TrainOptions(epochs=2, batch_size=16), validate=lambda m: 0.0, embed_rows=embed_rows)
    for epoch in (1, 2):
        rows = [r for e, batch in seen if e == epoch for r in batch]
        assert sorted(rows) == list(range(53))
    assert [len(b) for e, b in seen if e == 1] == [16, 16, 16, 5]
    assert [b for e, b in seen if e == 1] != [b for e, b in seen if e == 2]  # a fresh order each epoch


def test_greedyhash_classifier_trains_and_resumes_bitwise():
    torch.manual_seed(0)
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    options = TrainOptions(epochs=3, batch_size=16, lr=1e-2)

    def run(resume=None):
        torch.manual_seed(1)
        model = torch.nn.Linear(6, 8)
        loss = GreedyHashLoss(8, 3, 0.1, seed=0)
        checkpoints = []
        fit(model, loss, x, y, options, validate=lambda m: 0.0, resume=resume,
            on_checkpoint=lambda c: checkpoints.append(copy.deepcopy(c)))
        return loss, checkpoints

    loss, checkpoints = run()
    assert not torch.equal(loss.classifier.weight, GreedyHashLoss(8, 3, 0.1, seed=0).classifier.weight)
    assert set(checkpoints[-1].loss) == {"classifier.weight", "classifier.bias"}
    resumed, again = run(resume=checkpoints[0])
    assert torch.equal(resumed.classifier.weight, loss.classifier.weight)
    for name, value in checkpoints[-1].model.items():
        assert torch.equal(again[-1].model[name], value), name


# --------------------------------------------------------------------------- schedules and bad input


def test_ramps_double_on_schedule_and_refuse_malformed_text():
    assert [ramp_value("1:16:2", e) for e in range(1, 11)] == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16]
    for text in ("1:16", "0:4:1", "4:2:1", "1:4:0", "a:b:c", "1:inf:1"):
        with pytest.raises(DeephashError, match="--continuation"):
            parse_ramp(text, "--continuation")


def test_hashnet_schedule_sets_beta_per_epoch():
    objective = hash_objective("hashnet", 48, HashOptions(continuation="1:8:1"), _data())
    assert [objective.schedule(e)["beta"] for e in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert objective.schedule(1)["alpha"] == pytest.approx(10 / 48)


@pytest.mark.parametrize("method", ["centers", "greedyhash"])
def test_label_methods_need_two_classes(method):
    with pytest.raises(DeephashError, match="needs at least two classes"):
        hash_objective(method, 16, HashOptions(), _data(n_classes=1))


@pytest.mark.parametrize("method", list(HASH_METHODS))
def test_every_method_trains_from_the_cli_and_resumes_nothing_but_reruns_bitwise(runner, tmp_path, method):
    features = write_features(tmp_path / "f.h5", n_train=30, n_classes=4, dim=12)
    args = ["train-hash", features, "--method", method, "--bits", "16", "--epochs", "4", "--hidden", "16",
            "--ftde-every", "2", "--device", "cpu"]
    first = invoke(runner, *args, "-o", tmp_path / "a.model.h5")
    assert first.exit_code == 0, first.output
    second = invoke(runner, *args, "-o", tmp_path / "b.model.h5")
    assert second.exit_code == 0, second.output
    assert_bitwise_equal(tmp_path / "a.model.h5", tmp_path / "b.model.h5")
    encoded = invoke(runner, "encode", features, "--model", tmp_path / "a.model.h5", "-o", tmp_path / "c.h5")
    assert encoded.exit_code == 0, encoded.output
    evaluated = invoke(runner, "evaluate", tmp_path / "c.h5", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert '"map"' in evaluated.stdout


@pytest.mark.parametrize("args, message", [
    (["--method", "hashnet", "--continuation", "1:2"], "--continuation expects START:END:EVERY"),
    (["--method", "ftde", "--ftde-every", "0"], "--ftde-every must be a positive"),
    (["--method", "ftde", "--ftde-triplets", "0"], "--ftde-triplets must be positive"),
    (["--method", "centers", "--lambda", "-1"], "--lambda must be ≥ 0"),
])
def test_malformed_method_options_are_one_line_errors(runner, features_file, tmp_path, args, message):
    result = invoke(runner, "train-hash", features_file, *args, "-o", tmp_path / "m.h5")
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "m.h5").exists()


def test_ftde_history_reports_the_inferred_codes(runner, tmp_path):
    from deephash_cli.artifacts import read_artifact

    features = write_features(tmp_path / "f.h5", n_train=30, n_classes=4, dim=12)
    result = invoke(runner, "train-hash", features, "--method", "ftde", "--bits", "16", "--epochs", "3",
                    "--hidden", "16", "--ftde-every", "2", "-o", tmp_path / "m.h5")
    assert result.exit_code == 0, result.output
    history = read_artifact(tmp_path / "m.h5").history
    inferred = [row for row in history if "ftde_satisfied" in row]
    assert [row["epoch"] for row in inferred] == [1, 3]
    for row in inferred:  # step 1 satisfies more triplets than sign of the outputs it started from
        assert row["ftde_satisfied"] > row["ftde_satisfied_before"]
