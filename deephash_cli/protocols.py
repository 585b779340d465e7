"""Which items are queries and which form the database: the evaluation protocols. Pure selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from deephash_cli.artifacts import Artifact
from deephash_cli.errors import DeephashError

PROTOCOLS = ("splits", "pooled", "within")


@dataclass
class QueryDatabase:
    """Query and database arrays with labels, and a sentence saying how they were chosen.

    ``exclude_self``: the queries are the database (leave-one-out: each query's own item is not ranked).
    """

    query: np.ndarray
    query_labels: np.ndarray
    database: np.ndarray
    database_labels: np.ndarray
    description: str
    exclude_self: bool = False


def select(artifact: Artifact, *, protocol: str = "splits", query_split: str = "test",
           database_split: Sequence[str] = ("train", "val"), queries_per_class: int = 100,
           seed: int = 0) -> QueryDatabase:
    """Pick queries and database from an artifact.

    - ``splits``: every item of ``query_split`` against every item of the ``database_split``
      splits (default ``train`` and ``val``: ``val`` is used when present, so an
      artifact whose validation split was carved from train is searched against the same
      database as its parent). A query split cannot also be a database split.
    - ``pooled``: the standard hashing protocol (e.g. DPSH/DTSH on CIFAR-10): ``queries_per_class``
      items per class drawn (seeded) from ``query_split`` are the queries; all other items of all
      splits form the database (CIFAR-10: 1,000 queries against 59,000).
    - ``within``: the metric-learning protocol on unseen classes: every item of ``query_split`` is a
      query against all the other items of that split (each query's own item left out). An artifact
      with ``query`` and ``gallery`` splits (In-shop) is evaluated query against gallery instead.
    """
    if protocol not in PROTOCOLS:
        raise DeephashError(f"unknown protocol '{protocol}'; valid names: {', '.join(PROTOCOLS)}")
    if protocol == "within":
        if "query" in artifact.splits and "gallery" in artifact.splits:
            q, g = artifact.splits["query"], artifact.splits["gallery"]
            return QueryDatabase(q.data, q.labels, g.data, g.labels, f"query ({len(q)}) against gallery ({len(g)})")
        q = artifact.split(query_split)
        if len(q) < 2:
            raise DeephashError(f"--protocol within needs at least 2 items in '{query_split}', found {len(q)}")
        return QueryDatabase(q.data, q.labels, q.data, q.labels,
                             f"every item of {query_split} ({len(q)}) against the other {len(q) - 1}",
                             exclude_self=True)
    if protocol == "splits":
        names = list(database_split)
        if query_split in names:
            raise DeephashError(f"split '{query_split}' is both the query and a database split; choose different "
                                f"splits or --protocol pooled")
        names = [s for s in names if s in artifact.splits or s != "val"]  # val only when present
        if not names:
            raise DeephashError("--database-split names no split")
        q, dbs = artifact.split(query_split), [artifact.split(s) for s in names]
        database = np.concatenate([d.data for d in dbs])
        database_labels = np.concatenate([d.labels for d in dbs])
        return QueryDatabase(q.data, q.labels, database, database_labels,
                             f"{query_split} ({len(q)}) against {'+'.join(names)} ({len(database_labels)})")
    if queries_per_class <= 0:
        raise DeephashError(f"--queries-per-class must be positive, got {queries_per_class}")
    source = artifact.split(query_split)
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(source.labels):
        members = np.flatnonzero(source.labels == cls)
        if len(members) <= queries_per_class:
            raise DeephashError(f"class {cls} has {len(members)} items in '{query_split}', not more than "
                                f"--queries-per-class {queries_per_class}")
        picked.append(rng.choice(members, size=queries_per_class, replace=False))
    query_rows = np.sort(np.concatenate(picked))
    rest = np.ones(len(source), dtype=bool)
    rest[query_rows] = False
    parts = [(source.data[rest], source.labels[rest])]
    parts += [(artifact.splits[s].data, artifact.splits[s].labels) for s in artifact.splits if s != query_split]
    database = np.concatenate([p[0] for p in parts])
    database_labels = np.concatenate([p[1] for p in parts])
    return QueryDatabase(source.data[query_rows], source.labels[query_rows], database, database_labels,
                         f"{len(query_rows)} queries ({queries_per_class}/class from {query_split}, seed {seed}) "
                         f"against the other {len(database_labels)} items of {', '.join(artifact.splits)}")
