"""Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling matters in
deep embedding learning")."""

from __future__ import annotations

import torch

from deephash_cli.miners.base import MiningContext, Miner, Triplets, empty_triplets, rank_within_anchor, uniform


class DistanceWeightedMiner(Miner):
    """Per positive pair ``(a, p)``, one negative drawn with probability ``∝ 1 / q(d(a, n))``.

    On the unit hypersphere in ``n`` dimensions pairwise distances of uniformly spread
    points have density ``q(d) ∝ d^{n-2} (1 - d^2/4)^{(n-3)/2}``; weighting by ``1/q``
    spreads the sampled negatives over all distances instead of concentrating them
    near ``sqrt(2)``. As in the paper (and its reference code):

    * distances are plain Euclidean between L2-normalised embeddings (forced here:
      ``normalize=True, squared=False``, whatever the loss uses);
    * ``d`` is clipped below at ``cutoff`` (0.5) so near-duplicates do not take all the
      mass (``1/q`` blows up at 0);
    * weights are zero for ``d >= nonzero_loss_cutoff`` (1.4): those negatives have zero
      loss for the paper's margin loss;
    * ``log(1/q)`` is computed in log space and shifted by its row maximum before
      ``exp`` (``d^{n-2}`` underflows float32 for n = 128).

    Negatives depend only on the anchor, so all of an anchor's pairs draw from the same
    row: inverse-CDF sampling on a ``(B, B)`` cumulative sum, with ``(B, max #pairs)``
    uniforms from ``generator``. Anchors with no negative below the cutoff have their
    pairs **skipped** (the reference code falls back to uniform over the whole batch,
    positives included, which we consider a bug). ``margin`` is ignored.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> None:
        super().__init__(normalize=True, squared=False)
        if not 0.0 < cutoff < nonzero_loss_cutoff <= 2.0:
            raise ValueError("need 0 < cutoff < nonzero_loss_cutoff <= 2")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def log_inverse_density(self, dist: torch.Tensor, dim: int) -> torch.Tensor:
        """``log(1 / q(d))`` up to a constant, with ``d`` clipped to ``[cutoff, 2)``."""
        d = dist.clamp(min=self.cutoff)
        # 1 - d^2/4 reaches 0 at d = 2 (antipodal points); those entries are beyond
        # nonzero_loss_cutoff and masked anyway, the clamp just keeps log finite.
        inner = (1.0 - 0.25 * d * d).clamp_min(1e-12)
        return -(dim - 2.0) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log(inner)

    def weights(self, ctx: MiningContext, dim: int) -> torch.Tensor:
        """``(B, B)`` unnormalised sampling weights, each row's maximum 1 (or an all-zero row)."""
        valid = ctx.negative & (ctx.dist < self.nonzero_loss_cutoff)
        log_w = self.log_inverse_density(ctx.dist, dim).masked_fill(~valid, float("-inf"))
        row_max = log_w.max(dim=1, keepdim=True).values
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        return torch.exp(log_w - row_max)  # exp(-inf) = 0 for invalid entries

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        pa, pp = ctx.positive_pairs()
        if pa.numel() == 0:
            return empty_triplets(ctx.device)
        b = ctx.batch_size
        w = self.weights(ctx, ctx.dim)
        cdf = w.cumsum(dim=1)
        total = cdf[:, -1:]
        rank, max_pairs = rank_within_anchor(pa, b)
        u = uniform((b, max_pairs), generator, ctx.device)
        # First column whose cdf exceeds u * total: column j is hit with prob w_j / total.
        pick = torch.searchsorted(cdf, (u * total).contiguous(), right=True)
        # u * total can round up to total; never step past the row's last positive weight.
        cols = torch.arange(b, device=ctx.device)
        last = torch.where(w > 0, cols, torch.full_like(cols, -1)).max(dim=1).values
        pick = torch.minimum(pick, last.clamp_min(0).unsqueeze(1))
        keep = (total.squeeze(1) > 0)[pa]
        a, p = pa[keep], pp[keep]
        return a, p, pick[a, rank[keep]]
