"""Embedding losses by name (``train-triplet --loss``, ``finetune --objective triplet --loss``): the head output
each expects, whether it takes ``--margin``, and how it is built from the options.

The losses themselves live in :mod:`deephash_cli.losses`; this module only says how a training stage uses them
(as :mod:`deephash_cli.hashing` does for the hash methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.losses import (
    ContrastiveLoss,
    FaceNetTripletLoss,
    HofferTripletLoss,
    MarginLoss,
    NPairLoss,
)

BETA_MODES = ("class", "global")


@dataclass
class LossOptions:
    """Hyper-parameters of particular losses (defaults as the CLI's).

    ``beta``: the margin loss's boundary, one per class (``class``) or one for all (``global``);
    ``beta_init`` its initial value (paper: 1.2); ``beta_lr`` its learning rate (0: fixed); ``npair_reg``:
    the N-pair loss's L2 penalty λ on the embeddings (TensorFlow's default 0.002).
    """

    beta: str = "class"
    beta_init: float = 1.2
    beta_lr: float = 1e-3
    npair_reg: float = 0.002

    def check(self) -> None:
        """Raise DeephashError for values no loss can use."""
        if self.beta not in BETA_MODES:
            raise DeephashError(f"unknown --beta '{self.beta}'; valid names: {', '.join(BETA_MODES)}")
        if not 0 < self.beta_init < 2:
            raise DeephashError(f"--beta-init must lie in (0, 2) (distances on the unit sphere), got {self.beta_init}")
        if not self.beta_lr >= 0:
            raise DeephashError(f"--beta-lr must be ≥ 0 (0 keeps β fixed), got {self.beta_lr}")
        if not self.npair_reg >= 0:
            raise DeephashError(f"--npair-reg must be ≥ 0, got {self.npair_reg}")


@dataclass(frozen=True)
class EmbeddingLoss:
    """How a stage uses one loss: head ``output`` (normalized or raw), whether it takes a ``margin``, and
    ``build(margin, n_classes, options)``."""

    output: str
    margin: bool
    build: Callable[[float | None, int, LossOptions], nn.Module]


def _contrastive(margin: float | None, n_classes: int, options: LossOptions) -> nn.Module:
    return ContrastiveLoss(margin=margin, normalize=True)  # on the unit sphere, as the head outputs


EMBEDDING_LOSSES: dict[str, EmbeddingLoss] = {
    "facenet": EmbeddingLoss("normalized", True, lambda m, c, o: FaceNetTripletLoss(margin=m)),
    "hoffer": EmbeddingLoss("raw", False, lambda m, c, o: HofferTripletLoss()),
    "contrastive": EmbeddingLoss("normalized", True, _contrastive),
    "npair": EmbeddingLoss("raw", False, lambda m, c, o: NPairLoss(l2_reg=o.npair_reg)),
    "margin": EmbeddingLoss("normalized", True, lambda m, c, o: MarginLoss(
        margin=m, beta=o.beta_init, n_classes=c if o.beta == "class" else None, beta_lr=o.beta_lr)),
}


def build_loss(name: str, margin: float | None, n_classes: int, options: LossOptions) -> nn.Module:
    """The loss ``name`` (an embedding loss; names a hashing loss's command otherwise)."""
    if name not in EMBEDDING_LOSSES:
        from deephash_cli.losses import LOSSES

        LOSSES.get(name)  # names the valid losses when unknown
        raise DeephashError(f"loss '{name}' is a hashing loss; embedding losses are {', '.join(EMBEDDING_LOSSES)}")
    return EMBEDDING_LOSSES[name].build(margin, n_classes, options)
