"""Why a consumer cannot run at all (as opposed to a batch the sink refused, which is retried)."""


class CannotRun(Exception):
    """The consumer cannot run in this environment; ``str()`` is one line naming why (exit status 1)."""
