"""What can go wrong around a consumer, by what the runtime does about it.

- ``CannotRun``: the consumer cannot run in this environment at all; ``run()`` raises it and
  the CLI prints its one line (exit status 1).
- ``RetryLater`` (raised by ``Consumer.write``): the sink cannot take the batch now (a server
  down, a timeout); the same batch is offered again after a backoff, nothing is committed.
  ``OSError`` (connection refused or reset, timeouts) counts as ``RetryLater`` too.
- ``PoisonBatch`` (raised by ``Consumer.write``): the sink will never take this batch (its
  data breaks a constraint); the runtime writes its events one by one, and those still refused
  go to the consumer's dead-letter topic (``error: poison``) so the rest moves on.

Any other exception from ``write`` is a bug: the consumer stops without committing the batch
and ``run()`` raises it, traceback and all.
"""

from passpost.errors import PasspostError


class CannotRun(PasspostError):
    """The consumer cannot run in this environment; ``str()`` is one line naming why (exit status 1)."""


class RetryLater(Exception):
    """The sink cannot take the batch now; ``str()`` names why (logged with every retry)."""


class PoisonBatch(Exception):
    """The sink will never take this batch; ``str()`` names why (the dead letters' ``detail``)."""
