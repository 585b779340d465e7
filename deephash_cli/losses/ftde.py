"""FTDE step 2: Zhuang, Lin, Shen & Reid, CVPR 2016, "Fast training of triplet-based deep binary
embedding networks" -- fit the hash function to the codes inferred in step 1
(:func:`deephash_cli.ftde.infer_codes`) as multi-label binary classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.losses.base import TripletLoss, check_reduction


class FTDELoss(TripletLoss):
    """Binary cross-entropy of the head's logits against the inferred bits.

    Each of the ``bits`` outputs is a binary classifier of one bit of the code that step 1
    inferred for the item (the paper's "multi-label classification" layer). With logits
    ``x (B, bits)`` and targets ``z (B, bits)`` in ``{-1, +1}`` (the inferred codes of the
    batch's rows), ``y = (z + 1) / 2`` in ``{0, 1}`` and::

        loss = 1 / (B bits) * sum_{i, r} -( y_ir log sigma(x_ir) + (1 - y_ir) log(1 - sigma(x_ir)) )

    computed by ``binary_cross_entropy_with_logits`` (``softplus(x) - y x``, overflow-safe).
    The code of an item is ``sign(x)``.

    Not a triplet loss at training time: the triplets were used by step 1, so
    ``uses_triplets = False`` and the ``triplets`` argument is accepted and ignored.
    ``targets`` is required (keyword). ``reduction`` is validated; both values coincide since
    every term is ``> 0``.

    ``last_active_fraction``: fraction of the ``B * bits`` terms above ``1e-6`` (detached 0-dim);
    an empty batch gives 0 and a loss of 0 still attached to the graph.

    Call: ``loss(x (B, bits) float, labels (B,) or None, triplets=None, targets=z (B, bits) +-1) -> scalar``.
    """

    uses_triplets = False
    ACTIVE_THRESHOLD = 1e-6

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        triplets=None,
        reduction: str | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, bits), got shape {tuple(embeddings.shape)}")
        if targets is None:
            raise ValueError("FTDELoss needs targets=, the inferred +-1 codes (B, bits) of the batch's rows")
        targets = torch.as_tensor(targets, device=embeddings.device)
        if targets.shape != embeddings.shape:
            raise ValueError(
                f"targets must have the embeddings' shape {tuple(embeddings.shape)}, got {tuple(targets.shape)}"
            )
        if not bool(((targets == 1) | (targets == -1)).all()):
            raise ValueError("targets must be +-1 codes")
        check_reduction(reduction or self.reduction)
        y = (targets.to(embeddings.dtype) + 1) / 2
        terms = F.binary_cross_entropy_with_logits(embeddings, y, reduction="none")
        loss = terms.sum() / max(terms.numel(), 1)
        active = (terms.detach() > self.ACTIVE_THRESHOLD).sum()
        self.last_active_fraction = (active.to(torch.float32) / max(terms.numel(), 1)).detach()
        return loss


class FTDECodesLoss(FTDELoss):
    """:class:`FTDELoss` against the inferred codes of every training item, held by the loss.

    ``codes (n, bits)`` float ±1 is a buffer (so checkpoints carry it and ``--resume`` continues with the
    codes of the last inference); :meth:`set_codes` replaces it after each step-1 inference. A training loop
    passes the batch's training rows (``uses_rows``): ``loss(x (B, bits), labels, rows=rows (B,) int64)``.
    """

    uses_rows = True

    def __init__(self, n_items: int, bits: int, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.register_buffer("codes", torch.ones(n_items, bits))

    def set_codes(self, codes) -> None:
        """Replace the targets with ``codes (n, bits)`` ±1."""
        self.codes.copy_(torch.as_tensor(codes, dtype=self.codes.dtype))

    def forward(self, embeddings, labels=None, triplets=None, reduction=None, targets=None, rows=None):
        if rows is None:
            raise ValueError("FTDECodesLoss needs rows=, the training rows (B,) of the batch")
        return super().forward(embeddings, labels, triplets, reduction, targets=self.codes[rows.to(self.codes.device)])
