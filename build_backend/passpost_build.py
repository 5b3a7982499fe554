"""passpost's build backend: setuptools' own, minus the note it prints on every editable install.

pyproject's package-dir installs top-level folders under one namespace (``ingest/`` as
``passpost.ingest``), so setuptools makes an editable install with an import finder and ends it
with an information-only warning ("Editable installation ... folders in your working directory
with the same name as your package"), which pip shows as a warning. Here the folder named like the
package is the package, so the note says nothing to act on; leaving it out keeps
``pip install -e .`` quiet. Every other warning, and everything else, is setuptools' unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 and PEP 660 hooks)
from setuptools.warnings import InformationOnly


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return str(_setuptools.build_editable(wheel_directory, config_settings, metadata_directory))
