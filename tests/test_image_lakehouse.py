"""deploy/Dockerfile with the lakehouse extra (``--build-arg PASSPOST_EXTRAS=lakehouse``), built with podman
and guarded like the default image (tests/test_image.py): its size, and that what the extra brings runs
under the manifests' constraints."""

from __future__ import annotations

import pytest

from tests.podman_fixtures import image_size
from tests.test_image import run_in

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

# PyArrow (Parquet, S3), pyiceberg-core and SQLAlchemy on top of the default image (237 MB): 497 MB when it
# was added (2026-12-04). A regression guard above that, not a target.
MAX_LAKEHOUSE_IMAGE_MB = 550


def test_lakehouse_image_is_guarded_in_size(passpost_lakehouse_image: str) -> None:
    size = image_size(passpost_lakehouse_image)
    assert size < MAX_LAKEHOUSE_IMAGE_MB * 1_000_000, f"{size / 1e6:.0f} MB"


def test_the_extra_imports_and_the_commands_answer_in_the_image(passpost_lakehouse_image: str) -> None:
    output = run_in(passpost_lakehouse_image, "python", "-c",
                    "import pyiceberg, pyiceberg_core, pyarrow, sqlalchemy, pyiceberg.catalog.sql; print('ok')")
    assert output.strip().endswith("ok"), output
    # No catalog configured: one line naming the setting (the extra is there, or it would name the extra).
    output = run_in(passpost_lakehouse_image, "passpost", "lakehouse", "maintain", check=False)
    assert "PASSPOST_ICEBERG_CATALOG_URI" in output and "passpost[lakehouse]" not in output, output
