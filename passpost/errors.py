"""The one base of the errors a user can act on.

Raise a ``PasspostError`` (or a subclass) where the problem is found, with a ``str()`` of one
line naming it (the setting, the file, the service; never a secret). The CLI catches it once
(``passpost/cli.py``), prints that line and exits with the error's ``exit_code``: 2 for a bad
setting or argument, 1 for an environment that does not work (a service unavailable, a port
taken). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PasspostError(Exception):
    """A problem a user can act on; ``str()`` is one line naming it."""

    exit_code = 1


class ConfigurationError(PasspostError):
    """A setting, argument or configuration file passpost cannot use."""

    exit_code = 2


def one_line(error: BaseException) -> str:
    """An error's text on one line (drivers' messages span several), else its type's name."""
    return " ".join(str(error).split()) or type(error).__name__


def describe_error(error: BaseException) -> str:
    """``one_line``, led by the error's type where its text does not name it: for log lines about
    errors from libraries, whose text alone ("timed out") would not say what failed."""
    name = type(error).__name__
    text = one_line(error)
    if text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
