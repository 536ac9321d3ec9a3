"""The two ways a command fails on purpose, each with its exit status."""


class QconvError(Exception):
    """Bad input a user can fix: shown as one line, exit status 2, never a traceback."""

    exit_code = 2


class GateFailed(QconvError):
    """A validation threshold was not met: the report is written, exit status 1 (for CI gating)."""

    exit_code = 1
