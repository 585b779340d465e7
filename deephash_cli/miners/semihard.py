"""Semi-hard negatives (Schroff et al. 2015, FaceNet)."""

from __future__ import annotations

import torch

from deephash_cli.distances import Distance
from deephash_cli.miners.base import MiningContext, Miner, Triplets, empty_triplets


class SemiHardMiner(Miner):
    """Negatives with ``d(a, p) < d(a, n) < d(a, p) + margin`` (strict both sides).

    ``select="nearest"`` (default): per positive pair ``(a, p)`` one triplet, with the
    *hardest* semi-hard negative, i.e. the nearest negative farther than ``p``.
    ``select="all"``: every semi-hard negative of every pair, the set PML's
    ``TripletMarginMiner(type_of_triplets="semihard")`` returns (PML's upper bound is
    ``<=``; equality gives zero loss, so losses agree).

    No semi-hard negative for a pair: the pair is **skipped** (PML's rule). The
    TF-addons fallback (take the farthest negative, which is hard) is deliberately not
    used: it injects exactly the hard triplets semi-hard mining exists to avoid early
    in training. A batch where every pair is skipped yields no triplets (the loss is then
    0); ``hardest`` covers that regime.

    Distances and ``margin`` must be on the loss's scale (``squared=True`` for FaceNet).
    Each anchor's negatives are sorted once; the bounds for every pair come from
    ``searchsorted``: ``O(B^2 log B)``, no ``B^3`` mask.
    """

    def __init__(self, normalize: bool = True, squared: bool = True, select: str = "nearest",
                 distance: Distance | None = None) -> None:
        super().__init__(normalize, squared, distance)
        if select not in ("nearest", "all"):
            raise ValueError(f"select must be 'nearest' or 'all', got {select!r}")
        self.select = select

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        pa, pp = ctx.positive_pairs()
        if pa.numel() == 0:
            return empty_triplets(ctx.device)
        values, indices, n_neg = ctx.sorted_negatives()
        d_ap = ctx.dist[pa, pp]
        # For pair (a, p): lo = first sorted negative with d > d(a,p); hi = first with
        # d >= d(a,p) + margin. Semi-hard negatives are positions [lo, hi).
        lo = ctx.search_pairs(values, pa, d_ap, right=True)
        hi = ctx.search_pairs(values, pa, d_ap + margin, right=False)
        hi = torch.minimum(hi, n_neg[pa])  # +inf fillers are never below a finite bound; belt and braces
        if self.select == "nearest":
            keep = lo < hi
            a, p = pa[keep], pp[keep]
            return a, p, indices[a, lo[keep]]
        count = (hi - lo).clamp_min(0)
        pair_of = torch.repeat_interleave(torch.arange(pa.numel(), device=ctx.device), count)
        if pair_of.numel() == 0:
            return empty_triplets(ctx.device)
        starts = count.cumsum(0) - count
        pos_in_row = lo[pair_of] + torch.arange(pair_of.numel(), device=ctx.device) - starts[pair_of]
        a = pa[pair_of]
        return a, pp[pair_of], indices[a, pos_in_row]
