"""Curriculum mining (our design): semi-hard early in training, batch-hard later."""

from __future__ import annotations

import torch

from deephash_cli.miners.base import MiningContext, Miner, Triplets, uniform
from deephash_cli.miners.hardest import HardestMiner
from deephash_cli.miners.semihard import SemiHardMiner


class CurriculumMiner(Miner):
    """Anchor-level mix of :class:`SemiHardMiner` (nearest) and :class:`HardestMiner`.

    ``set_progress(f)`` (``f`` = fraction of training done) sets the share of hard
    anchors: ``h(f) = clamp((f - start) / (end - start), 0, 1)`` (a step at ``start``
    when ``start == end``). Each anchor independently mines batch-hard with probability
    ``h`` (drawn with ``generator``) and semi-hard otherwise, so ``f <= start`` is exactly
    :class:`SemiHardMiner` and ``f >= end`` exactly :class:`HardestMiner`. The rationale:
    hardest negatives early collapse embeddings (Schroff et al.), while semi-hard ones
    run dry late, once most pairs have no semi-hard negative left.

    Output: the semi-hard triplets of semi-hard anchors, then the batch-hard triplets of
    hard anchors. An experimental miner: keep it only if measurements justify it.
    """

    def __init__(
        self, normalize: bool = True, squared: bool = True, start: float = 0.3, end: float = 0.7
    ) -> None:
        super().__init__(normalize, squared)
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        self.start, self.end = float(start), float(end)
        self.progress = 0.0
        self._semihard = SemiHardMiner(normalize, squared, select="nearest")
        self._hardest = HardestMiner(normalize, squared)

    def set_progress(self, fraction: float) -> None:
        super().set_progress(fraction)
        self.progress = float(fraction)

    def hard_share(self) -> float:
        """``h`` for the current progress."""
        if self.end == self.start:
            return 1.0 if self.progress >= self.start else 0.0
        return min(1.0, max(0.0, (self.progress - self.start) / (self.end - self.start)))

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        share = self.hard_share()
        if share <= 0.0:
            return self._semihard.mine(ctx, margin, generator)
        if share >= 1.0:
            return self._hardest.mine(ctx, margin, generator)
        hard = uniform((ctx.batch_size,), generator, ctx.device) < share
        sa, sp, sn = self._semihard.mine(ctx, margin, generator)
        ha, hp, hn = self._hardest.mine(ctx, margin, generator)
        soft_keep, hard_keep = ~hard[sa], hard[ha]
        return (
            torch.cat([sa[soft_keep], ha[hard_keep]]),
            torch.cat([sp[soft_keep], hp[hard_keep]]),
            torch.cat([sn[soft_keep], hn[hard_keep]]),
        )
