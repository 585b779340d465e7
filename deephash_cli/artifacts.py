"""The one module that reads and writes deephash HDF5 artifacts.

Layout (format_version 2; version 1 files, which lack ``paths``, are still read; the public contract is
documented in docs/format.md):

    /                       attrs: format="deephash", format_version, kind, created, generator,
                                   command, config (JSON), versions (JSON),
                                   parent, parent_sha256 (when made from another artifact)
    /class_names            (c,) variable-length UTF-8 strings
    /<split>                one group per split: train, test, and val when a stage carves one
        labels              (n,) int64, 0 <= label < c
        index               (n,) int64, position of the item in the source dataset
        paths               (n,) UTF-8 strings, the item's name (version 2; optional): imagefolder: the file path
                            relative to --data-dir; built-in datasets: e.g. cifar10/train/123
        features            (n, d) float32           (kinds features, embeddings)
        codes               (n, ceil(bits/8)) uint8  (kind codes), attr bits; numpy.packbits order
    /model                  (kind model) attrs: architecture (JSON); datasets: parameters/<name>
    /index                  (kind index) attr spec (JSON); dataset faiss: the serialized faiss index, (nbytes,) uint8
    /items                  (kind index) labels, index, paths, source (int32) and vectors of the indexed items
    /checkpoint             optional (finetune): attr state (JSON); model/, optimizer/, rng/ datasets
    /history                optional (n_epochs,) compound table of training history

Writes go to a temporary file in the target folder and are renamed into place only when
complete, so a failed run never leaves a half-written output. Reads validate everything and
name what they expected and what they found.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from deephash_cli import __version__
from deephash_cli.errors import DeephashError

FORMAT = "deephash"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("features", "embeddings", "codes", "model", "index")
SPLITS = ("train", "val", "test")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------- data classes


@dataclass
class Split:
    """One split of an artifact, fully loaded.

    labels (n,) int64; index (n,) int64; and either features (n, d) float32 or
    codes (n, ceil(bits/8)) uint8 with ``bits``; ``paths`` (n,) str item names, None for
    format-version-1 files (then the dataset index names an item).
    """

    labels: np.ndarray
    index: np.ndarray
    features: np.ndarray | None = None
    codes: np.ndarray | None = None
    bits: int | None = None
    paths: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> "Split":
        """The items at ``rows``, every array (paths included) taken along."""
        take = (lambda a: None if a is None else a[rows])
        return Split(self.labels[rows], self.index[rows], features=take(self.features), codes=take(self.codes),
                     bits=self.bits, paths=take(self.paths))

    def names(self) -> list[str]:
        """A printable name per item: its path, or ``#<dataset index>`` when the file has no paths."""
        if self.paths is not None:
            return [str(p) for p in self.paths]
        return [f"#{i}" for i in self.index.tolist()]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def data(self) -> np.ndarray:
        """features or codes, whichever this split holds."""
        return self.features if self.features is not None else self.codes  # type: ignore[return-value]


@dataclass
class Artifact:
    """A loaded artifact: root attributes, class names and splits (model artifacts: parameters)."""

    path: str
    kind: str
    attrs: dict[str, Any]
    class_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    model_attrs: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved options of the command that produced this artifact."""
        return self.attrs.get("config", {})

    def split(self, name: str) -> Split:
        """The split called ``name``; a missing split is a DeephashError naming those present."""
        if name not in self.splits:
            present = ", ".join(self.splits) or "none"
            raise DeephashError(f"{self.path}: no split '{name}' (splits present: {present})")
        return self.splits[name]


# --------------------------------------------------------------------------- provenance


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the parent hash recorded in children)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the numbers in an artifact."""
    versions = {"deephash": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "h5py": h5py.__version__}
    for name in ("torch", "torchvision", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return versions


# Files that stand for a stream: a stdin spool is recorded as "-" in its children's provenance.
_DISPLAY_NAMES: dict[str, str] = {}


def set_display_name(path: str | os.PathLike[str], name: str | None) -> None:
    """Record (or with ``None`` forget) the name a local file stands for, e.g. ``-`` for a stdin spool."""
    key = os.path.abspath(path)
    if name is None:
        _DISPLAY_NAMES.pop(key, None)
    else:
        _DISPLAY_NAMES[key] = name


def display_name(path: str | os.PathLike[str]) -> str:
    """The name to show and record for ``path``: ``-`` for a stream registered by the CLI, else the path."""
    return _DISPLAY_NAMES.get(os.path.abspath(path), str(path))


def parent_reference(parent: str | os.PathLike[str], child: str | os.PathLike[str]) -> str:
    """How a child records its parent: ``-`` for stdin, absolute paths unchanged, relative paths relative to
    the child's folder (absolute when the child itself is streamed to stdout, as its folder is unknown)."""
    if os.path.abspath(parent) in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[os.path.abspath(parent)]
    if os.path.isabs(parent):
        return str(parent)
    if os.path.abspath(child) in _DISPLAY_NAMES:
        return os.path.abspath(parent)
    return os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))


