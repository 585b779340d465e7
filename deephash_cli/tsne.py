"""t-SNE of one split: stratified subsample, codes as ±1, scikit-learn's TSNE. Pure: arrays in, arrays out."""

from __future__ import annotations

import numpy as np

from deephash_cli.errors import DeephashError


def stratified_subsample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted row positions of at most ``max_points`` items, each class kept in proportion (seeded).

    Exactly ``min(n, max_points)`` rows. Every class keeps at least one point when ``max_points`` is
    at least the number of classes (classes pushed up to one point are paid for by the largest
    quotas). When ``max_points`` is smaller than the number of classes, ``max_points`` classes keep
    one point each: the largest classes, ties broken by the seed; the other classes are left out.
    """
    n = len(labels)
    if max_points <= 0:
        raise DeephashError(f"--max-points must be positive, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if max_points < len(classes):
        order = np.lexsort((rng.random(len(classes)), -counts))  # largest first, seeded ties
        quota = np.zeros(len(classes), dtype=int)
        quota[order[:max_points]] = 1
    else:
        quota = np.maximum(1, np.floor(counts * (max_points / n)).astype(int))
        # Hand the rounding remainder to the largest classes so the total is exactly max_points.
        for i in np.argsort(-counts)[: max(0, max_points - int(quota.sum()))]:
            quota[i] += 1
        # Small classes raised to one point can overshoot: take the excess from the largest quotas.
        while quota.sum() > max_points:
            quota[int(np.argmax(quota))] -= 1
    rows = [rng.choice(np.flatnonzero(labels == c), size=min(q, cnt), replace=False)
            for c, q, cnt in zip(classes, quota, counts) if q > 0]
    return np.sort(np.concatenate(rows))


def tsne_2d(points: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``points (n, d)`` float32 -> ``(n, 2)`` float32 (PCA init, automatic learning rate)."""
    from sklearn.manifold import TSNE

    n = len(points)
    if n < 3:
        raise DeephashError(f"t-SNE needs at least 3 points, got {n}")
    if not 0 < perplexity < n:
        raise DeephashError(f"--perplexity must lie in (0, {n}) for {n} points, got {perplexity}")
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return model.fit_transform(np.asarray(points, dtype=np.float32)).astype(np.float32)
