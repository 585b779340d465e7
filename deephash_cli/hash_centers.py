"""Hash centres: one ±1 code per class, far apart (central similarity, Yuan et al. CVPR 2020).

Rows of a Hadamard matrix ``H`` (``H Hᵀ = n I``) differ in exactly ``n/2`` positions, the
largest minimum distance ``n`` codes of ``n`` bits can have; ``[H; −H]`` gives ``2n`` codes
at distance ``n/2`` or ``n``. CSQ builds ``H`` with Sylvester's construction (powers of two)
and draws random balanced codes when the classes outnumber ``2n``. Sylvester alone leaves
out most lengths (48 bits is the literature's usual one), so here:

* Sylvester's construction for ``n = 2^k``;
* Paley's first construction for ``n = q + 1``, ``q`` a prime ≡ 3 (mod 4) (12, 20, 24, 32,
  44, 48, ...), doubled by Sylvester's step (``2^k (q + 1)``);
* otherwise (and for classes beyond ``2n``): random balanced ±1 codes (half +1), the best
  of 20 seeded draws by minimum pairwise Hamming distance, as CSQ does.

All pure numpy; centres are ``(n_classes, bits) int8`` in {−1, +1}.
"""

from __future__ import annotations

import numpy as np

from deephash_cli.errors import DeephashError

RANDOM_DRAWS = 20


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def paley(q: int) -> np.ndarray:
    """Paley I Hadamard matrix of order ``q + 1`` for a prime ``q ≡ 3 (mod 4)``: ``(q+1, q+1) int8``.

    ``Q_ij = χ(j − i)`` (quadratic character mod q, χ(0) = 0) is antisymmetric; ``H = I + [[0, 1ᵀ], [−1, Q]]``.
    """
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"Paley I needs a prime q ≡ 3 (mod 4), got {q}")
    chi = np.full(q, -1, dtype=np.int64)
    chi[0] = 0
    chi[(np.arange(1, q) ** 2) % q] = 1
    idx = np.arange(q)
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:], s[1:, 0] = 1, -1
    s[1:, 1:] = chi[(idx[None, :] - idx[:, None]) % q]
    return (s + np.eye(q + 1, dtype=np.int64)).astype(np.int8)


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order ``n`` (``(n, n) int8``, ``H Hᵀ = n I``) from Sylvester and Paley I, or None."""
    if n == 1:
        return np.ones((1, 1), dtype=np.int8)
    if n == 2 or (n % 4 == 0 and _is_prime(n - 1) and (n - 1) % 4 == 3):
        return paley(n - 1) if n > 2 else np.array([[1, 1], [1, -1]], dtype=np.int8)
    if n % 2 == 0:
        half = hadamard(n // 2)
        if half is not None:
            return np.block([[half, half], [half, -half]]).astype(np.int8)
    return None


def min_distance(centers: np.ndarray) -> int:
    """Smallest Hamming distance between two rows of a ±1 matrix (``bits`` for a single row)."""
    if len(centers) < 2:
        return int(centers.shape[1])
    c = centers.astype(np.int64)
    d = (c.shape[1] - c @ c.T) // 2
    np.fill_diagonal(d, c.shape[1])
    return int(d.min())


def hash_centers(n_classes: int, bits: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Centres ``(n_classes, bits) int8`` ±1 and how they were made (``"hadamard"`` or ``"random"``).

    Classes beyond the ``2 bits`` rows of ``[H; −H]`` (or every class when no Hadamard matrix of order
    ``bits`` is known here) get random balanced codes; more classes than ``2^bits`` distinct codes is an error.
    """
    if n_classes < 1:
        raise DeephashError(f"hash centres need at least one class, got {n_classes}")
    if bits < 63 and n_classes > 2 ** bits:
        raise DeephashError(f"{n_classes} classes need more than 2^{bits} distinct {bits}-bit centres; use more bits")
    h = hadamard(bits)
    if h is not None and n_classes <= 2 * bits:
        return np.concatenate([h, -h])[:n_classes].copy(), "hadamard"
    rng = np.random.default_rng(seed)
    fixed = np.concatenate([h, -h]) if h is not None else np.zeros((0, bits), dtype=np.int8)
    best, best_min = None, -1
    for _ in range(RANDOM_DRAWS):
        extra = np.ones((n_classes - len(fixed), bits), dtype=np.int8)
        for row in extra:
            row[rng.permutation(bits)[: bits // 2]] = -1
        candidate = np.concatenate([fixed, extra])
        score = min_distance(candidate)
        if score > best_min:
            best, best_min = candidate, score
    assert best is not None
    if len(np.unique(best, axis=0)) < n_classes:
        raise DeephashError(f"could not draw {n_classes} distinct {bits}-bit centres; use more bits")
    return best, "hadamard+random" if len(fixed) else "random"
