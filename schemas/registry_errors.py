"""The schema registry's errors, apart so that the CLI can catch them without importing a client."""

from passpost.errors import PasspostError


class RegistryUnavailable(PasspostError):
    """The registry did not answer (one line without credentials, exit status 1)."""


class RegistryRefused(RegistryUnavailable):
    """The registry answered, but no: bad credentials, an incompatible schema, a missing subject."""
