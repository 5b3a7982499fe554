"""passpost.consumers: the consumer runtime and the built-in consumers (see issue #3)."""
