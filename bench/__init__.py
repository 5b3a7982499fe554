"""Benchmarks, run from the repository root as modules: ``python -m bench.ingest``, ``python -m bench.consume``,
``python -m bench.alerts`` (see BENCHMARKS.md). As modules they import each other (``bench.ingest``'s
helpers) and the tests' PostgreSQL server (``tests.postgres_fixtures``) by package name, with no
``sys.path`` edits, and the development package's broker, ports and process stops the same way
(``passpost_dev.kafka``, ``passpost_dev.ports``, ``passpost_dev.processes``)."""
