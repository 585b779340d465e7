"""The one exception type the CLI turns into a single error line and a non-zero exit."""


class DeephashError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    The CLI prints ``error: <message>`` on stderr and exits with status 2 (1 for
    internal bugs, which keep their traceback with ``--debug``). Library code raises
    this for anything the user can fix: bad files, unknown names, impossible options.
    """
