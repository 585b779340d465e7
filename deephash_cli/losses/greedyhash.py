"""GreedyHash: Su, Zhang, Liu & Tian, NeurIPS 2018, "Greedy Hash: Towards Fast Optimization for Accurate Hash
Coding in CNN"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deephash_cli.losses.base import LabelLoss


class _SignStraightThrough(torch.autograd.Function):
    """``sign`` forward (0 → +1, so codes are ±1), identity backward: the paper's greedy update."""

    @staticmethod
    def forward(ctx, x):
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` in {−1, +1} whose gradient is passed through unchanged."""
    return _SignStraightThrough.apply(x)


class GreedyHashLoss(LabelLoss):
    """Classification of the *binary* codes, with the sign's gradient passed straight through, plus a penalty
    pulling the outputs to ±1.

    Raw outputs ``h (B, bits)``; ``b = sign(h)`` forward, ``∂L/∂h = ∂L/∂b`` backward; a linear classifier
    ``W b + c`` (owned by the loss, trained with the head's learning rate) gives class logits::

        L = CE(W b + c, y) + λ · mean_{i,k} |(|h_ik| − 1)³|

    ``lam`` (λ, the paper's α) is a plain attribute; the paper's code uses 0.1 with the cubic power. Needs class
    labels.

    Call: ``loss(h (B, bits) float, labels (B,) int64 in [0, n_classes)) -> scalar``.
    """

    def __init__(self, bits: int, n_classes: int, lam: float, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the classifier's initial weights depend on the seed only
            torch.manual_seed(seed)
            self.classifier = nn.Linear(bits, n_classes)
        self.lam = float(lam)

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.classifier.parameters())}]

    def loss(self, embeddings, labels):
        logits = self.classifier(sign_straight_through(embeddings))
        penalty = (embeddings.abs() - 1).pow(3).abs().mean()
        return F.cross_entropy(logits, labels) + self.lam * penalty
