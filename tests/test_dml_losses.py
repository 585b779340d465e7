"""The multi-class N-pair loss and the margin loss against slow loops of the papers' formulas (and
pytorch-metric-learning's losses), β's training, and the loop's handling of a loss with parameters."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deephash_cli.embedding_losses import LossOptions, build_loss
from deephash_cli.errors import DeephashError
from deephash_cli.losses import LOSSES, MarginLoss, NPairLoss
from deephash_cli.miners import DistanceWeightedMiner
from deephash_cli.train import TrainOptions, fit, make_miner


def _batch(seed=0, per_class=3, classes=4, d=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(per_class * classes, d, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return emb, labels


def _triplets(labels, seed=0, t=30):
    g = torch.Generator().manual_seed(seed)
    a, p, n = [], [], []
    while len(a) < t:
        i, j, k = (int(v) for v in torch.randint(0, len(labels), (3,), generator=g))
        if i != j and labels[i] == labels[j] and labels[k] != labels[i]:
            a.append(i), p.append(j), n.append(k)
    return torch.tensor(a), torch.tensor(p), torch.tensor(n)


def dot(u, v):
    return sum(float(a) * float(b) for a, b in zip(u, v))


# --------------------------------------------------------------------------- N-pair


def npair_reference(emb, labels, triplets, l2_reg):
    """Sohn 2016, eq. (6), on the first (anchor, positive) pair of each class, plus the L2 penalty."""
    a, p, _ = triplets
    chosen = {}
    for i, j in zip(a.tolist(), p.tolist()):
        chosen.setdefault(int(labels[i]), (i, j))
    pairs = [chosen[c] for c in sorted(chosen)]
    f = [list(map(float, row)) for row in emb]
    total = 0.0
    for i, (anchor, positive) in enumerate(pairs):
        inner = sum(math.exp(dot(f[anchor], f[other_pos]) - dot(f[anchor], f[positive]))
                    for j, (_, other_pos) in enumerate(pairs) if j != i)
        total += math.log(1.0 + inner)
    mean_a = sum(dot(f[x], f[x]) for x, _ in pairs) / len(pairs)
    mean_p = sum(dot(f[y], f[y]) for _, y in pairs) / len(pairs)
    return total / len(pairs) + 0.25 * l2_reg * (mean_a + mean_p)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("l2_reg", [0.0, 0.002, 0.5])
def test_npair_matches_the_papers_formula(seed, l2_reg):
    emb, labels = _batch(seed)
    triplets = _triplets(labels, seed)
    value = NPairLoss(l2_reg=l2_reg)(emb, labels, triplets)
    assert float(value) == pytest.approx(npair_reference(emb, labels, triplets, l2_reg), rel=1e-10)


def test_npair_without_penalty_equals_pml_npairs_loss():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import DotProductSimilarity

    emb, labels = _batch(3, per_class=2, classes=6)
    a, p, n = _triplets(labels, 3, t=40)
    ours = NPairLoss(l2_reg=0.0)(emb, labels, (a, p, n))
    # The paper's (and our) embeddings are not normalised; PML's dot product normalises unless told not to.
    theirs = pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(emb, labels, (a, p, n))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-10)


def test_npair_gradient_matches_the_reference_by_autograd():
    emb, labels = _batch(4)
    triplets = _triplets(labels, 4)
    x = emb.clone().requires_grad_(True)
    NPairLoss(l2_reg=0.01)(x, labels, triplets).backward()

    def reference(e):
        a, p, _ = triplets
        firsts = NPairLoss.pairs(labels, a, p)
        anchors, positives = e[firsts[0]], e[firsts[1]]
        logits = anchors @ positives.t()
        terms = torch.logsumexp(logits - logits.diagonal().unsqueeze(1), dim=1)  # log(1 + Σ_{j≠i} exp(...))
        return terms.mean() + 0.25 * 0.01 * (anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean())

    y = emb.clone().requires_grad_(True)
    reference(y).backward()
    torch.testing.assert_close(x.grad, y.grad)


# --------------------------------------------------------------------------- margin


def margin_reference(emb, labels, triplets, alpha, beta, reduction="positive_mean"):
    """Wu et al. 2017, eq. (3)-(4): (α + y(D − β))₊ per pair, D Euclidean on the unit sphere; the authors' code
    divides the sum by the number of pairs with a positive loss."""
    f = [[float(v) / math.sqrt(dot(row, row)) for v in row] for row in emb]
    terms = []
    for kind in ("pos", "neg"):
        for i, j, k in zip(*(t.tolist() for t in triplets)):
            b = float(beta[int(labels[i])]) if len(beta) > 1 else float(beta[0])
            other = j if kind == "pos" else k
            d = math.sqrt(sum((x - y) ** 2 for x, y in zip(f[i], f[other])))
            terms.append(max(0.0, alpha + (d - b if kind == "pos" else b - d)))
    if reduction == "mean":
        return sum(terms) / len(terms)
    active = [t for t in terms if t > 0]
    return sum(active) / max(len(active), 1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_class_beta", [True, False])
@pytest.mark.parametrize("reduction", ["positive_mean", "mean"])
def test_margin_loss_matches_the_papers_formula(seed, per_class_beta, reduction):
    emb, labels = _batch(seed)
    triplets = _triplets(labels, seed)
    loss = MarginLoss(margin=0.2, beta=1.2, n_classes=4 if per_class_beta else None, beta_lr=0.1,
                      reduction=reduction)
    with torch.no_grad():
        loss.beta.copy_(torch.linspace(0.9, 1.4, len(loss.beta)))
    expected = margin_reference(emb, labels, triplets, 0.2, loss.beta.tolist(), reduction)
    assert float(loss(emb, labels, triplets).detach()) == pytest.approx(expected, rel=1e-6)


def test_margin_loss_equals_pml_margin_loss_with_learned_class_betas():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(5)
    triplets = _triplets(labels, 5)
    ours = MarginLoss(margin=0.2, beta=1.1, n_classes=4, beta_lr=0.1)
    theirs = pml.MarginLoss(margin=0.2, beta=1.1, learn_beta=True, num_classes=4)
    assert float(ours(emb.float(), labels, triplets).detach()) == pytest.approx(
        float(theirs(emb.float(), labels, triplets).detach()), rel=1e-6)


def test_beta_gradient_and_parameter_group():
    emb, labels = _batch(6)
    triplets = _triplets(labels, 6)
    loss = MarginLoss(margin=0.2, beta=1.2, n_classes=4, beta_lr=0.05)
    loss(emb, labels, triplets).backward()
    # d/dβ_c: −1 per active positive pair of class c, +1 per active negative pair, over the active count.
    terms = []
    for kind, sign in (("pos", -1.0), ("neg", 1.0)):
        for i, j, k in zip(*(t.tolist() for t in triplets)):
            e = torch.nn.functional.normalize(emb, dim=1)
            d = float((e[i] - e[j if kind == "pos" else k]).norm())
            value = 0.2 + (d - 1.2 if kind == "pos" else 1.2 - d)
            terms.append((int(labels[i]), sign, value > 0))
    active = sum(1 for *_, on in terms if on)
    expected = [sum(sign for c, sign, on in terms if on and c == cls) / active for cls in range(4)]
    assert loss.beta.grad.tolist() == pytest.approx(expected)
    assert loss.parameter_groups() == [{"params": [loss.beta], "lr": 0.05, "weight_decay": 0.0}]
    fixed = MarginLoss(beta_lr=0.0)
    assert fixed.parameter_groups() == [] and not fixed.beta.requires_grad


def test_miners_measure_where_the_loss_does():
    margin = MarginLoss(beta_lr=0.0)
    miner = make_miner("semihard", margin)
    assert (miner.normalize, miner.squared) == (True, False)
    assert isinstance(make_miner("distance-weighted", margin), DistanceWeightedMiner)
    facenet = make_miner("semihard", LOSSES.get("facenet")())
    assert (facenet.normalize, facenet.squared) == (True, True)  # the miners' default, unchanged


def _blobs():
    torch.manual_seed(0)
    centres = torch.randn(4, 6) * 3
    y = torch.arange(80) % 4
    return centres[y] + torch.randn(80, 6), y


def test_fit_trains_beta_with_its_own_rate_and_resumes_it():
    x, y = _blobs()
    options = TrainOptions(epochs=3, lr=1e-2, miner="distance-weighted", classes_per_batch=4, samples_per_class=5)

    def run(beta_lr, resume=None):
        torch.manual_seed(1)
        model = torch.nn.Linear(6, 3)
        loss = MarginLoss(margin=0.2, beta=1.2, n_classes=4, beta_lr=beta_lr)
        checkpoints = []
        result = fit(model, loss, x, y, options, validate=lambda m: 0.0, resume=resume,
                     on_checkpoint=lambda c: checkpoints.append(copy.deepcopy(c)))
        return result, loss, checkpoints

    result, loss, checkpoints = run(0.05)
    assert not torch.allclose(loss.beta.detach(), torch.full((4,), 1.2))
    assert [round(row["beta_mean"], 6) for row in result.history][-1] == round(float(loss.beta.detach().mean()), 6)
    assert checkpoints[0].optimizer["param_groups"][-1]["lr"] == 0.05
    assert set(checkpoints[-1].loss) == {"beta"}
    _, fixed, _ = run(0.0)
    assert torch.equal(fixed.beta.detach(), torch.full((4,), 1.2))
    # Resumed after epoch 1: the same β and model as the uninterrupted run.
    _, resumed_loss, resumed = run(0.05, resume=checkpoints[0])
    torch.testing.assert_close(resumed_loss.beta.detach(), loss.beta.detach(), rtol=0, atol=0)
    for name, value in checkpoints[-1].model.items():
        assert torch.equal(resumed[-1].model[name], value), name


def test_finetune_checkpoints_store_the_loss_state():
    from deephash_cli.finetune import checkpoint_arrays

    x, y = _blobs()
    checkpoints = []
    fit(torch.nn.Linear(6, 3), MarginLoss(n_classes=4, beta_lr=0.1), x, y,
        TrainOptions(epochs=1, miner="all", classes_per_batch=4, samples_per_class=5), validate=lambda m: 0.0,
        on_checkpoint=checkpoints.append)
    _, arrays = checkpoint_arrays(checkpoints[0])
    assert arrays["loss/beta"].shape == (4,)


def test_embedding_loss_options():
    assert isinstance(build_loss("npair", None, 3, LossOptions(npair_reg=0.1)), NPairLoss)
    margin = build_loss("margin", 0.3, 7, LossOptions(beta="global", beta_init=1.0, beta_lr=0.0))
    assert margin.margin == 0.3 and margin.beta.shape == (1,) and float(margin.beta) == 1.0
    assert build_loss("margin", 0.2, 7, LossOptions()).beta.shape == (7,)
    with pytest.raises(DeephashError, match="unknown --beta 'each'; valid names: class, global"):
        LossOptions(beta="each").check()
    with pytest.raises(DeephashError, match=r"--beta-init must lie in \(0, 2\)"):
        LossOptions(beta_init=2.5).check()
    with pytest.raises(DeephashError, match="--beta-lr must be ≥ 0"):
        LossOptions(beta_lr=-1).check()
    with pytest.raises(DeephashError, match="--npair-reg must be ≥ 0"):
        LossOptions(npair_reg=-0.1).check()
    with pytest.raises(DeephashError, match="'dtsh' is a hashing loss"):
        build_loss("dtsh", None, 3, LossOptions())
