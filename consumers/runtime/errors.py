"""Why a consumer cannot run at all (as opposed to a batch the sink refused, which is retried)."""

from passpost.errors import PasspostError


class CannotRun(PasspostError):
    """The consumer cannot run in this environment; ``str()`` is one line naming why (exit status 1)."""
