"""The exception types the CLI turns into a single error line and an exit status, and the signal handling
that turns SIGTERM (and SIGINT) into exceptions raised only where they are safe."""

from __future__ import annotations

import signal


class DeephashError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    The CLI prints ``error: <message>`` on stderr and exits with status 2 (1 for
    internal bugs, which keep their traceback with ``--debug``). Library code raises
    this for anything the user can fix: bad files, unknown names, impossible options.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, batch schedulers), raised like Ctrl-C's KeyboardInterrupt so that every
    context manager cleans up (temp files, stdin spools); the CLI exits with status 143 (128 + 15)."""


class _Deferral:
    """Python code that HDF5 calls back for file I/O (``artifacts._GuardedFile``) must not raise: HDF5 does not
    survive an I/O callback failing. A signal handled while such code runs is kept ``pending`` and raised by
    ``raise_pending`` at the next safe point instead."""

    codes: set = set()  # code objects of the I/O callbacks
    pending: type[BaseException] | None = None


def defer_signals_in(*functions) -> None:
    """Register functions that run inside HDF5 callbacks: a signal arriving while they run is deferred."""
    _Deferral.codes.update(function.__code__ for function in functions)


def raise_pending() -> None:
    """Raise a signal that arrived while it could not be raised (a no-op otherwise)."""
    pending, _Deferral.pending = _Deferral.pending, None
    if pending is not None:
        raise pending()


def on_signal(signum: int, frame) -> None:
    """The SIGTERM/SIGINT handler the CLI installs: Terminated or KeyboardInterrupt now, or once safe."""
    exception = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if frame is not None and frame.f_code in _Deferral.codes:
        _Deferral.pending = _Deferral.pending or exception
        return
    raise exception()
