"""The two ways a command fails on purpose, each with its exit status."""


class QconvError(Exception):
    """Bad input a user can fix: shown as one line, exit status 2, never a traceback."""

    exit_code = 2


class GateFailed(QconvError):
    """A validation threshold was not met: the report is written, exit status 1 (for CI gating)."""

    exit_code = 1


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for a one-line error."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def first_sentence(exc: BaseException, limit: int = 140) -> str:
    """Shorter still: the first sentence, for reasons quoted inside a longer message."""
    return one_line(exc, limit=10_000).split(". ")[0][:limit]
