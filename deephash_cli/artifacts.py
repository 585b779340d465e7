"""The one module that reads and writes deephash HDF5 artifacts.

Layout (format_version 2; version 1 files, which lack ``paths``, are still read; the public contract is
documented in docs/format.md):

    /                       attrs: format="deephash", format_version, kind, created, generator,
                                   command, cwd, config (JSON), versions (JSON),
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
import errno
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import h5py
import numpy as np

from deephash_cli import __version__
from deephash_cli.errors import DeephashError, defer_signals_in, raise_pending

FORMAT = "deephash"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("features", "embeddings", "codes", "model", "index")
SPLITS = ("train", "val", "test", "query", "gallery")  # query/gallery: In-shop's evaluation splits
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
    for name in ("torch", "torchvision", "sklearn", "faiss"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    torch = sys.modules.get("torch")
    if torch is not None:
        # What decides float results beyond the seed: a rerun with another intra-op thread count can differ.
        versions["torch_threads"] = str(torch.get_num_threads())
        versions["torch_deterministic"] = str(torch.are_deterministic_algorithms_enabled()).lower()
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


def printable(text: str | os.PathLike[str]) -> str:
    """``text`` with bytes that are not UTF-8 (kept by Python as surrogate escapes) shown as ``\\xNN``: storable
    in an HDF5 string attribute and printable anywhere."""
    return os.fsencode(os.fspath(text)).decode("utf-8", "backslashreplace")


# The command that artifacts written now record instead of this process's command line (see recorded_command).
_RECORDED_COMMAND: list[str] = []


def command_line() -> str:
    """The command line of this process, shell-quoted, with the program name shortened (bytes that are not
    UTF-8 shown as ``\\xNN``, so the line can always be stored); inside ``recorded_command``, that command."""
    if _RECORDED_COMMAND:
        return printable(_RECORDED_COMMAND[-1])
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return printable(shlex.join(argv))


@contextmanager
def recorded_command(command: str) -> Iterator[None]:
    """Artifacts written inside the block record ``command`` as the command that made them (``--seeds``: each
    seed's outputs record the single-seed command that remakes exactly them)."""
    _RECORDED_COMMAND.append(command)
    try:
        yield
    finally:
        _RECORDED_COMMAND.pop()


def working_directory() -> str:
    """The working directory the recorded command ran in (its relative paths are relative to it); '' when the
    directory no longer exists."""
    try:
        return printable(os.getcwd())
    except OSError:
        return ""


# --------------------------------------------------------------------------- writing


def make_public(path: str | os.PathLike[str]) -> None:
    """Give a temp file the permissions a normally created file would get (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system holding ``folder`` accepts (255 when unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse, before any work is done, an output that cannot be written: an existing one (any directory
    entry, a dangling symbolic link too) unless ``force``, a directory, a missing or unwritable folder, a
    name longer than the file system allows, or a name that is not UTF-8 (artifacts store names as text)."""
    path = Path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DeephashError(f"{printable(path)}: the output name is not valid UTF-8 (artifacts record file names "
                            f"as UTF-8 text); choose another name") from None
    folder = path.parent
    name_bytes, name_max = len(os.fsencode(path.name)), _name_max(folder)
    if name_bytes > name_max:
        raise DeephashError(f"{path}: the file name is {name_bytes} bytes long; the file system allows at most "
                            f"{name_max}")
    if os.path.lexists(path) and not force:
        what = " (a symbolic link to a missing file)" if path.is_symlink() and not path.exists() else ""
        raise DeephashError(f"{path} exists{what}; pass --force to overwrite it")
    if path.is_dir():
        raise DeephashError(f"{path} is a directory, expected an output file path")
    if not folder.exists():
        raise DeephashError(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise DeephashError(f"output folder {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DeephashError(f"output folder {folder} is not writable (permission denied)")


def check_outputs_differ(outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Refuse two options naming the same output file (``{option: path}``; None entries are ignored)."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise DeephashError(f"{seen[key]} and {option} name the same file {path}; give them different paths")
        seen[key] = option


def check_input(path: str | os.PathLike[str]) -> str:
    """Check that an input artifact exists and that its name can be recorded (UTF-8); returns its SHA-256,
    computed now so that a child records the parent as it was read, even if the file changes or vanishes
    while the stage works."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DeephashError(f"{printable(path)}: the input name is not valid UTF-8 (children record their "
                            f"parent's name as UTF-8 text); rename it") from None
    return hash_parent(path)


def hash_parent(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a parent artifact; a parent that is gone or unreadable is a DeephashError naming it."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise DeephashError(f"{display_name(path)}: no such file (the input vanished)") from None
    except IsADirectoryError:
        raise DeephashError(f"{display_name(path)}: is a directory, expected a deephash HDF5 file") from None
    except OSError as err:
        raise DeephashError(f"{display_name(path)}: cannot read it ({err.strerror or err})") from None


_STORAGE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded (no space left)",
                   errno.EFBIG: "file size limit exceeded (ulimit -f, or the file system's largest file)"}


def storage_error(err: BaseException) -> str | None:
    """Why a write failed when the disk is full, a quota is used up or the file size limit is reached (the
    errno of an OSError, or the one HDF5 quotes in its message), else None."""
    code = getattr(err, "errno", None)
    if code not in _STORAGE_ERRORS and isinstance(err, (OSError, RuntimeError)):
        text = str(err)
        match = re.search(r"errno = (\d+)", text)
        code = int(match.group(1)) if match else next(
            (known for known in _STORAGE_ERRORS if os.strerror(known) in text), None)
    return _STORAGE_ERRORS.get(code) if code is not None else None


def _temp_prefix(path: Path) -> str:
    """``.NAME.`` for the temp file next to ``path``, NAME shortened so the temp name (prefix, 8 random
    characters, ``.tmp``) fits the file system's name limit whenever the output name itself does."""
    room = _name_max(path.parent) - len(".") - len(".XXXXXXXX.tmp")
    name = path.name
    while name and len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}."


class _GuardedFile:
    """The temp file as HDF5 writes it (h5py's ``fileobj`` driver), so that a full disk cannot crash the process.

    HDF5 (2.0) does not survive a failed write in some places (closing a dataset, releasing an id): it keeps a
    half-closed object and the interpreter crashes at exit. So a write refused for want of space (ENOSPC,
    EDQUOT, EFBIG: see ``storage_error``) is remembered in ``error`` and its bytes kept in memory instead
    (reads see them), HDF5 never sees a failure, and ``ArtifactWriter`` checks ``error`` after each write and
    throws the file away. Other I/O errors propagate unchanged.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        self._pos = 0
        self._overlay: list[tuple[int, bytes]] = []  # (offset, bytes) written after the first refusal
        self._end = 0  # end of the highest overlay write
        self.error: OSError | None = None

    def _write_at(self, view: memoryview, offset: int) -> int:
        if hasattr(os, "pwrite"):
            return os.pwrite(self._fd, view, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)  # platforms without pwrite (Windows)
        return os.write(self._fd, view)

    def _read_at(self, view: memoryview, offset: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(self._fd, [view], offset)
        os.lseek(self._fd, offset, os.SEEK_SET)
        data = os.read(self._fd, len(view))
        view[:len(data)] = data
        return len(data)

    def _refused(self, err: OSError) -> None:
        if storage_error(err) is None:
            raise err
        if self.error is None:
            self.error = err

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = max(os.fstat(self._fd).st_size, self._end) + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size, done = len(view), 0
        if self.error is None:
            try:
                while done < size:
                    done += self._write_at(view[done:], self._pos + done)
            except OSError as err:
                self._refused(err)
        if done < size:
            self._overlay.append((self._pos + done, bytes(view[done:])))
            self._end = max(self._end, self._pos + size)
        self._pos += size
        return size

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        size, done = len(view), 0
        while done < size:
            count = self._read_at(view[done:], self._pos + done)
            if count == 0:
                break
            done += count
        view[done:] = bytes(size - done)  # past the end of the file: zeros
        for start, data in self._overlay:
            low, high = max(start, self._pos), min(start + len(data), self._pos + size)
            if low < high:
                view[low - self._pos:high - self._pos] = data[low - start:high - start]
        self._pos += size
        return size

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self.seek(0, os.SEEK_END) - self._pos)
        buffer = bytearray(size)
        self.readinto(buffer)
        return bytes(buffer)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as err:
                self._refused(err)
        if self.error is not None:
            self._overlay = [(start, data[:size - start]) for start, data in self._overlay if start < size]
            self._end = min(self._end, size)
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write is a pwrite

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


defer_signals_in(*(getattr(_GuardedFile, name) for name in ("_write_at", "_read_at", "_refused", "seek", "tell", "write",
                                                             "readinto", "read", "truncate", "flush")))


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
        parent_sha256: str | None = None,
        versions: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.class_names = list(class_names) if class_names is not None else None
        self.config = dict(config)
        self.parent = parent
        self.parent_sha256 = parent_sha256  # None: hashed on entering (stages hash it before their work)
        self.force = force
        self.command = command if command is not None else command_line()
        # None: this process's libraries; merge passes the versions its shards were made with.
        self.versions = dict(versions) if versions is not None else None
        self._tmp_path: Path | None = None
        self._guard: _GuardedFile | None = None
        self.file: h5py.File | None = None
        self._splits: dict[str, SplitWriter] = {}

    def __enter__(self) -> "ArtifactWriter":
        check_output(self.path, self.force)
        parent_hash = self.parent_sha256
        if self.parent is not None and parent_hash is None:
            parent_hash = hash_parent(self.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        except OSError as err:
            raise DeephashError(f"{self.path}: cannot create a file in {self.path.parent} "
                                f"({storage_error(err) or err.strerror or err})") from None
        os.close(fd)
        self._tmp_path = Path(tmp)
        try:
            self._guard = _GuardedFile(self._tmp_path)
            self.file = h5py.File(self._guard, "w")
            attrs = self.file.attrs
            attrs["format"] = FORMAT
            attrs["format_version"] = FORMAT_VERSION
            attrs["kind"] = self.kind
            attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            attrs["generator"] = f"deephash {__version__}"
            attrs["command"] = printable(self.command)
            attrs["cwd"] = working_directory()  # rerun: cd there, OMP_NUM_THREADS=<torch_threads>, the command
            attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
            attrs["versions"] = json.dumps(self.versions if self.versions is not None else library_versions(),
                                           sort_keys=True)
            if self.parent is not None:
                attrs["parent"] = printable(parent_reference(self.parent, self.path))
                attrs["parent_sha256"] = parent_hash
            if self.class_names is not None:  # folder names that are not UTF-8 are stored with \xNN escapes
                self.file.create_dataset("class_names", data=np.array([printable(str(c)) for c in self.class_names],
                                                                      dtype=h5py.string_dtype()))
            self.check_storage()
        except BaseException as err:
            self._abandon(err)
            raise
        return self

    def create_split(self, name: str, n: int, *, dim: int | None = None, bits: int | None = None,
                     resizable: bool = False, paths: bool = False) -> "SplitWriter":
        """Create group ``name`` sized for ``n`` items of ``features (n, dim)`` or ``codes`` of ``bits``
        (``paths``: the split also stores each item's name)."""
        assert self.file is not None, "use ArtifactWriter as a context manager"
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        writer = SplitWriter(self.file.create_group(name), n, dim=dim, bits=bits, resizable=resizable, paths=paths,
                             check=self.check_storage)
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
        self.check_storage()

    def write_model(self, architecture: Mapping[str, Any], parameters: Mapping[str, np.ndarray]) -> None:
        """Store a network without pickle: ``architecture`` as JSON, each tensor as a dataset."""
        assert self.file is not None
        group = self.file.require_group("model")
        group.attrs["architecture"] = json.dumps(dict(architecture), sort_keys=True, default=str)
        params = group.create_group("parameters")
        for name, value in parameters.items():
            params.create_dataset(name, data=np.asarray(value))
        self.check_storage()

    def write_checkpoint(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """A training checkpoint under ``/checkpoint``: ``state`` as JSON (attribute ``state``) and each
        array as a dataset named by its key ('/' in a key makes subgroups). No pickle."""
        assert self.file is not None
        group = self.file.require_group("checkpoint")
        group.attrs["state"] = json.dumps(dict(state), sort_keys=True, default=str)
        for name, value in arrays.items():
            group.create_dataset(name, data=np.asarray(value))
        self.check_storage()

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
        self.check_storage()

    def set_attr(self, name: str, value: Any) -> None:
        """A root attribute; dicts and lists are stored as JSON."""
        assert self.file is not None
        self.file.attrs[name] = json.dumps(value, default=float) if isinstance(value, (dict, list)) else value
        self.check_storage()

    def _storage_failure(self, reason: str) -> DeephashError:
        where = "" if display_name(self.path) == str(self.path) else f" (its temporary file in {self.path.parent})"
        return DeephashError(f"{self.path}: write failed{where}: {reason}; nothing was written")

    def check_storage(self) -> None:
        """Raise the DeephashError of a write the disk refused (full, quota, file size limit), if any, or a
        signal deferred while HDF5 was writing (errors.raise_pending)."""
        if self._guard is not None and self._guard.error is not None:
            raise self._storage_failure(storage_error(self._guard.error) or str(self._guard.error))
        raise_pending()

    def _abandon(self, err: BaseException) -> None:
        """Remove the unfinished output; a full disk becomes the one-line storage error (else the caller
        re-raises ``err`` as it is)."""
        self._discard()
        reason = storage_error(err)
        if reason is not None:
            raise self._storage_failure(reason) from None

    def _discard(self) -> None:
        """Close and remove the temp file after a failure (writes it still gets never fail: see _GuardedFile)."""
        if self.file is not None:
            try:
                self.file.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self.file = None
        if self._guard is not None:
            self._guard.close()
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.file is not None and self._tmp_path is not None and self._guard is not None
        refused = self._guard.error
        if exc_type is not None:
            self._discard()
            reason = storage_error(exc) or (storage_error(refused) if refused is not None and
                                            not isinstance(exc, KeyboardInterrupt) else None)
            if reason is not None:
                raise self._storage_failure(reason) from None
            return
        try:
            for name, split in self._splits.items():
                split.finish(name)
            self.file.close()
            self.check_storage()
        except BaseException as err:
            self._abandon(err)
            raise
        self._guard.close()
        try:
            raise_pending()  # a signal that arrived while HDF5 was writing: no output
        except BaseException:
            self._tmp_path.unlink(missing_ok=True)
            raise
        if os.path.lexists(self.path) and not self.force:  # appeared while we worked
            self._tmp_path.unlink(missing_ok=True)
            raise DeephashError(f"{self.path} appeared while writing; pass --force to overwrite it")
        try:
            make_public(self._tmp_path)
            os.replace(self._tmp_path, self.path)
        except BaseException as err:
            self._tmp_path.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise DeephashError(f"{self.path}: cannot move the finished file into place "
                                    f"({storage_error(err) or err.strerror or err})") from None
            raise


class SplitWriter:
    """Appends chunks of (data, labels, index) to one split; checks the final count."""

    def __init__(self, group: h5py.Group, n: int, *, dim: int | None, bits: int | None, resizable: bool,
                 paths: bool = False, check: Callable[[], None] | None = None) -> None:
        if (dim is None) == (bits is None):
            raise ValueError("give exactly one of dim (features) or bits (codes)")
        self.group = group
        self.check = check  # raises once the disk refused a write (ArtifactWriter.check_storage)
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
            self.paths[self.offset:end] = np.asarray([printable(str(p)) for p in paths], dtype=object)
        self.offset = end
        if self.check is not None:
            self.check()

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
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _found(value: Any) -> str:
    """How a stored value looks, for messages that say what was expected and what was found."""
    value = _decode(value)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {bool(value)}"
    if isinstance(value, (int, np.integer)):
        return f"the integer {int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"the number {float(value)!r}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _integer(value: Any, where: str, what: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int when it is a stored integer (not a boolean, float or string) within [low, high]."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DeephashError(f"{where}: {what} must be an integer, found {_found(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"≥ {low}" if high is None else f"in {low}..{high}"
        raise DeephashError(f"{where}: {what} must be an integer {bounds}, found {value}")
    return value


def _json_attr(attrs: h5py.AttributeManager, name: str, default: Any, where: str = "",
               expect: type | None = None) -> Any:
    """Attribute ``name`` parsed as JSON; unparsable text gives ``default``. JSON nested beyond Python's
    recursion limit, or (with ``expect``) of another JSON type, is a DeephashError naming it."""
    if name not in attrs:
        return default
    try:
        value = json.loads(_decode(attrs[name]))
    except RecursionError:
        raise DeephashError(f"{where}: attribute '{name}' holds JSON nested too deeply to read (over "
                            f"{sys.getrecursionlimit()} levels)") from None
    except (TypeError, ValueError):
        return default
    if expect is not None and not isinstance(value, expect):
        raise DeephashError(f"{where}: attribute '{name}' must be a JSON {'object' if expect is dict else 'list'}, "
                            f"found {_found(value)}")
    return value


def _member(group: h5py.Group, name: str, where: str, kind: type, expected: str) -> Any:
    """``group[name]`` when it is a dataset (``kind=h5py.Dataset``) or a group, else a DeephashError."""
    item = group[name]
    if not isinstance(item, kind):
        found = "a group" if isinstance(item, h5py.Group) else "a dataset" if isinstance(item, h5py.Dataset) \
            else f"a {type(item).__name__}"
        raise DeephashError(f"{where}: expected {expected}, found {found}")
    return item


def _read_names(handle: h5py.Group, where: str) -> list[str]:
    """``class_names``: a (c,) dataset of UTF-8 strings."""
    dataset = _member(handle, "class_names", f"{where}:/class_names", h5py.Dataset, "a (c,) dataset of UTF-8 strings")
    if dataset.ndim != 1 or dataset.dtype.kind not in ("O", "S", "U"):
        raise DeephashError(f"{where}:/class_names: expected (c,) UTF-8 strings, found {dataset.shape} {dataset.dtype}")
    names = [_decode(x) for x in dataset[()]]
    bad = next((x for x in names if not isinstance(x, str)), None)
    if bad is not None:
        raise DeephashError(f"{where}:/class_names: expected (c,) UTF-8 strings, found {_found(bad)}")
    return names


def _split_group(handle: h5py.Group, name: str, path: str) -> h5py.Group:
    return _member(handle, name, f"{path}:/{name}", h5py.Group, "a group (a split: labels, index, features or codes)")


def _read_parameters(group: h5py.Group, where: str) -> dict[str, np.ndarray]:
    """``/model/parameters``: one dataset per tensor, no subgroups."""
    if "parameters" not in group:
        return {}
    parameters = _member(group, "parameters", f"{where}/parameters", h5py.Group, "a group of datasets")
    arrays = {}
    for name in parameters:
        dataset = _member(parameters, name, f"{where}/parameters/{name}", h5py.Dataset,
                          "a dataset (one tensor; parameters hold no groups)")
        if dataset.dtype.kind not in ("f", "i", "u", "b"):
            raise DeephashError(f"{where}/parameters/{name}: expected a numeric tensor, found {dataset.dtype}")
        arrays[name] = dataset[()]
    return arrays


# The size fields of a stored head: required (True) or optional.
HEAD_FIELDS = {"in_dim": True, "out_dim": True, "hidden": False}


def check_architecture(architecture: Any, parameters: Mapping[str, np.ndarray], where: str) -> dict[str, Any]:
    """Validate a model's ``architecture`` before anything is built from it: a JSON object; for heads
    (``type`` head, or the ``head`` of a fine-tuned model) string names, positive integer sizes that fit the
    stored parameters (``input_mean`` has ``in_dim`` values), and the optional fields' JSON types."""
    if not isinstance(architecture, dict):
        raise DeephashError(f"{where}: attribute 'architecture' must be a JSON object, found {_found(architecture)}")
    kind = architecture.get("type")
    if kind is not None and not isinstance(kind, str):
        raise DeephashError(f"{where}: architecture field 'type' must be a string, found {_found(kind)}")
    for key, types, expected in (("input", dict, "a JSON object"), ("produces", str, "a string"),
                                 ("backbone", str, "a string"), ("method", str, "a string"), ("loss", str, "a string"),
                                 ("freeze_bn", bool, "true or false")):
        if key in architecture and architecture[key] is not None and not isinstance(architecture[key], types):
            raise DeephashError(f"{where}: architecture field '{key}' must be {expected}, found "
                                f"{_found(architecture[key])}")
    for key in ("bits", "seed", "image_size"):
        if architecture.get(key) is not None:
            _integer(architecture[key], where, f"architecture field '{key}'", low=0)
    if architecture.get("val_fraction") is not None:
        value = architecture["val_fraction"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DeephashError(f"{where}: architecture field 'val_fraction' must be a number in (0, 1), found "
                                f"{_found(value)}")
    for key in ("mean", "std"):
        value = architecture.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != 3 or
                                  not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise DeephashError(f"{where}: architecture field '{key}' must be a list of 3 numbers, found "
                                f"{_found(value)}")
    if kind == "head":
        _check_head(architecture, parameters, where, "")
    elif kind == "finetuned":
        if not isinstance(architecture.get("head"), dict):
            raise DeephashError(f"{where}: architecture field 'head' of a fine-tuned model must be a JSON object, "
                                f"found {_found(architecture.get('head'))}")
        _check_head(architecture["head"], parameters, where, "head.")
    return architecture


def _check_head(head: dict[str, Any], parameters: Mapping[str, np.ndarray], where: str, prefix: str,
                complete: bool = False) -> None:
    """The fields of a head that are present have the right JSON types and fit the stored parameters;
    ``complete``: the fields needed to build it (head, in_dim, out_dim, parameter input_mean) are present."""
    field_name = (lambda key: f"'{prefix}{key}'") if prefix else (lambda key: f"'{key}'")
    for key, expected in (("head", "a string (linear or mlp)"), ("output", "a string (normalized, tanh or raw)")):
        if key in head and not isinstance(head[key], str):
            raise DeephashError(f"{where}: architecture field {field_name(key)} must be {expected}, found "
                                f"{_found(head[key])}")
    if complete and "head" not in head:
        raise DeephashError(f"{where}: architecture lacks field {field_name('head')} (linear or mlp)")
    sizes = {}
    for key, required in HEAD_FIELDS.items():
        if key in head:
            sizes[key] = _integer(head[key], where, f"architecture field {field_name(key)}", low=1)
        elif required and complete:
            raise DeephashError(f"{where}: architecture lacks field {field_name(key)} (a positive integer)")
    mean = parameters.get(f"{prefix}input_mean")
    if mean is None and complete:
        raise DeephashError(f"{where}: parameter '{prefix}input_mean' is missing (the head's input standardisation)")
    if mean is not None and "in_dim" in sizes and tuple(np.shape(mean)) != (sizes["in_dim"],):
        raise DeephashError(f"{where}: architecture field {field_name('in_dim')} is {sizes['in_dim']} but parameter "
                            f"'{prefix}input_mean' has shape {tuple(np.shape(mean))}")
    in_dim, out_dim, hidden = sizes.get("in_dim", 1), sizes.get("out_dim", 1), sizes.get("hidden", 1)
    needed = {"linear": in_dim * out_dim, "mlp": in_dim * hidden + hidden * out_dim}.get(head.get("head"), 0)
    stored = sum(int(np.size(v)) for k, v in parameters.items() if k.startswith(prefix))
    if needed > stored:
        raise DeephashError(f"{where}: architecture ({', '.join(f'{k} {v}' for k, v in sizes.items())}) needs "
                            f"{needed:,} weights but the file stores {stored:,} parameter values")


def check_head(architecture: Mapping[str, Any], parameters: Mapping[str, np.ndarray], where: str) -> None:
    """Before building a head from a model artifact: every field it needs is present, of the right type and
    consistent with the stored parameters (``read_artifact`` already checked the fields that are present)."""
    _check_head(dict(architecture), parameters, where, "", complete=True)


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
    if not isinstance(fmt, str) or fmt != FORMAT:
        shown = repr(fmt) if fmt is None or isinstance(fmt, str) else _found(fmt)
        raise DeephashError(f"{path}: not a deephash artifact (expected attribute format='{FORMAT}', found {shown})")
    if "format_version" not in attrs:
        raise DeephashError(f"{path}: attribute 'format_version' is missing (expected an integer: "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    version = _integer(attrs["format_version"], path, "attribute 'format_version'")
    if version not in READABLE_VERSIONS:
        raise DeephashError(f"{path}: format_version {version} is not supported (this deephash reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    kind = _decode(attrs.get("kind", None))
    if not isinstance(kind, str) or kind not in KINDS:
        shown = repr(kind) if kind is None or isinstance(kind, str) else _found(kind)
        raise DeephashError(f"{path}: unknown artifact kind {shown} (expected one of {', '.join(KINDS)})")
    header = {key: _decode(attrs[key]) for key in attrs}
    header["format_version"] = version
    header["config"] = _json_attr(attrs, "config", {}, path, expect=dict)
    header["versions"] = _json_attr(attrs, "versions", {}, path, expect=dict)
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
        class_names = _read_names(handle, path) if "class_names" in handle else []
        artifact = Artifact(path=path, kind=kind, attrs=header, class_names=class_names)
        wanted = list(splits) if splits is not None else [s for s in SPLITS if s in handle]
        for name in wanted:
            if name not in handle:
                present = ", ".join(s for s in SPLITS if s in handle) or "none"
                raise DeephashError(f"{path}: no split '{name}' (splits present: {present})")
            artifact.splits[name] = _read_split(_split_group(handle, name, path), f"{path}:/{name}", kind,
                                                len(class_names))
        if "model" in handle:
            group = _member(handle, "model", f"{path}:/model", h5py.Group, "a group (architecture and parameters)")
            artifact.parameters = _read_parameters(group, f"{path}:/model")
            artifact.model_attrs = check_architecture(_json_attr(group.attrs, "architecture", {}, f"{path}:/model"),
                                                      artifact.parameters, f"{path}:/model")
        if "history" in handle:
            artifact.history = _json_attr(handle["history"].attrs, "rows", [], f"{path}:/history", expect=list)
    if kind == "model" and not artifact.parameters:
        raise DeephashError(f"{path}: model artifact without /model/parameters")
    return artifact


def _read_split(group: h5py.Group, where: str, kind: str, n_classes: int) -> Split:
    for name in ("labels", "index"):
        if name not in group:
            raise DeephashError(f"{where}: missing dataset '{name}'")
    labels = _member(group, "labels", f"{where}/labels", h5py.Dataset, "an (n,) int64 dataset")[()]
    index = _member(group, "index", f"{where}/index", h5py.Dataset, "an (n,) int64 dataset")[()]
    for name, array in (("labels", labels), ("index", index)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise DeephashError(f"{where}/{name}: expected (n,) int64, found {array.shape} {array.dtype}")
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
        dataset = _member(group, "codes", f"{where}/codes", h5py.Dataset, "an (n, ceil(bits/8)) uint8 dataset")
        if "bits" not in dataset.attrs:
            raise DeephashError(f"{where}/codes: attribute 'bits' is missing (the code length)")
        bits = _integer(dataset.attrs["bits"], f"{where}/codes", "attribute 'bits'")
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
        features = _member(group, "features", f"{where}/features", h5py.Dataset, "an (n, d) float32 dataset")[()]
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            raise DeephashError(f"{where}/features: expected (n, d) float32, found {features.shape} {features.dtype}")
        if features.shape[0] != labels.shape[0]:
            raise DeephashError(f"{where}: labels has {labels.shape[0]} rows but features has {features.shape[0]}")
        if features.dtype != np.float32:  # e.g. float64 written by another tool: values beyond float32 are errors
            with np.errstate(over="ignore", invalid="ignore"):
                narrowed = features.astype(np.float32)
            overflow = np.isfinite(features) & ~np.isfinite(narrowed)
            if overflow.any():
                bad_rows = np.flatnonzero(overflow.any(axis=1))
                raise DeephashError(f"{where}/features: {len(bad_rows)} rows hold values beyond float32's range "
                                    f"(±3.4e38; first at row {bad_rows[0]}, {features.dtype})")
            features = narrowed
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
    dataset = _member(group, "paths", f"{where}/paths", h5py.Dataset, f"an ({n},) dataset of UTF-8 strings")
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

    def take(self, order: np.ndarray) -> "IndexItems":
        """The items in ``order`` (positions into these items): every per-item field reordered together."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return IndexItems(**{name: value[order] if isinstance(value, np.ndarray) else value
                             for name, value in values.items()})


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
        group = _member(handle, "index", f"{path}:/index", h5py.Group, "a group (spec and the faiss index)")
        items = _member(handle, "items", f"{path}:/items", h5py.Group, "a group (the indexed items)")
        if "faiss" not in group:
            raise DeephashError(f"{path}:/index: missing dataset 'faiss' (the serialized faiss index)")
        serialized = _member(group, "faiss", f"{path}:/index/faiss", h5py.Dataset, "an (nbytes,) uint8 dataset")
        if serialized.dtype != np.uint8 or serialized.ndim != 1:
            raise DeephashError(f"{path}:/index/faiss: expected (nbytes,) uint8, found {serialized.shape} "
                                f"{serialized.dtype}")
        spec = _json_attr(group.attrs, "spec", None, f"{path}:/index")
        if not isinstance(spec, dict):
            raise DeephashError(f"{path}:/index: attribute 'spec' is missing or not a JSON object")
        class_names = _read_names(handle, path)
        for name in ("labels", "index", "source"):
            if name not in items:
                raise DeephashError(f"{path}:/items: missing dataset '{name}'")
        columns = {}
        for name in ("labels", "index", "source"):
            array = _member(items, name, f"{path}:/items/{name}", h5py.Dataset, "an (n,) integer dataset")[()]
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise DeephashError(f"{path}:/items/{name}: expected (n,) integers, found {array.shape} {array.dtype}")
            columns[name] = array.astype(np.int64)
        labels, index, source = columns["labels"], columns["index"], columns["source"]
        n = int(labels.shape[0])
        if index.shape != (n,) or source.shape != (n,):
            raise DeephashError(f"{path}:/items: labels has {n} rows but index has {index.shape[0]} and source "
                                f"{source.shape[0]}")
        paths = _read_paths(items, f"{path}:/items", n)
        vectors, bits = None, None
        if "vectors" in items:
            dataset = _member(items, "vectors", f"{path}:/items/vectors", h5py.Dataset, "an (n, width) dataset")
            vectors = dataset[()]
            bits = _integer(dataset.attrs["bits"], f"{path}:/items/vectors", "attribute 'bits'", low=1) \
                if "bits" in dataset.attrs else None
            if vectors.ndim != 2 or vectors.shape[0] != n:
                raise DeephashError(f"{path}:/items/vectors: expected ({n}, width), found {vectors.shape}")
        sources = _json_attr(handle.attrs, "sources", [], path)
        encoder = _json_attr(handle.attrs, "encoder", {}, path)
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
            summary["class_names"] = _read_names(handle, path)
        for name in SPLITS:
            if name not in handle:
                continue
            group = _split_group(handle, name, path)
            data_name = "codes" if "codes" in group else "features" if "features" in group else None
            if data_name is None or "labels" not in group:
                raise DeephashError(f"{path}:/{name}: expected datasets 'labels' and 'features' or 'codes', found "
                                    f"{', '.join(group) or 'nothing'}")
            dataset = _member(group, data_name, f"{path}:/{name}/{data_name}", h5py.Dataset, "a dataset")
            bits = dataset.attrs["bits"] if "bits" in dataset.attrs else None
            summary["splits"][name] = {
                "rows": int(dataset.shape[0]) if dataset.shape else 0, "data": data_name,
                "shape": list(dataset.shape), "dtype": str(dataset.dtype),
                "bits": None if bits is None else _integer(bits, f"{path}:/{name}/{data_name}", "attribute 'bits'")}
        if "history" in handle:
            summary["history"] = _json_attr(handle["history"].attrs, "rows", [], f"{path}:/history", expect=list)
        if header["kind"] == "index" and "index" in handle and "items" in handle:
            summary["index"] = {"spec": _json_attr(handle["index"].attrs, "spec", {}, f"{path}:/index", expect=dict),
                                "items": int(handle["items"]["labels"].shape[0]),
                                "bytes": int(handle["index"]["faiss"].shape[0]) if "faiss" in handle["index"] else 0,
                                "encoder": _json_attr(handle.attrs, "encoder", {}, path, expect=dict),
                                "sources": _json_attr(handle.attrs, "sources", [], path, expect=list)}
        if "model" in handle:
            group = _member(handle, "model", f"{path}:/model", h5py.Group, "a group (architecture and parameters)")
            count = 0
            if "parameters" in group:
                parameters = _member(group, "parameters", f"{path}:/model/parameters", h5py.Group,
                                     "a group of datasets")
                for key in parameters:
                    dataset = _member(parameters, key, f"{path}:/model/parameters/{key}", h5py.Dataset,
                                      "a dataset (one tensor; parameters hold no groups)")
                    count += int(np.prod(dataset.shape))
            summary["model"] = {"architecture": _json_attr(group.attrs, "architecture", {}, f"{path}:/model",
                                                           expect=dict),
                                "parameters": count}
    return summary
