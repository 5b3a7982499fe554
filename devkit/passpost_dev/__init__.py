"""passpost's development tooling: what `make dev`, `make test` and the benchmarks need and the image does not.

- ``passpost_dev.kafka``: a real single-node Kafka broker run from Kafka's own jars (``LocalKafka``);
  ``python -m passpost_dev.kafka fetch`` caches the jars, ``... run`` keeps a broker up.
- ``passpost_dev.dev``: what ``passpost dev`` runs (the whole pipeline on one machine).
- ``passpost_dev.ports``, ``passpost_dev.processes``, ``passpost_dev.cache``: a free loopback port, stopping a
  child process, and the download cache with its lock.
- ``passpost_dev.pytest_plugin``: the ``kafka_bootstrap`` and ``local_kafka`` fixtures (a pytest11 plugin).

It is a distribution of its own (``passpost-dev``, ``devkit/``), installed beside passpost by ``make dev`` and
``make test``; the passpost wheel, hence the image, does not carry it.
"""
