"""The schema registry's errors, apart so that the CLI can catch them without importing a client."""


class RegistryUnavailable(Exception):
    """The registry did not answer. ``str()`` is one line without credentials."""


class RegistryRefused(RegistryUnavailable):
    """The registry answered, but no: bad credentials, an incompatible schema, a missing subject."""
