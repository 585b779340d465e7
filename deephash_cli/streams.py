"""Artifacts over pipes: ``-`` as an input path reads stdin, ``-o -`` streams the output to stdout.

HDF5 needs random access, so a streamed input is spooled to a temporary file first (then read
and validated like any file), and a streamed output is written to a temporary file as usual
and copied to stdout's binary buffer once complete. Every command uses one ``StreamSession``::

    with StreamSession() as io:
        features = io.input(features)                       # '-' -> spooled file
        out = io.output(output, lambda: default_path)       # '-' -> temp file, None -> default
        run_stage(features, out)
        io.publish(out)                                     # streamed: bytes to stdout; else False

Errors raised inside the session that mention a spool or temp path are rephrased to name
``stdin``/``stdout``. Temporary files are removed on success, error and broken pipes. While an
output is streamed, Python-level prints to stdout are redirected to stderr, so nothing but the
artifact's bytes reaches the pipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from deephash_cli import artifacts
from deephash_cli.errors import DeephashError

STREAM = "-"
CHUNK_BYTES = 1 << 20


def is_stream(path: Optional[os.PathLike[str] | str]) -> bool:
    """True when ``path`` is the stream marker ``-``."""
    return path is not None and str(path) == STREAM


class StreamSession:
    """Spools ``-`` inputs from stdin and streams ``-`` outputs to stdout for one command."""

    def __init__(self, stdin=None, stdout=None) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._folder: Optional[Path] = None
        self._spool: Optional[Path] = None
        self._spool_sha256: Optional[str] = None
        self._outputs: set[Path] = set()
        self._redirect: Optional[contextlib.ExitStack] = None
        self._real_stdout = None

    # ------------------------------------------------------------------ context

    def __enter__(self) -> "StreamSession":
        self._real_stdout = self._stdout if self._stdout is not None else sys.stdout
        self._redirect = contextlib.ExitStack()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._redirect is not None:
                self._redirect.close()
        finally:
            self._cleanup()
        if isinstance(exc, DeephashError):
            message = self._rephrase(str(exc))
            if message != str(exc):
                raise DeephashError(message) from None
        return False

    def _temp_folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="deephash-stream-"))
        return self._folder

    def _cleanup(self) -> None:
        for path in [self._spool, *self._outputs]:
            if path is not None:
                artifacts.set_display_name(path, None)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _rephrase(self, message: str) -> str:
        if self._spool is not None:
            message = message.replace(str(self._spool), "stdin")
        for path in self._outputs:
            message = message.replace(str(path), "stdout")
        return message

    # ------------------------------------------------------------------ inputs

    def input(self, path: Path) -> Path:
        """The file to read for input ``path``: itself, or for ``-`` stdin spooled to a temp file and
        checked to be a deephash artifact (``stdin: not an HDF5 file ...`` otherwise)."""
        if not is_stream(path):
            return path
        if self._spool is not None:
            raise DeephashError("stdin can feed only one input ('-' given twice)")
        source = self._stdin if self._stdin is not None else sys.stdin
        if hasattr(source, "isatty") and source.isatty():
            raise DeephashError("stdin is a terminal; pipe an artifact into '-' (e.g. deephash extract ... -o - | "
                                "deephash train-triplet -)")
        binary = getattr(source, "buffer", source)
        spool = self._temp_folder() / "stdin.h5"
        digest = hashlib.sha256()
        size = 0
        self._spool = spool  # removed with the folder, whatever happens next
        try:
            with open(spool, "wb") as handle:
                for block in iter(lambda: binary.read(CHUNK_BYTES), b""):
                    digest.update(block)
                    handle.write(block)
                    size += len(block)
        except OSError as err:
            reason = artifacts.storage_error(err)
            if reason is None:
                raise
            raise DeephashError(f"stdin: cannot spool it to a temporary file in {spool.parent}: {reason}") from None
        self._spool_sha256 = digest.hexdigest()
        artifacts.set_display_name(spool, STREAM)
        if size == 0:
            raise DeephashError("stdin: empty (expected a deephash artifact streamed on stdin)")
        artifacts.read_header(spool)  # not HDF5 / not deephash / wrong version: named as stdin on exit
        return spool

    def name(self, path: Path) -> str:
        """A file name for deriving default outputs: ``path.name``, or ``stdin-<sha256[:8]>.h5`` for ``-``."""
        if is_stream(path) or (self._spool is not None and Path(path) == self._spool):
            if self._spool_sha256 is None:
                raise DeephashError("stdin has not been read yet")
            return f"stdin-{self._spool_sha256[:8]}.h5"
        return Path(path).name

    def stem(self, path: Path) -> str:
        """``name(path)`` without its last suffix (``stdin-<sha256[:8]>`` for ``-``)."""
        return Path(self.name(path)).stem

    # ------------------------------------------------------------------ outputs

    def output(self, path: Optional[Path], default: Callable[[], Path], suffix: str = ".h5") -> Path:
        """The file to write for output ``path``: itself, ``default()`` when None, or for ``-`` a temp file
        that ``publish`` copies to stdout. Only one output per command may be streamed."""
        if path is None:
            return default()
        if not is_stream(path):
            return path
        if self._outputs:
            raise DeephashError("stdout can carry only one output ('-' given for two outputs)")
        if hasattr(self._real_stdout, "isatty") and self._real_stdout.isatty():
            raise DeephashError("refusing to write a binary artifact to a terminal; pipe or redirect stdout "
                                "(or give -o FILE)")
        target = self._temp_folder() / f"stdout{suffix}"
        self._outputs.add(target)
        artifacts.set_display_name(target, STREAM)
        assert self._redirect is not None
        self._redirect.enter_context(contextlib.redirect_stdout(sys.stderr))  # keep the pipe clean
        return target

    def is_streamed(self, path: Path) -> bool:
        """True when ``path`` is a temp output that ``publish`` streams to stdout."""
        return Path(path) in self._outputs

    def publish(self, path: Path) -> bool:
        """Copy a streamed output's bytes to stdout and return True; False for an ordinary output file.

        A closed pipe (the reader quit) is a DeephashError; fd 1 is then pointed at /dev/null so the
        interpreter's final flush cannot print a second error.
        """
        if not self.is_streamed(path):
            return False
        stdout = self._real_stdout
        try:
            stdout.flush()
            binary = getattr(stdout, "buffer", stdout)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    binary.write(block)
            binary.flush()
        except BrokenPipeError:
            _silence_stdout(stdout)
            raise DeephashError("stdout: broken pipe, the reading command exited before the artifact was "
                                "fully written") from None
        return True


def _silence_stdout(stdout) -> None:
    """After EPIPE, send whatever is still buffered for fd 1 to /dev/null."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
