"""HashNet: Cao, Long, Wang & Yu, ICCV 2017, "HashNet: Deep Learning to Hash by Continuation"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.losses.base import TripletLoss, check_reduction


class HashNetLoss(TripletLoss):
    """Weighted pairwise maximum likelihood over every pair of the batch, on ``tanh(beta x)`` codes.

    Not a triplet loss: it reads the batch's labels, not triplets (``uses_triplets = False``;
    the ``triplets`` argument is accepted and ignored so a loop can call every loss alike).

    Codes: the head's raw outputs ``x (B, bits)`` go through ``h = tanh(beta * x)``. ``beta`` is
    the continuation parameter, a plain mutable attribute (1 at the start) that a schedule
    raises between epochs so that ``tanh(beta x) -> sign(x)``. The official code raises it as
    ``beta_t = (1 + 0.005 t)^0.5`` every 200 iterations (:meth:`continuation_beta`);
    DeepHash-pytorch uses ``(epoch // step + 1)^0.5``.

    Pairs: every ordered pair ``(i, j)``, ``i != j``, of the batch (``|S| = B (B - 1)``;
    the loss is symmetric so unordered pairs give the same value). ``s_ij = 1`` when
    ``labels[i] == labels[j]``, else 0. ``S_1`` / ``S_0``: the similar / dissimilar pairs.

    The paper (Eqs. 2-6): ``P(s_ij | h_i, h_j) = sigma(<h_i, h_j>)^s_ij (1 - sigma(<h_i, h_j>))^(1 - s_ij)``
    with the adaptive sigmoid ``sigma(u) = 1 / (1 + exp(-alpha u))``, each pair weighted by::

        w_ij = c_ij * |S| / |S_1|   if s_ij = 1
        w_ij = c_ij * |S| / |S_0|   if s_ij = 0

    (``c_ij = 1`` for single-label data, the only kind taken here: the paper's multi-label
    ``c_ij`` is not implemented), and the negative weighted log-likelihood to minimise is::

        sum_{s_ij in S} w_ij ( log(1 + exp(alpha <h_i, h_j>)) - alpha s_ij <h_i, h_j> )

    Averaging: divided by ``|S|`` as the official PyTorch code does (thuml/HashNet
    ``pytorch/src/loss.py``, ``pairwise_loss_updated``; also DeepHash-pytorch), so the value is
    ``mean_{S_1} l_ij + mean_{S_0} l_ij``: each of the two pair classes counts as much as the
    other however unbalanced the batch.

    Undefined weight: a batch with one class has ``|S_0| = 0`` (a batch of distinct labels has
    ``|S_1| = 0``). The empty class has no term to weight, so it contributes 0 and the loss is
    the mean over the other class (what the reference code's masked assignment does too: with
    ``|S_0| = 0``, ``|S| = |S_1|``). Fewer than 2 rows: no pair, the loss is 0 (still attached
    to the graph, so ``backward`` works).

    Numerics: with ``u = alpha <h_i, h_j>``, ``log(1 + e^u) - s u`` is ``softplus(u)`` for
    ``s = 0`` and ``softplus(-u)`` for ``s = 1`` (``log(1 + e^u) - u = log(1 + e^-u)``), computed
    as ``softplus((1 - 2 s) u)``: no overflow and no cancellation. The official code's
    ``l_threshold`` linearisation is unnecessary with this form. ``|u| <= alpha * bits``.

    ``alpha``: the sigmoid's bandwidth. ``None`` (default) means ``10 / bits`` at call time, the
    official setting (caffe prototxt ``sigmoid_param: 0.2 # 10 / the length of code`` for 48 bits;
    thuml/HashNet ``train.py`` and DeepHash-pytorch's ``__main__`` both set ``10 / bit``, although
    DeepHash-pytorch's ``get_config`` lists 0.1, overridden). A plain mutable attribute.

    ``reduction``: validated, and both values give the same result: every term is ``> 0``
    (softplus), and the class means are fixed by the paper.

    ``last_active_fraction``: fraction of the pairs whose term exceeds ``1e-6`` (detached 0-dim).

    Call: ``loss(x (B, bits) float, labels (B,) int64, triplets=None) -> scalar``.
    """

    uses_triplets = False
    ACTIVE_THRESHOLD = 1e-6

    def __init__(self, alpha: float | None = None, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.alpha = None if alpha is None else float(alpha)
        self.beta = float(beta)

    @staticmethod
    def default_alpha(bits: int) -> float:
        """``10 / bits``, the official code's ``sigmoid_param``."""
        return 10.0 / bits

    @staticmethod
    def continuation_beta(step: int, *, init: float = 1.0, gamma: float = 0.005, power: float = 0.5) -> float:
        """The official schedule ``init * (1 + gamma * step)^power`` (step: the iteration at which it is updated)."""
        return float(init) * (1.0 + gamma * step) ** power

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        triplets=None,
        reduction: str | None = None,
    ) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, bits), got shape {tuple(embeddings.shape)}")
        b, bits = embeddings.shape
        if labels is None or labels.shape != (b,):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(f"labels must be ({b},), got {got}")
        check_reduction(reduction or self.reduction)
        alpha = self.default_alpha(bits) if self.alpha is None else self.alpha

        h = torch.tanh(self.beta * embeddings)
        u = alpha * (h @ h.t())
        labels = labels.to(embeddings.device)
        similar = labels[:, None] == labels[None, :]
        off_diagonal = ~torch.eye(b, dtype=torch.bool, device=embeddings.device)
        pos = similar & off_diagonal
        neg = ~similar  # the diagonal is always similar
        sign = torch.where(similar, -1.0, 1.0).to(u.dtype)
        terms = F.softplus(sign * u)  # log(1 + e^u) - s u

        n_pos, n_neg = pos.sum(), neg.sum()
        zero = terms.new_zeros(())
        # An empty class contributes 0 (its weight is undefined, and it weights no term).
        loss = (
            torch.where(pos, terms, zero).sum() / n_pos.clamp_min(1).to(terms.dtype)
            + torch.where(neg, terms, zero).sum() / n_neg.clamp_min(1).to(terms.dtype)
        )
        n_pairs = b * (b - 1)
        active = ((terms.detach() > self.ACTIVE_THRESHOLD) & off_diagonal).sum()
        self.last_active_fraction = (active.to(torch.float32) / max(n_pairs, 1)).detach()
        return loss
