"""HashNet loss, FTDE code inference (step 1) and FTDE loss (step 2), against naive loops in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deephash_cli.ftde import ftde_objective, infer_codes, triplet_satisfaction
from deephash_cli.losses.ftde import FTDELoss
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


# ---------------------------------------------------------------- FTDE step 2 (loss)


def test_ftde_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    z = torch.where(torch.randn(5, 6, generator=g) >= 0, 1, -1).to(torch.int8)
    terms = []
    for xr, zr in zip(x.tolist(), z.tolist()):
        for v, t in zip(xr, zr):
            y = (t + 1) / 2
            sig = 1 / (1 + math.exp(-v))
            terms.append(-(y * math.log(sig) + (1 - y) * math.log(1 - sig)))
    loss = FTDELoss()
    assert loss.uses_triplets is False
    got = loss(x, torch.zeros(5, dtype=torch.long), None, targets=z)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    assert float(loss.last_active_fraction) == pytest.approx(sum(t > 1e-6 for t in terms) / len(terms))


def test_ftde_loss_gradient_and_ignores_triplets():
    x = torch.tensor([[0.5, -2.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([[1, 1], [-1, 1]])
    loss = FTDELoss()
    trip = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    value = loss(x, None, trip, targets=z)
    assert float(value.detach()) == float(loss(x, None, targets=z).detach())
    value.backward()
    y = (z + 1) / 2
    assert torch.allclose(x.grad, (torch.sigmoid(x.detach()) - y) / 4)  # mean over 2 items x 2 bits


def test_ftde_loss_bad_input():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="targets"):
        FTDELoss()(x, None)
    with pytest.raises(ValueError, match="shape"):
        FTDELoss()(x, None, targets=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"\+-1"):
        FTDELoss()(x, None, targets=torch.zeros(3, 4))
    empty = torch.zeros(0, 4, requires_grad=True)
    value = FTDELoss()(empty, None, targets=torch.ones(0, 4))
    value.backward()
    assert float(value.detach()) == 0.0


# ---------------------------------------------------------------- FTDE step 1 (code inference)


def hamming(u, v) -> int:
    return sum(x != y for x, y in zip(u, v))


def objective_naive(codes: np.ndarray, a, p, n, margin: float) -> float:
    rows = codes.tolist()
    terms = [
        max(0.0, margin - (hamming(rows[i], rows[k]) - hamming(rows[i], rows[j])))
        for i, j, k in zip(a.tolist(), p.tolist(), n.tolist())
    ]
    return sum(terms) / len(terms)


def synthetic(seed: int = 0, per_class: int = 15, classes: int = 4, bits: int = 8, n_triplets: int = 600):
    """60 items of 4 classes, triplets sampled from the labels, init = sign of random projections of
    weakly clustered features."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    features = rng.normal(size=(classes, 16))[labels] * 0.5 + rng.normal(size=(labels.size, 16))
    init = np.where(features @ rng.normal(size=(16, bits)) >= 0, 1, -1).astype(np.int8)
    a = rng.integers(0, labels.size, n_triplets)
    p = np.array([rng.choice(np.flatnonzero((labels == labels[i]) & (np.arange(labels.size) != i))) for i in a])
    n = np.array([rng.choice(np.flatnonzero(labels != labels[i])) for i in a])
    return init, a, p, n


def test_objective_and_satisfaction_match_loops():
    init, a, p, n = synthetic(1)
    rows = init.tolist()
    sat = [hamming(rows[i], rows[j]) < hamming(rows[i], rows[k]) for i, j, k in zip(a, p, n)]
    assert triplet_satisfaction(init, a, p, n) == pytest.approx(sum(sat) / len(sat))
    for margin in (4.0, 1.5, 0.7):
        assert ftde_objective(init, a, p, n, margin) == pytest.approx(objective_naive(init, a, p, n, margin), rel=1e-12)
    assert ftde_objective(init, a, p, n) == pytest.approx(objective_naive(init, a, p, n, 4.0), rel=1e-12)  # bits/2
    e = np.empty(0, dtype=np.int64)
    assert triplet_satisfaction(init, e, e, e) == 0.0 and ftde_objective(init, e, e, e) == 0.0


