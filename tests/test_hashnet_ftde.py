"""HashNet loss against naive loops in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from deephash_cli.losses.hashnet import HashNetLoss

# ---------------------------------------------------------------- HashNet


def hashnet_naive(x: torch.Tensor, labels: list[int], alpha: float, beta: float) -> tuple[float, float]:
    """The paper's weighted negative log-likelihood, unsimplified, over ordered pairs i != j, divided by |S|.

    Returns (loss, fraction of pairs with a term > 1e-6). An empty pair class weights no term."""
    h = [[math.tanh(beta * float(v)) for v in row] for row in x]
    b = len(h)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    s1 = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    s0 = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    total, active = 0.0, 0
    for i, j in pairs:
        s = 1.0 if labels[i] == labels[j] else 0.0
        w = len(pairs) / len(s1) if s else len(pairs) / len(s0)
        ip = sum(u * v for u, v in zip(h[i], h[j]))
        term = math.log(1 + math.exp(alpha * ip)) - s * alpha * ip
        total += w * term
        active += term > 1e-6
    return total / max(len(pairs), 1), active / max(len(pairs), 1)


def hashnet_case(seed: int, b: int = 7, bits: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, bits, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 2.5])
@pytest.mark.parametrize("beta", [1.0, 0.3, 4.0])
@pytest.mark.parametrize(
    "labels",
    [[0, 0, 0, 0, 0, 1, 2], [0, 1, 1, 2, 2, 2, 2], [3, 0, 1, 3, 1, 0, 2]],  # unbalanced, unsorted
)
def test_hashnet_matches_loop(alpha, beta, labels):
    x = hashnet_case(int(alpha * 10 + beta * 3))
    loss = HashNetLoss(alpha=alpha, beta=beta)
    got = loss(x, torch.tensor(labels))
    expected, active = hashnet_naive(x, labels, alpha, beta)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    assert float(loss.last_active_fraction) == pytest.approx(active)


@pytest.mark.parametrize("labels", [[4] * 6, [0, 1, 2, 3, 4, 5]])
def test_hashnet_one_empty_pair_class_gives_the_mean_of_the_other(labels):
    # One class: no dissimilar pair, |S|/|S_0| undefined; all distinct: no similar pair.
    # The empty class weights nothing and contributes 0; the loss is the other class's mean.
    x = hashnet_case(11, b=6)
    got = HashNetLoss(alpha=0.7, beta=1.5)(x, torch.tensor(labels))
    h = torch.tanh(1.5 * x).tolist()
    terms = []
    for i in range(6):
        for j in range(6):
            if i != j:
                s = 1.0 if labels[i] == labels[j] else 0.0
                ip = sum(u * v for u, v in zip(h[i], h[j]))
                terms.append(math.log(1 + math.exp(0.7 * ip)) - s * 0.7 * ip)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    assert torch.isfinite(got)


def test_hashnet_fewer_than_two_rows_gives_attached_zero():
    for b in (0, 1):
        x = torch.randn(b, 4, requires_grad=True)
        loss = HashNetLoss()
        value = loss(x, torch.zeros(b, dtype=torch.long))
        value.backward()
        assert float(value.detach()) == 0.0 and float(loss.last_active_fraction) == 0.0


def test_hashnet_default_alpha_is_ten_over_bits():
    x = hashnet_case(3, bits=8)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert HashNetLoss.default_alpha(8) == 1.25
    assert float(HashNetLoss()(x, labels)) == pytest.approx(float(HashNetLoss(alpha=1.25)(x, labels)), rel=1e-12)


def test_hashnet_gradients_flow_and_match_finite_differences():
    x = hashnet_case(5).requires_grad_(True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    loss = HashNetLoss(alpha=0.8, beta=1.3)
    loss(x, labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda t: loss(t, labels), (x.detach().clone().requires_grad_(True),))


def test_hashnet_similar_pairs_pulled_together_dissimilar_pushed_apart():
    # One gradient step on x lowers the loss and raises <h_i, h_j> for the similar pair.
    x = torch.tensor([[0.3, -0.2, 0.1], [-0.1, 0.4, 0.2], [0.2, 0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = HashNetLoss(alpha=1.0)
    before = loss(x, labels)
    before.backward()
    with torch.no_grad():
        y = x - 0.1 * x.grad
        h0, h1 = torch.tanh(x), torch.tanh(y)
    assert float(loss(y, labels)) < float(before.detach())
    assert float(h1[0] @ h1[1]) > float(h0[0] @ h0[1])


def test_hashnet_beta_changes_the_output_and_is_mutable():
    x = hashnet_case(8)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    loss = HashNetLoss(alpha=0.5)
    assert loss.beta == 1.0
    first = float(loss(x, labels))
    loss.beta = 3.0
    second = float(loss(x, labels))
    assert second != pytest.approx(first)
    assert second == pytest.approx(hashnet_naive(x, labels.tolist(), 0.5, 3.0)[0], rel=1e-9)
    # Large beta: tanh(beta x) -> sign(x), the loss of the binary codes.
    loss.beta = 1e4
    codes = torch.where(x >= 0, 1.0, -1.0)
    assert float(loss(x, labels)) == pytest.approx(float(HashNetLoss(alpha=0.5, beta=1e4)(codes, labels)), rel=1e-6)


def test_hashnet_continuation_schedule():
    assert HashNetLoss.continuation_beta(0) == 1.0
    assert HashNetLoss.continuation_beta(200) == pytest.approx(math.sqrt(2.0))
    assert HashNetLoss.continuation_beta(600, init=2.0) == pytest.approx(4.0)


def test_hashnet_ignores_triplets_and_is_overflow_safe():
    assert HashNetLoss.uses_triplets is False
    x = hashnet_case(9)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    loss = HashNetLoss(alpha=1.0)
    trip = tuple(torch.randint(0, 7, (5,)) for _ in range(3))
    assert float(loss(x, labels, trip)) == float(loss(x, labels))
    big = (1e3 * x).float().requires_grad_(True)
    value = HashNetLoss(alpha=1000.0, beta=10.0)(big, labels)  # |alpha <h_i, h_j>| up to 5000
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(big.grad).all()


def test_hashnet_bad_input():
    x = hashnet_case(1)
    with pytest.raises(ValueError, match="labels"):
        HashNetLoss()(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings"):
        HashNetLoss()(x[0], torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        HashNetLoss()(x, torch.zeros(7, dtype=torch.long), reduction="sum")
