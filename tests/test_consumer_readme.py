"""The README's example consumer and its test, run as printed, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_readme_example_consumer_and_its_test_work(kafka_bootstrap: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    section = README[README.index("## Consumers"):README.index("### The analytics store")]
    consumer_code, test_code = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    namespace: dict[str, object] = {}
    exec(compile(consumer_code, "README consumer", "exec"), namespace)  # noqa: S102 (our own README)
    exec(compile(test_code, "README test", "exec"), namespace)  # noqa: S102
    namespace["test_failures_to_csv"](kafka_bootstrap, tmp_path, monkeypatch)  # type: ignore[operator]