@pytest.mark.parametrize("margin", [None, 1.5, 0.7])
def test_inferred_codes_beat_random_and_initial_codes(margin):
    init, a, p, n = synthetic(2)
    codes = infer_codes(init, a, p, n, margin=margin, sweeps=5, rng=0)
    random_codes = np.where(np.random.default_rng(7).normal(size=init.shape) >= 0, 1, -1)
    got = triplet_satisfaction(codes, a, p, n)
    assert got > triplet_satisfaction(init, a, p, n)
    assert got > triplet_satisfaction(random_codes, a, p, n)
    assert got > 0.9
    assert ftde_objective(codes, a, p, n, margin) < ftde_objective(init, a, p, n, margin)


@pytest.mark.parametrize("margin", [None, 1.5, 0.7])
def test_objective_never_increases(margin):
    init, a, p, n = synthetic(3)
    trace: list[float] = []
    codes = infer_codes(init, a, p, n, margin=margin, sweeps=4, rng=1, trace=trace)
    assert len(trace) >= 1 + 8
    assert trace[0] == pytest.approx(objective_naive(init, a, p, n, margin or 4.0), rel=1e-12)
    assert trace[-1] == pytest.approx(objective_naive(codes, a, p, n, margin or 4.0), rel=1e-12)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(trace, trace[1:]))
    # Independently of the trace: recomputed objective after 0, 1, 2, 3 sweeps (same seed, same path).
    values = [
        ftde_objective(infer_codes(init, a, p, n, margin=margin, sweeps=s, rng=1), a, p, n, margin) for s in range(4)
    ]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:]))
    assert values[-1] < values[0]


def test_converged_codes_are_a_local_minimum_for_single_flips():
    # Brute force: after the early stop, no single bit flip of any item lowers the objective.
    init, a, p, n = synthetic(4, per_class=6, n_triplets=150)
    # Degenerate triplets (repeated items) too: their terms must be handled exactly.
    a = np.concatenate([a, [0, 1, 2]])
    p = np.concatenate([p, [0, 5, 3]])
    n = np.concatenate([n, [9, 1, 3]])
    for margin in (None, 1.5, 0.7):
        trace: list[float] = []
        codes = infer_codes(init, a, p, n, margin=margin, sweeps=200, rng=2, trace=trace)
        assert len(trace) < 1 + 200 * 8  # stopped early: a sweep without a flip
        m = 4.0 if margin is None else margin
        best = objective_naive(codes, a, p, n, m)
        for item in range(codes.shape[0]):
            for bit in range(codes.shape[1]):
                flipped = codes.copy()
                flipped[item, bit] *= -1
                assert objective_naive(flipped, a, p, n, m) >= best - 1e-12


def test_output_format_determinism_and_input_untouched():
    init, a, p, n = synthetic(5)
    before = init.copy()
    one = infer_codes(init, a, p, n, sweeps=2, rng=3)
    two = infer_codes(init.astype(np.float32), a.astype(np.int32), p, n, sweeps=2, rng=np.random.default_rng(3))
    assert one.dtype == np.int8 and one.shape == init.shape
    assert set(np.unique(one).tolist()) <= {-1, 1}
    assert np.array_equal(one, two)
    assert np.array_equal(init, before)
    assert np.array_equal(infer_codes(init, a, p, n, sweeps=0, rng=0), init)
    e = np.empty(0, dtype=np.int64)
    assert np.array_equal(infer_codes(init, e, e, e, rng=0), init)


def test_solver_bad_input():
    init, a, p, n = synthetic(6)
    with pytest.raises(ValueError, match="differ in length"):
        infer_codes(init, a, p[:-1], n)
    with pytest.raises(ValueError, match="out of range"):
        infer_codes(init, a, p, np.where(n == n[0], init.shape[0], n))
    with pytest.raises(ValueError, match="out of range"):
        infer_codes(init, np.where(a == a[0], -1, a), p, n)
    bad = init.copy()
    bad[3, 2] = 0
    with pytest.raises(ValueError, match=r"-1 and \+1"):
        infer_codes(bad, a, p, n)
    with pytest.raises(ValueError, match="2-d"):
        infer_codes(init[:, 0], a, p, n)
    with pytest.raises(ValueError, match="integer"):
        infer_codes(init, a.astype(np.float64), p, n)
    with pytest.raises(ValueError, match="1-d"):
        infer_codes(init, a[:, None], p, n)
    with pytest.raises(ValueError, match="sweeps"):
        infer_codes(init, a, p, n, sweeps=-1)
    with pytest.raises(ValueError, match="margin"):
        infer_codes(init, a, p, n, margin=float("nan"))
    with pytest.raises(ValueError, match="-1 and"):
        triplet_satisfaction(bad, a, p, n)
