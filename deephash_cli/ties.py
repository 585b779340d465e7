"""Ties among equal distances: the order an index returns them in, and how to say how many there were.

Binary codes put many database items at one Hamming distance from a query (48-bit CIFAR-10 codes: often
hundreds at distance 0), and a flat index returns tied items in its item order. Two orders
(``index --tie-order``):

* ``shuffled``: the items enter the index in a seeded random order (``numpy.random.default_rng(seed)
  .permutation(n)``), so ties come back in a random but reproducible order that owes nothing to class or
  folder order;
* ``database``: the items enter in database order (``--splits``, then the artifact's rows); an image folder
  is sorted by class, so ties favour the classes whose names sort first.

No I/O, no faiss.
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
