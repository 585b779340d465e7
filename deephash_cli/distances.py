"""Euclidean distances that are safe to differentiate.

Two shapes of question are asked by losses and miners:

* ``pairwise_distances(x, y)``: every row of ``x`` against every row of ``y`` (a
  ``(B, M)`` matrix, one matmul). Miners and losses over many triplets use it: with
  ``T`` triplets over a batch of ``B`` items, gathering from a ``B x B`` matrix costs
  ``O(B^2 + T)`` memory instead of ``O(T d)`` for per-triplet differences.
* ``paired_distances(x, y)``: row ``i`` of ``x`` against row ``i`` of ``y``. Exact (no
  Gram-expansion cancellation) and cheap when there are few triplets.

``triplet_distances`` picks between the two by cost.

The square root is the numerically delicate part: d/dx sqrt(x) is infinite at 0, and
distances of an item to itself (or to an identical item) are exactly 0, so a plain
``sqrt`` turns a collapsed batch into NaN gradients. Here zero (or round-off small)
squared distances get distance 0 *and gradient 0*.
"""

from __future__ import annotations

import torch

# Squared distances at or below this are treated as exact zeros for the square root.
# The Gram expansion |x|^2 - 2<x,y> + |y|^2 leaves round-off of order 1e-7 * |x|^2 in
# float32; 1e-12 is far below any distance a loss cares about and keeps the sqrt
# gradient (1 / (2 sqrt(d2))) below 5e5.
SQRT_EPS = 1e-12


def safe_sqrt(squared: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """``sqrt(squared)`` with value 0 and gradient 0 wherever ``squared <= eps``.

    ``squared`` any shape, non-negative (already clamped). The zero entries are replaced
    by 1 *before* the sqrt so the backward pass never evaluates 1/sqrt(0) (a masked
    ``inf * 0`` would still be NaN), then zeroed again afterwards.
    """
    zero = squared <= eps
    return torch.sqrt(squared.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)


def pairwise_distances(
    x: torch.Tensor, y: torch.Tensor | None = None, squared: bool = False
) -> torch.Tensor:
    """Euclidean distances between all rows of ``x`` and all rows of ``y``.

    Args:
        x: ``(B, d)`` float embeddings.
        y: ``(M, d)`` float embeddings on the same device, or ``None`` for ``y = x``
           (then the diagonal is exactly 0, whatever the round-off).
        squared: return ``||x_i - y_j||^2`` instead of ``||x_i - y_j||``.

    Returns:
        ``(B, M)`` tensor, ``>= 0``, differentiable everywhere without NaN (see
        :func:`safe_sqrt`).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (B, d), got shape {tuple(x.shape)}")
    same = y is None
    if same:
        y = x
    elif y.dim() != 2 or y.shape[1] != x.shape[1]:
        raise ValueError(f"y must be (M, {x.shape[1]}), got shape {tuple(y.shape)}")
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (B, 1)
    y_sq = x_sq.t() if same else (y * y).sum(dim=1).unsqueeze(0)  # (1, M)
    # addmm fuses the -2 x y^T with the broadcast sum in one kernel.
    d2 = torch.addmm(x_sq + y_sq, x, y.t(), beta=1.0, alpha=-2.0)
    # Cancellation can make d2 slightly negative; clamp keeps it a distance (gradient 0
    # where clamped, which is right: those entries are round-off of a true ~0).
    d2 = d2.clamp_min(0.0)
    if same:
        # Self-distances must be exactly 0 (they decide the sqrt mask and mining ties).
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        d2 = d2.masked_fill(eye, 0.0)
    return d2 if squared else safe_sqrt(d2)


def paired_distances(x: torch.Tensor, y: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Row-wise distances ``||x_i - y_i||`` for ``x, y`` of shape ``(T, d)``; returns ``(T,)``."""
    if x.shape != y.shape:
        raise ValueError(f"paired_distances needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    diff = x - y
    d2 = (diff * diff).sum(dim=1)
    return d2 if squared else safe_sqrt(d2)


def triplet_distances(
    embeddings: torch.Tensor,
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    squared: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d(a, p), d(a, n))``, each ``(T,)``, for index triplets over ``embeddings (B, d)``.

    Few triplets (``2 T d <= B^2``, e.g. batch-hard with ``T <= B``): exact per-triplet
    differences, ``O(T d)``. Many triplets (batch-all, semi-hard "all"): one ``B x B``
    matrix and two gathers, ``O(B^2 d)`` time and ``O(B^2 + T)`` memory, where per-triplet
    differences would need ``O(T d)`` memory (``T`` can be ~``B^3``).
    """
    b, d = embeddings.shape
    t = anchor.numel()
    if 2 * t * d <= b * b:
        anchors = embeddings[anchor]
        return (
            paired_distances(anchors, embeddings[positive], squared),
            paired_distances(anchors, embeddings[negative], squared),
        )
    dist = pairwise_distances(embeddings, None, squared)
    return dist[anchor, positive], dist[anchor, negative]


class Distance:
    """How a loss measures dissimilarity, shared with the miner that picks its triplets.

    A loss exposes one as ``loss.distance`` and its margin (on that distance's scale) as ``loss.margin``;
    :func:`deephash_cli.train.make_miner` builds the miner on the same distance, so a semi-hard window or a
    "loss > 0" test means the same thing to both.

    ``normalize``: L2-normalise first; ``squared``: squared Euclidean instead of Euclidean; ``tanh``: squash
    with tanh first (a loss that bounds raw outputs itself); ``inner``: the dissimilarity ``−½⟨u, v⟩`` (DTSH's
    ``Θ`` with its sign flipped; may be negative, the diagonal is not 0) instead of a Euclidean distance.
    """

    def __init__(self, normalize: bool = True, squared: bool = True, *, tanh: bool = False,
                 inner: bool = False) -> None:
        self.normalize, self.squared, self.tanh, self.inner = normalize, squared, tanh, inner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distance) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(self.describe())

    def __repr__(self) -> str:
        return f"Distance({self.describe()})"

    def describe(self) -> str:
        """A short name, e.g. ``squared euclidean, normalized`` or ``-1/2 inner product``."""
        if self.inner:
            base = "-1/2 inner product"
        else:
            base = "squared euclidean" if self.squared else "euclidean"
        return ", ".join([base] + [name for name, on in (("normalized", self.normalize), ("tanh", self.tanh)) if on])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors distances are measured between: ``x`` squashed and/or normalised as configured."""
        if self.tanh:
            x = torch.tanh(x)
        if self.normalize:
            x = torch.nn.functional.normalize(x, p=2, dim=1)
        return x

    def pairwise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, B)`` dissimilarities between the rows of ``x (B, d)``."""
        x = self.prepare(x)
        if self.inner:
            return -0.5 * (x @ x.t())
        return pairwise_distances(x, None, squared=self.squared)
