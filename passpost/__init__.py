"""passpost: Skycore pass postbacks into Kafka, and consumers that make use of them."""

__version__ = "0.1.0"
