"""What every miner shares: the distance matrix, label masks, and the calling convention.

``miner(embeddings (B, d) float, labels (B,) int64, margin: float = 0.0,
generator: torch.Generator | None = None) -> (anchor, positive, negative)``, three
``(T,)`` int64 index tensors over the batch, on the embeddings' device. Mining runs
under ``torch.no_grad`` on detached embeddings: it only *selects*; the loss recomputes
distances with gradients. Distances are measured in the same space as the loss's:
``normalize`` (L2-normalise first) and ``squared`` (squared Euclidean) must match the
loss (FaceNet: both true, the defaults), and so must ``margin``'s scale.

Memory is ``O(B^2)`` plus the output: strategies that pick among negatives sort each
anchor's row of negative distances once and answer every (anchor, positive) pair with
``searchsorted``, instead of materialising ``B x B x B`` masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deephash_cli.distances import Distance

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class MiningContext:
    """Everything strategies need about one batch (all on the embeddings' device).

    dist: ``(B, B)`` dissimilarities of the miner's :class:`Distance` (Euclidean ones: diagonal exactly 0).
    positive: ``(B, B)`` bool, ``labels[i] == labels[j]`` and ``i != j``.
    negative: ``(B, B)`` bool, ``labels[i] != labels[j]``.
    dim: embedding dimension ``d``.
    """

    dist: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    dim: int

    @property
    def batch_size(self) -> int:
        return self.dist.shape[0]

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def positive_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``(anchor, positive)`` pairs, ``(P,)`` each, sorted by anchor then positive."""
        return self.positive.nonzero(as_tuple=True)

    def sorted_negatives(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per anchor, negatives by increasing distance.

        Returns ``values (B, B)`` (non-negatives set to +inf, so they sort last),
        ``indices (B, B)`` (the column each sorted value came from) and ``count (B,)``
        (how many leading entries of each row are real negatives).
        """
        masked = self.dist.masked_fill(~self.negative, float("inf"))
        values, indices = masked.sort(dim=1)
        return values, indices, self.negative.sum(dim=1)

    def search_pairs(
        self, sorted_values: torch.Tensor, anchors: torch.Tensor, queries: torch.Tensor, right: bool
    ) -> torch.Tensor:
        """Per pair ``i``: ``searchsorted(sorted_values[anchors[i]], queries[i], right=right)``.

        ``anchors (P,)`` sorted (as from :meth:`positive_pairs`), ``queries (P,)``. The
        queries are laid out as a ``(B, max pairs per anchor)`` matrix so one batched
        ``searchsorted`` answers them without copying a ``B``-wide row per pair.
        """
        rank, width = rank_within_anchor(anchors, self.batch_size)
        grid = torch.zeros(self.batch_size, max(width, 1), dtype=queries.dtype, device=queries.device)
        grid[anchors, rank] = queries
        return torch.searchsorted(sorted_values, grid, right=right)[anchors, rank]


def empty_triplets(device: torch.device) -> Triplets:
    e = torch.empty(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) samples drawn with ``generator`` (on its own device), moved to ``device``.

    torch refuses a CPU generator for CUDA tensors and vice versa; drawing on the
    generator's device keeps runs reproducible whatever device the embeddings live on.
    """
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def rank_within_anchor(anchors: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """For pairs sorted by anchor: each pair's position among its anchor's pairs, and the max count."""
    if anchors.numel() == 0:
        return anchors.clone(), 0
    counts = torch.bincount(anchors, minlength=batch_size)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(anchors.numel(), device=anchors.device) - starts[anchors]
    return rank, int(counts.max())


class Miner:
    """Base class. Subclasses implement :meth:`mine`.

    Attributes:
        distance: the :class:`~deephash_cli.distances.Distance` measured (the loss's, see ``make_miner``);
            ``normalize``/``squared`` build one (FaceNet's: squared Euclidean on the unit sphere, the default).
        positive_mean: class attribute; ``True`` when the loss should average over
            triplets with positive loss only (batch-all). A training loop calls
            ``loss(emb, labels, triplets, reduction="positive_mean" if miner.positive_mean else None)``.
    """

    positive_mean: bool = False

    def __init__(self, normalize: bool = True, squared: bool = True, distance: Distance | None = None) -> None:
        self.distance = distance if distance is not None else Distance(normalize=normalize, squared=squared)

    @property
    def normalize(self) -> bool:
        return self.distance.normalize

    @property
    def squared(self) -> bool:
        return self.distance.squared

    def context(self, embeddings: torch.Tensor, labels: torch.Tensor) -> MiningContext:
        emb = embeddings.detach()
        dist = self.distance.pairwise(emb)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        return MiningContext(dist=dist, positive=same & ~eye, negative=~same, dim=emb.shape[1])

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        raise NotImplementedError

    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        margin: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Triplets:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, d), got shape {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}")
        with torch.no_grad():
            labels = labels.to(embeddings.device)
            return self.mine(self.context(embeddings, labels), float(margin), generator)