def command_line() -> str:
    """The command line of this process, shell-quoted, with the program name shortened."""
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


# --------------------------------------------------------------------------- writing


def make_public(path: str | os.PathLike[str]) -> None:
    """Give a temp file the permissions a normally created file would get (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse an existing output (unless force) or a missing output folder, before any work is done."""
    path = Path(path)
    if path.exists() and not force:
        raise DeephashError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and path.is_dir():
        raise DeephashError(f"{path} is a directory, expected an output file path")
    if not path.parent.exists():
        raise DeephashError(f"output folder {path.parent} does not exist")


class ArtifactWriter:
    """Write an artifact atomically: everything goes to a temp file renamed into place on success.

    Use as a context manager; an exception inside the block removes the temp file and leaves any
    existing output untouched::

        with ArtifactWriter(out, kind="features", class_names=names, config=cfg) as writer:
            split = writer.create_split("train", n=50000, dim=1280)
            split.write(features_chunk, labels_chunk, index_chunk)   # in order, chunk by chunk
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        class_names: Iterable[str] | None,
        config: Mapping[str, Any],
        parent: str | os.PathLike[str] | None = None,
        force: bool = False,
        command: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.class_names = list(class_names) if class_names is not None else None
        self.config = dict(config)
        self.parent = parent
        self.force = force
        self.command = command if command is not None else command_line()
        self._tmp_path: Path | None = None
        self.file: h5py.File | None = None
        self._splits: dict[str, SplitWriter] = {}

    def __enter__(self) -> "ArtifactWriter":
        check_output(self.path, self.force)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp_path = Path(tmp)
        self.file = h5py.File(tmp, "w")
        attrs = self.file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["kind"] = self.kind
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs["generator"] = f"deephash {__version__}"
        attrs["command"] = self.command
        attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
        attrs["versions"] = json.dumps(library_versions(), sort_keys=True)
        if self.parent is not None:
            attrs["parent"] = parent_reference(self.parent, self.path)
            attrs["parent_sha256"] = sha256_file(self.parent)
        if self.class_names is not None:
            self.file.create_dataset("class_names", data=np.array(self.class_names, dtype=h5py.string_dtype()))
        return self

    def create_split(self, name: str, n: int, *, dim: int | None = None, bits: int | None = None,
                     resizable: bool = False, paths: bool = False) -> "SplitWriter":
        """Create group ``name`` sized for ``n`` items of ``features (n, dim)`` or ``codes`` of ``bits``
        (``paths``: the split also stores each item's name)."""
        assert self.file is not None, "use ArtifactWriter as a context manager"
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        writer = SplitWriter(self.file.create_group(name), n, dim=dim, bits=bits, resizable=resizable, paths=paths)
        self._splits[name] = writer
        return writer

    def write_split(self, name: str, split: Split) -> None:
        """Write a whole in-memory split at once (with its paths when it has them)."""
        writer = self.create_split(name, len(split), dim=None if split.features is None else split.features.shape[1],
                                   bits=split.bits if split.codes is not None else None,
                                   paths=split.paths is not None)
        writer.write(split.data, split.labels, split.index, split.paths)

    def write_index(self, spec: Mapping[str, Any], serialized: np.ndarray, items: "IndexItems",
                    encoder: Mapping[str, Any], sources: list[Mapping[str, Any]]) -> None:
        """Kind ``index``: the serialized faiss index as a (nbytes,) uint8 dataset (faiss's own format, never
        pickle), its ``spec`` (JSON), the items it holds, the encoder that makes queries and the sources."""
        assert self.file is not None
        serialized = np.ascontiguousarray(serialized, dtype=np.uint8).reshape(-1)
        group = self.file.require_group("index")
        group.attrs["spec"] = json.dumps(dict(spec), sort_keys=True, default=str)
        group.create_dataset("faiss", data=serialized)
        self.file.attrs["encoder"] = json.dumps(dict(encoder), sort_keys=True, default=str)
        self.file.attrs["sources"] = json.dumps([dict(s) for s in sources], sort_keys=True, default=str)
        out = self.file.require_group("items")
        out.create_dataset("labels", data=items.labels.astype(np.int64))
        out.create_dataset("index", data=items.index.astype(np.int64))
        out.create_dataset("source", data=items.source.astype(np.int32))
        out.create_dataset("paths", data=np.asarray(items.paths, dtype=object), dtype=h5py.string_dtype())
        if items.vectors is not None:
            vectors = out.create_dataset("vectors", data=items.vectors)
            if items.bits is not None:
                vectors.attrs["bits"] = int(items.bits)

    def write_model(self, architecture: Mapping[str, Any], parameters: Mapping[str, np.ndarray]) -> None:
        """Store a network without pickle: ``architecture`` as JSON, each tensor as a dataset."""
        assert self.file is not None
        group = self.file.require_group("model")
        group.attrs["architecture"] = json.dumps(dict(architecture), sort_keys=True, default=str)
        params = group.create_group("parameters")
        for name, value in parameters.items():
            params.create_dataset(name, data=np.asarray(value))

    def write_checkpoint(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """A training checkpoint under ``/checkpoint``: ``state`` as JSON (attribute ``state``) and each
        array as a dataset named by its key ('/' in a key makes subgroups). No pickle."""
        assert self.file is not None
        group = self.file.require_group("checkpoint")
        group.attrs["state"] = json.dumps(dict(state), sort_keys=True, default=str)
        for name, value in arrays.items():
            group.create_dataset(name, data=np.asarray(value))

    def write_history(self, rows: list[Mapping[str, Any]]) -> None:
        """Per-epoch training history as JSON (rows of floats/ints), plus one dataset per column."""
        assert self.file is not None
        group = self.file.require_group("history")
        group.attrs["rows"] = json.dumps([dict(r) for r in rows], default=float)
        columns = sorted({key for row in rows for key in row})
        for column in columns:
            values = [row.get(column, np.nan) for row in rows]
            try:
                group.create_dataset(column, data=np.asarray(values, dtype=np.float64))
            except (TypeError, ValueError):
                continue  # non-numeric columns live in the JSON only

    def set_attr(self, name: str, value: Any) -> None:
        """A root attribute; dicts and lists are stored as JSON."""
        assert self.file is not None
        self.file.attrs[name] = json.dumps(value, default=float) if isinstance(value, (dict, list)) else value

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.file is not None and self._tmp_path is not None
        try:
            if exc_type is None:
                for name, split in self._splits.items():
                    split.finish(name)
            self.file.close()
        except BaseException:
            self._tmp_path.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self._tmp_path.unlink(missing_ok=True)
            return
        if self.path.exists() and not self.force:  # appeared while we worked
            self._tmp_path.unlink(missing_ok=True)
            raise DeephashError(f"{self.path} appeared while writing; pass --force to overwrite it")
        make_public(self._tmp_path)
        os.replace(self._tmp_path, self.path)


class SplitWriter:
    """Appends chunks of (data, labels, index) to one split; checks the final count."""

    def __init__(self, group: h5py.Group, n: int, *, dim: int | None, bits: int | None, resizable: bool,
                 paths: bool = False) -> None:
        if (dim is None) == (bits is None):
            raise ValueError("give exactly one of dim (features) or bits (codes)")
        self.group = group
        self.n = n
        self.offset = 0
        maxshape_n = None if resizable else n
        self.labels = group.create_dataset("labels", shape=(n,), maxshape=(maxshape_n,), dtype=np.int64)
        self.index = group.create_dataset("index", shape=(n,), maxshape=(maxshape_n,), dtype=np.int64)
        self.paths = (group.create_dataset("paths", shape=(n,), maxshape=(maxshape_n,), dtype=h5py.string_dtype())
                      if paths else None)
        if dim is not None:
            chunks = (max(1, min(n, 1024)), dim) if n else None
            self.data = group.create_dataset("features", shape=(n, dim), maxshape=(maxshape_n, dim),
                                             dtype=np.float32, chunks=chunks)
        else:
            nbytes = (int(bits) + 7) // 8
            self.data = group.create_dataset("codes", shape=(n, nbytes), maxshape=(maxshape_n, nbytes),
                                             dtype=np.uint8)
            self.data.attrs["bits"] = int(bits)

    def write(self, data: np.ndarray, labels: np.ndarray, index: np.ndarray,
              paths: np.ndarray | list[str] | None = None) -> None:
        """Append ``len(labels)`` rows (and their names, when the split stores paths)."""
        m = len(labels)
        if len(data) != m or len(index) != m:
            raise ValueError(f"chunk lengths differ: data {len(data)}, labels {m}, index {len(index)}")
        if (paths is None) != (self.paths is None):
            raise ValueError("paths must be given exactly when the split was created with paths=True")
        if paths is not None and len(paths) != m:
            raise ValueError(f"chunk lengths differ: paths {len(paths)}, labels {m}")
        end = self.offset + m
        if end > self.labels.shape[0]:
            raise ValueError(f"split overflow: {end} rows written into a split sized {self.labels.shape[0]}")
        self.data[self.offset:end] = data
        self.labels[self.offset:end] = labels
        self.index[self.offset:end] = index
        if self.paths is not None:
            self.paths[self.offset:end] = np.asarray([str(p) for p in paths], dtype=object)
        self.offset = end

    def finish(self, name: str) -> None:
        """Shrink a resizable split to what was written (e.g. after skipping corrupt images)."""
        if self.offset != self.labels.shape[0]:
            if self.labels.maxshape[0] is None:
                for dataset in (self.labels, self.index, self.data, self.paths):
                    if dataset is not None:
                        dataset.resize(self.offset, axis=0)
            else:
                raise ValueError(f"split '{name}': wrote {self.offset} rows, expected {self.labels.shape[0]}")


# --------------------------------------------------------------------------- reading


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _json_attr(attrs: h5py.AttributeManager, name: str, default: Any) -> Any:
    if name not in attrs:
        return default
    try:
        return json.loads(_decode(attrs[name]))
    except (TypeError, ValueError):
        return default


def open_checked(path: str | os.PathLike[str]) -> h5py.File:
    """Open ``path`` read-only after checking it exists and is HDF5; errors say what was found."""
    path = Path(path)
    if not path.exists():
        raise DeephashError(f"{path}: no such file")
    if path.is_dir():
        raise DeephashError(f"{path}: is a directory, expected a deephash HDF5 file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head != HDF5_SIGNATURE:
        raise DeephashError(f"{path}: not an HDF5 file (expected a deephash artifact, found {len(head)}-byte "
                            f"header {head[:8]!r})")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DeephashError(f"{path}: unreadable HDF5 file ({err})") from None


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Root attributes of an artifact, validated (format, version, kind), without loading arrays."""
    with open_checked(path) as handle:
        return _check_header(handle, str(path))


def _check_header(handle: h5py.File, path: str) -> dict[str, Any]:
    attrs = handle.attrs
    fmt = _decode(attrs.get("format", None))
    if fmt != FORMAT:
        raise DeephashError(f"{path}: not a deephash artifact (expected attribute format='{FORMAT}', found "
                            f"{fmt!r})")
    version = int(attrs.get("format_version", -1))
    if version not in READABLE_VERSIONS:
        raise DeephashError(f"{path}: format_version {version} is not supported (this deephash reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    kind = _decode(attrs.get("kind", None))
    if kind not in KINDS:
        raise DeephashError(f"{path}: unknown artifact kind {kind!r} (expected one of {', '.join(KINDS)})")
    header = {key: _decode(attrs[key]) for key in attrs}
    header["format_version"] = version
    header["config"] = _json_attr(attrs, "config", {})
    header["versions"] = _json_attr(attrs, "versions", {})
    return header


def read_artifact(path: str | os.PathLike[str], *, expect_kinds: Iterable[str] | None = None,
                  splits: Iterable[str] | None = None) -> Artifact:
    """Load and validate an artifact.

    ``expect_kinds``: allowed kinds (others raise, naming both). ``splits``: only these splits are
    loaded (default all). Validation: labels/index/data lengths agree, dtypes and shapes as in the
    layout, labels within class_names, features finite, codes' byte width matches ``bits``.
    """
    path = str(path)
    with open_checked(path) as handle:
        header = _check_header(handle, path)
        kind = header["kind"]
        if expect_kinds is not None:
            expected = tuple(expect_kinds)
            if kind not in expected:
                raise DeephashError(f"{path}: expected a {' or '.join(expected)} artifact, found kind '{kind}'")
        class_names = [_decode(x) for x in handle["class_names"][()]] if "class_names" in handle else []
        artifact = Artifact(path=path, kind=kind, attrs=header, class_names=class_names)
        wanted = list(splits) if splits is not None else [s for s in SPLITS if s in handle]
        for name in wanted:
            if name not in handle:
                present = ", ".join(s for s in SPLITS if s in handle) or "none"
                raise DeephashError(f"{path}: no split '{name}' (splits present: {present})")
            artifact.splits[name] = _read_split(handle[name], f"{path}:/{name}", kind, len(class_names))
        if "model" in handle:
            group = handle["model"]
            artifact.model_attrs = _json_attr(group.attrs, "architecture", {})
            artifact.parameters = {k: v[()] for k, v in group["parameters"].items()} if "parameters" in group else {}
        if "history" in handle:
            artifact.history = _json_attr(handle["history"].attrs, "rows", [])
    if kind == "model" and not artifact.parameters:
        raise DeephashError(f"{path}: model artifact without /model/parameters")
    return artifact


def _read_split(group: h5py.Group, where: str, kind: str, n_classes: int) -> Split:
    for name in ("labels", "index"):
        if name not in group:
            raise DeephashError(f"{where}: missing dataset '{name}'")
    labels = group["labels"][()]
    index = group["index"][()]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DeephashError(f"{where}/labels: expected (n,) int64, found {labels.shape} {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    index = index.astype(np.int64, copy=False)
    if index.shape != labels.shape:
        raise DeephashError(f"{where}: labels has {labels.shape[0]} rows but index has {index.shape[0]}")
    if n_classes and len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DeephashError(f"{where}/labels: values must lie in 0..{n_classes - 1}, found "
                            f"{labels.min()}..{labels.max()}")
    paths = _read_paths(group, where, len(labels))
    if kind == "codes":
        if "codes" not in group:
            raise DeephashError(f"{where}: expected dataset 'codes' in a codes artifact, found "
                                f"{', '.join(group) or 'nothing'}")
        dataset = group["codes"]
        bits = int(dataset.attrs.get("bits", -1))
        codes = dataset[()]
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise DeephashError(f"{where}/codes: expected (n, ceil(bits/8)) uint8, found {codes.shape} {codes.dtype}")
        if bits <= 0 or codes.shape[1] != (bits + 7) // 8:
            raise DeephashError(f"{where}/codes: attribute bits={bits} does not fit {codes.shape[1]} bytes per code")
        if codes.shape[0] != labels.shape[0]:
            raise DeephashError(f"{where}: labels has {labels.shape[0]} rows but codes has {codes.shape[0]}")
        return Split(labels=labels, index=index, codes=codes, bits=bits, paths=paths)
    if kind in ("features", "embeddings"):
        if "features" not in group:
            raise DeephashError(f"{where}: expected dataset 'features' in a {kind} artifact, found "
                                f"{', '.join(group) or 'nothing'}")
        features = group["features"][()]
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            raise DeephashError(f"{where}/features: expected (n, d) float32, found {features.shape} {features.dtype}")
        if features.shape[0] != labels.shape[0]:
            raise DeephashError(f"{where}: labels has {labels.shape[0]} rows but features has {features.shape[0]}")
        features = features.astype(np.float32, copy=False)
        finite = np.isfinite(features)
        if not finite.all():
            bad_rows = np.flatnonzero(~finite.all(axis=1))
            raise DeephashError(f"{where}/features: {len(bad_rows)} rows hold NaN or infinite values "
                                f"(first at row {bad_rows[0]})")
        return Split(labels=labels, index=index, features=features, paths=paths)
    raise DeephashError(f"{where}: a {kind} artifact has no splits")


def _read_paths(group: h5py.Group, where: str, n: int) -> np.ndarray | None:
    """``paths`` of a split or of an index's items: (n,) str object array, None when absent (format 1)."""
    if "paths" not in group:
        return None
    dataset = group["paths"]
    if dataset.ndim != 1 or dataset.shape[0] != n or dataset.dtype.kind not in ("O", "S", "U"):
        raise DeephashError(f"{where}/paths: expected ({n},) UTF-8 strings, found {dataset.shape} {dataset.dtype}")
    return np.asarray([_decode(p) for p in dataset[()]], dtype=object)


@dataclass
class IndexItems:
    """The items of an index, in faiss id order: labels, dataset index, names (paths), source (position in the
    index's ``sources`` list) and, unless left out, their vectors (codes with ``bits``, or float features)."""

    labels: np.ndarray
    index: np.ndarray
    paths: np.ndarray
    source: np.ndarray
    vectors: np.ndarray | None = None
    bits: int | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class IndexArtifact:
    """A loaded ``index`` artifact: header, class names, faiss spec and bytes, encoder, sources and items."""

    path: str
    attrs: dict[str, Any]
    class_names: list[str]
    spec: dict[str, Any]
    serialized: np.ndarray
    encoder: dict[str, Any]
    sources: list[dict[str, Any]]
    items: IndexItems


def read_index(path: str | os.PathLike[str]) -> IndexArtifact:
    """Load and validate an ``index`` artifact (``deephash index``); other kinds are a DeephashError."""
    path = str(path)
    with open_checked(path) as handle:
        header = _check_header(handle, path)
        if header["kind"] != "index":
            raise DeephashError(f"{path}: expected an index artifact (deephash index), found kind '{header['kind']}'")
        for name in ("index", "items", "class_names"):
            if name not in handle:
                raise DeephashError(f"{path}: index artifact without /{name}")
        group, items = handle["index"], handle["items"]
        if "faiss" not in group:
            raise DeephashError(f"{path}:/index: missing dataset 'faiss' (the serialized faiss index)")
        serialized = group["faiss"]
        if serialized.dtype != np.uint8 or serialized.ndim != 1:
            raise DeephashError(f"{path}:/index/faiss: expected (nbytes,) uint8, found {serialized.shape} "
                                f"{serialized.dtype}")
        spec = _json_attr(group.attrs, "spec", None)
        if not isinstance(spec, dict):
            raise DeephashError(f"{path}:/index: attribute 'spec' is missing or not a JSON object")
        class_names = [_decode(x) for x in handle["class_names"][()]]
        for name in ("labels", "index", "source"):
            if name not in items:
                raise DeephashError(f"{path}:/items: missing dataset '{name}'")
        labels = items["labels"][()].astype(np.int64)
        n = int(labels.shape[0])
        index = items["index"][()].astype(np.int64)
        source = items["source"][()].astype(np.int64)
        if index.shape != (n,) or source.shape != (n,):
            raise DeephashError(f"{path}:/items: labels has {n} rows but index has {index.shape[0]} and source "
                                f"{source.shape[0]}")
        paths = _read_paths(items, f"{path}:/items", n)
        vectors, bits = None, None
        if "vectors" in items:
            dataset = items["vectors"]
            vectors = dataset[()]
            bits = int(dataset.attrs["bits"]) if "bits" in dataset.attrs else None
            if vectors.ndim != 2 or vectors.shape[0] != n:
                raise DeephashError(f"{path}:/items/vectors: expected ({n}, width), found {vectors.shape}")
        sources = _json_attr(handle.attrs, "sources", [])
        encoder = _json_attr(handle.attrs, "encoder", {})
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise DeephashError(f"{path}: attribute 'sources' is not a JSON list of objects")
        if n and (source.min() < 0 or source.max() >= len(sources)):
            raise DeephashError(f"{path}:/items/source: values must lie in 0..{len(sources) - 1}, found "
                                f"{source.min()}..{source.max()}")
        if n and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DeephashError(f"{path}:/items/labels: values must lie in 0..{len(class_names) - 1}")
        return IndexArtifact(path=path, attrs=header, class_names=class_names, spec=spec,
                             serialized=serialized[()], encoder=encoder if isinstance(encoder, dict) else {},
                             sources=sources,
                             items=IndexItems(labels, index, paths if paths is not None else
                                              np.asarray([f"#{i}" for i in index.tolist()], dtype=object),
                                              source, vectors, bits))


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``/checkpoint`` group of a model artifact: (state JSON, {dataset path: array}).

    Kept out of ``read_artifact`` because checkpoints are large (model + optimizer state) and only
    ``--resume`` needs them. A model artifact without a checkpoint is a DeephashError.
    """
    path = str(path)
    with open_checked(path) as handle:
        _check_header(handle, path)
        if "checkpoint" not in handle:
            raise DeephashError(f"{path}: holds no training checkpoint (only `deephash finetune` writes one)")
        group = handle["checkpoint"]
        arrays: dict[str, np.ndarray] = {}
        group.visititems(lambda name, item: arrays.__setitem__(name, np.asarray(item[()]))
                         if isinstance(item, h5py.Dataset) else None)
        return _json_attr(group.attrs, "state", {}), arrays


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe an artifact without loading its arrays: the validated header (``read_header``) plus
    ``class_names``, ``splits`` ({name: {rows, shape, dtype, bits}}), ``history`` (rows) and ``model``
    (architecture, parameter count). Cheap on large files; used by ``info`` and ``report``."""
    path = str(path)
    with open_checked(path) as handle:
        header = _check_header(handle, path)
        summary: dict[str, Any] = {"header": header, "class_names": [], "splits": {}, "history": [], "model": None}
        if "class_names" in handle:
            summary["class_names"] = [_decode(x) for x in handle["class_names"][()]]
        for name in SPLITS:
            if name not in handle:
                continue
            group = handle[name]
            data_name = "codes" if "codes" in group else "features" if "features" in group else None
            if data_name is None or "labels" not in group:
                raise DeephashError(f"{path}:/{name}: expected datasets 'labels' and 'features' or 'codes', found "
                                    f"{', '.join(group) or 'nothing'}")
            dataset = group[data_name]
            summary["splits"][name] = {
                "rows": int(dataset.shape[0]) if dataset.shape else 0, "data": data_name,
                "shape": list(dataset.shape), "dtype": str(dataset.dtype),
                "bits": int(dataset.attrs["bits"]) if "bits" in dataset.attrs else None}
        if "history" in handle:
            summary["history"] = _json_attr(handle["history"].attrs, "rows", [])
        if header["kind"] == "index" and "index" in handle and "items" in handle:
            summary["index"] = {"spec": _json_attr(handle["index"].attrs, "spec", {}),
                                "items": int(handle["items"]["labels"].shape[0]),
                                "bytes": int(handle["index"]["faiss"].shape[0]) if "faiss" in handle["index"] else 0,
                                "encoder": _json_attr(handle.attrs, "encoder", {}),
                                "sources": _json_attr(handle.attrs, "sources", [])}
        if "model" in handle:
            group = handle["model"]
            parameters = group["parameters"] if "parameters" in group else {}
            summary["model"] = {"architecture": _json_attr(group.attrs, "architecture", {}),
                                "parameters": int(sum(int(np.prod(parameters[k].shape)) for k in parameters))}
    return summary
