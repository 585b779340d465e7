"""Ties among equal distances: the order an index returns them in, and how to say how many there were.

Binary codes put many database items at one Hamming distance from a query (48-bit CIFAR-10 codes: often
hundreds at distance 0), and a flat index returns tied items in its item order. Two orders
(``index --tie-order``):

* ``shuffled``: the items enter the index in a seeded random order (``numpy.random.default_rng(seed)
  .permutation(n)``), so ties come back in a random but reproducible order that owes nothing to class or
  folder order;
* ``database``: the items enter in database order (``--splits``, then the artifact's rows); an image folder
  is sorted by class, so ties favour the classes whose names sort first.

``search`` reports, for flat indexes, how many items lie at exactly the k-th result's distance and how
many closer (the counting itself is faiss's: ``faiss_index.count_ties``); ``table_line`` and ``caption``
phrase it when the k results are a choice among tied items. No I/O, no faiss.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from deephash_cli.errors import DeephashError

#: ``--tie-order`` choices -> what they mean (the CLI's --help lists these).
TIE_ORDERS: dict[str, str] = {
    "shuffled": "items enter the index in a seeded random order (--seed), so equal distances come back in a "
                "random, reproducible order, independent of class or folder order",
    "database": "items enter in database order (--splits, then the artifact's rows), so equal distances come "
                "back lowest position first (an image folder: classes in name order)",
}


def item_order(n: int, tie_order: str, seed: int) -> np.ndarray | None:
    """The order ``n`` items enter an index: positions into the database, or None to keep database order."""
    if tie_order not in TIE_ORDERS:
        raise DeephashError(f"unknown tie order '{tie_order}'; valid: {', '.join(TIE_ORDERS)}")
    if tie_order == "database":
        return None
    return np.random.default_rng(seed).permutation(n)


def recorded(spec: Mapping[str, Any]) -> tuple[str, int | None]:
    """An index's tie order and seed, from its stored spec; indexes built before tie orders kept database order."""
    order = spec.get("tie_order", "database")
    return order, (spec.get("tie_seed") if order == "shuffled" else None)


def describe(spec: Mapping[str, Any]) -> str:
    """``shuffled (seed 0)`` or ``database``."""
    order, seed = recorded(spec)
    return f"{order} (seed {seed})" if order == "shuffled" else order


def _choice(answer: Mapping[str, Any]) -> tuple[int, int, int, int | float] | None:
    """(k, closer, tied, k-th distance) of one query's answer (``search``'s JSON object) when its k results
    are a choice among tied items: the tie at the k-th distance extends beyond k. None otherwise, and for
    answers without tie counts (approximate indexes)."""
    rows = answer.get("results") or []
    closer, tied = answer.get("closer_than_kth"), answer.get("tied_at_kth")
    if not rows or closer is None or tied is None or closer + tied <= len(rows):
        return None
    return len(rows), int(closer), int(tied), rows[-1]["distance"]


def _distance_text(distance: int | float) -> str:
    return f"{distance}" if isinstance(distance, int) else f"{distance:.4f}"


def table_line(answer: Mapping[str, Any]) -> str | None:
    """``ranks 1-8 drawn from 412 items tied at distance 0`` (None when the k results are not a choice)."""
    choice = _choice(answer)
    if choice is None:
        return None
    k, closer, tied, distance = choice
    ranks = f"rank {k}" if closer + 1 == k else f"ranks {closer + 1}-{k}"
    return f"{ranks} drawn from {tied} items tied at distance {_distance_text(distance)}"


def caption(answer: Mapping[str, Any]) -> str | None:
    """``8 of 412 tied at distance 0``, for grids and pages (None when the k results are not a choice)."""
    choice = _choice(answer)
    if choice is None:
        return None
    k, closer, tied, distance = choice
    return f"{k - closer} of {tied} tied at distance {_distance_text(distance)}"
