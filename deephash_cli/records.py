"""Recorded evaluations: the ``<artifact>.evals.json`` sidecar written by ``evaluate --record``.

The HDF5 artifact itself is never modified (its SHA-256 is its children's ``parent_sha256``).
The sidecar is a JSON list of evaluation results, one per distinct setting (protocol, distance,
query/database selection, metrics); recording the same setting again replaces the old entry.
Each entry carries the artifact's SHA-256 at recording time, so readers can tell a record of
another version of the file. Writes are atomic (temp file in the same folder, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from deephash_cli.artifacts import make_public
from deephash_cli.errors import DeephashError

SUFFIX = ".evals.json"
SETTING_KEYS = ("protocol", "distance", "query_split", "database_split", "queries_per_class", "seed", "metrics",
                "knn_k", "ties")


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """``<artifact>.evals.json`` next to the artifact (``emb.h5`` -> ``emb.h5.evals.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def read_records(artifact: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The recorded evaluations of ``artifact`` ([] when it has no sidecar); a corrupt sidecar is an error."""
    path = sidecar_path(artifact)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DeephashError(f"{path}: unreadable evaluation record ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("setting"), dict)
                                                for r in records):
        raise DeephashError(f"{path}: expected a JSON list of evaluation results with a 'setting' each")
    return records


def add_record(artifact: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Store ``result`` (needs a ``setting`` dict) in the sidecar, replacing a record of the same setting."""
    setting = result.get("setting")
    if not isinstance(setting, Mapping):
        raise ValueError("an evaluation record needs a 'setting' mapping")
    records = [r for r in read_records(artifact) if r.get("setting") != dict(setting)]
    records.append(dict(result))
    path = sidecar_path(artifact)
    write_text_atomic(path, json.dumps(records, indent=2, sort_keys=True, default=float) + "\n", force=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename; an existing file needs
    ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise DeephashError(f"{path} exists; pass --force to overwrite it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        make_public(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
