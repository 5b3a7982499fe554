"""The ingress's paths, named once: the app routes them, the request log sorts them."""

from typing import Final

POSTBACK_PATH: Final = "/postbacks/passes"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

# Probes and scrapes: counted in the metrics, not written to the access log.
QUIET_PATHS: Final = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
ALL_PATHS: Final = frozenset({POSTBACK_PATH, *QUIET_PATHS})
