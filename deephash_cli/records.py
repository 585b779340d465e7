"""Recorded evaluations: the ``<artifact>.evals.json`` sidecar written by ``evaluate --record``.

The HDF5 artifact itself is never modified (its SHA-256 is its children's ``parent_sha256``).
The sidecar is a JSON list of evaluation results, one per distinct setting (protocol, distance,
query/database selection, metrics); recording the same setting again replaces the old entry.
Each entry carries the artifact's SHA-256 at recording time, so readers can tell a record of
another version of the file. Writes are atomic (temp file in the same folder, then rename), and
``add_record``'s read-modify-write holds an exclusive lock on ``.<artifact>.evals.json.lock`` (a hidden
file next to the sidecar, left in place), so concurrent ``evaluate --record`` runs keep every record.

Readers validate each entry (``check_record``): ``read_records_checked`` returns the good entries
and the bad ones with a reason, ``read_records`` only the good ones. ``add_record`` keeps malformed
entries as they are (they are not its to delete) unless it replaces them (same setting).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

try:
    import fcntl
except ImportError:  # Windows: an exclusively created lock file instead (see _exclusive)
    fcntl = None  # type: ignore[assignment]

from deephash_cli.artifacts import make_public
from deephash_cli.errors import DeephashError

SUFFIX = ".evals.json"
SETTING_KEYS = ("protocol", "distance", "query_split", "database_split", "queries_per_class", "seed", "metrics",
                "knn_k", "ties")


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """``<artifact>.evals.json`` next to the artifact (``emb.h5`` -> ``emb.h5.evals.json``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def _read_list(path: Path) -> list[Any]:
    """The sidecar's JSON list, entries unchecked ([] when absent); unreadable JSON or no list is an error."""
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DeephashError(f"{path}: unreadable evaluation record ({err})") from None
    if not isinstance(entries, list):
        raise DeephashError(f"{path}: expected a JSON list of evaluation results, found a JSON "
                            f"{_json_type(entries)}")
    return entries


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record(entry: Any) -> str | None:
    """Why ``entry`` is not a usable evaluation record, or None when it is.

    A record is a JSON object with a ``setting`` object naming ``protocol`` and ``distance``
    (strings) and numbers ``map`` and ``knn_accuracy``; ``precision_at`` and ``map_at``, when
    present, map K to numbers; ``selection``, ``command``, ``recorded`` and ``artifact_sha256``,
    when present, are strings.
    """
    if not isinstance(entry, dict):
        return f"expected a JSON object, found a JSON {_json_type(entry)}"
    setting = entry.get("setting")
    if not isinstance(setting, dict):
        return ("no 'setting'" if setting is None else
                f"'setting' is a JSON {_json_type(setting)}, expected an object")
    for key in ("protocol", "distance"):
        if not isinstance(setting.get(key), str):
            return (f"'setting' has no '{key}'" if setting.get(key) is None else
                    f"'setting.{key}' is a JSON {_json_type(setting[key])}, expected a string")
    for key in ("map", "knn_accuracy"):
        if not _is_number(entry.get(key)):
            return (f"no '{key}'" if entry.get(key) is None else
                    f"'{key}' is a JSON {_json_type(entry[key])}, expected a number")
    for key in ("precision_at", "map_at"):
        values = entry.get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"'{key}' is a JSON {_json_type(values)}, expected an object of numbers"
        bad = next((k for k, v in values.items() if not _is_number(v)), None)
        if bad is not None:
            return f"'{key}.{bad}' is a JSON {_json_type(values[bad])}, expected a number"
    for key in ("selection", "command", "recorded", "artifact_sha256"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            return f"'{key}' is a JSON {_json_type(entry[key])}, expected a string"
    return None


def read_records_checked(artifact: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The recorded evaluations of ``artifact`` as (good entries, bad entries as (1-based position, reason)).

    No sidecar: ([], []). A sidecar that is not JSON or not a list is a DeephashError naming it.
    """
    good, bad = [], []
    for position, entry in enumerate(_read_list(sidecar_path(artifact)), 1):
        reason = check_record(entry)
        if reason is None:
            good.append(entry)
        else:
            bad.append((position, reason))
    return good, bad


def read_records(artifact: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The valid recorded evaluations of ``artifact`` ([] when it has no sidecar); malformed entries are left out
    (``read_records_checked`` names them), a sidecar that is not a JSON list is an error."""
    return read_records_checked(artifact)[0]


def add_record(artifact: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Store ``result`` (needs a ``setting`` dict) in the sidecar, replacing a record of the same setting.

    The read-modify-write holds the sidecar's lock, so concurrent calls (several ``evaluate --record``
    processes) all keep their records. Malformed entries already there are kept untouched, except one
    with the same setting, which is replaced like any other.
    """
    setting = result.get("setting")
    if not isinstance(setting, Mapping):
        raise ValueError("an evaluation record needs a 'setting' mapping")
    path = sidecar_path(artifact)
    with _exclusive(lock_path(path)):
        entries = [e for e in _read_list(path) if not (isinstance(e, dict) and e.get("setting") == dict(setting))]
        entries.append(dict(result))
        write_text_atomic(path, json.dumps(entries, indent=2, sort_keys=True, default=float) + "\n", force=True)
    return path


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` in the same folder (hidden; report and ls skip it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


STALE_LOCK_SECONDS = 60.0  # fallback without fcntl: an older lock file is a killed writer's leftover


@contextmanager
def _exclusive(lock: Path, stale: float = STALE_LOCK_SECONDS) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created if absent) for the ``with`` block.

    POSIX: ``fcntl.flock``, released by the kernel even when the process dies; the file stays. Without
    fcntl: the lock file is created exclusively (``O_EXCL``) and removed afterwards; one older than
    ``stale`` seconds is taken for the leftover of a killed process and replaced (a record's
    read-modify-write takes milliseconds).
    """
    if fcntl is not None:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise DeephashError(f"{lock}: cannot create the lock file of the evaluation record "
                                f"({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
        return
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            try:
                age = time.time() - lock.stat().st_mtime
                if age > stale:
                    lock.unlink()  # a killed writer's leftover
                    continue
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except OSError as err:
                raise DeephashError(f"{lock}: cannot check or remove the stale lock file of the evaluation "
                                    f"record ({err.strerror or err})") from None
            time.sleep(0.005)
        except OSError as err:
            raise DeephashError(f"{lock}: cannot create the lock file of the evaluation record "
                                f"({err.strerror or err})") from None
    try:
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


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
