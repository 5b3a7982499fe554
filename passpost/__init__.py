"""passpost: Skycore pass postbacks into Kafka, and consumers that make use of them."""

from importlib.metadata import version

# pyproject.toml is the one place the version is written.
__version__ = version("passpost")
