"""The schema registry's errors, apart so that they load without a client."""

from passpost.errors import PasspostError


class RegistryUnavailable(PasspostError):
    """The registry did not answer. ``str()`` is one line without credentials."""


class RegistryRefused(RegistryUnavailable):
    """The registry answered, but no: bad credentials, an incompatible schema, a missing subject."""
