"""``passpost new consumer NAME``: a package of its own holding a consumer, its test, its image and its manifests.

What it writes (the files under ``template/``, each ``{{key}}`` filled in, ``__module__`` in a
path replaced by the module's name, ``.tmpl`` dropped):

    NAME/pyproject.toml             the entry point under ``passpost.consumers``, passpost pinned to the
                                    installed version, passpost-dev (its pytest plugin) as the test extra
    NAME/MODULE/consumer.py         the consumer: ``write`` appends failures to a CSV file; how to store
                                    offsets for exactly once, commented
    NAME/tests/test_consumer.py     the consumer against a real broker (the plugin's ``kafka_bootstrap``),
                                    a dead letter included
    NAME/Dockerfile                 the passpost image with the package added
    NAME/k8s/                       a Kustomize component for an overlay of passpost's (dev): the Deployment
                                    hardened as the built-ins are, its ServiceAccount, dead-letter topic and
                                    metrics NetworkPolicy
    NAME/k8s/production/            the component for the production overlay: the above plus a KafkaUser
                                    (SCRAM, least privilege), KEDA scaling on lag and a PodDisruptionBudget

It lives in passpost-dev, not in the runtime: it runs on a developer's machine, never in the image,
and what it writes needs passpost-dev anyway (the test's broker fixture, ``passpost dev --consumer``).
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass
from importlib import metadata, resources, util
from importlib.resources.abc import Traversable
from pathlib import Path

from passpost.errors import ConfigurationError

# A consumer's name becomes a Kubernetes name (passpost-NAME: a DNS-1123 label of at most 63
# characters), a Kafka topic (pass-postbacks.dlq.NAME.v1), a consumer group, an entry point and,
# with "_" for "-", a Python module: lower-case words joined by single hyphens fit all of them.
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
MAX_NAME = 63 - len("passpost-")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class BadName(ConfigurationError):
    """NAME cannot be used; ``str()`` is one line saying why."""


@dataclass(frozen=True)
class Names:
    name: str  # failures-to-csv: the entry point, the consumer's ``name``, the distribution
    module: str  # failures_to_csv
    class_name: str  # FailuresToCsv

    @classmethod
    def of(cls, name: str) -> Names:
        module = name.replace("-", "_")
        return cls(name, module, "".join(part.capitalize() for part in name.split("-")))


def check(name: str, directory: Path) -> Names:
    """The names derived from ``name``, or ``BadName`` saying why it cannot be a new consumer in ``directory``."""
    from passpost.consumers.runtime import registered

    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise BadName(f"consumer name {name!r}: use lower-case letters, digits and single hyphens, starting with a "
                      f"letter, at most {MAX_NAME} characters (it names a Kubernetes Deployment, a Kafka topic and "
                      "an entry point)")
    names = Names.of(name)
    if name in registered():
        raise BadName(f"consumer name {name!r}: a consumer of that name is already registered (`passpost consume "
                      f"{name}` runs it); choose another")
    if keyword.iskeyword(names.module):
        raise BadName(f"consumer name {name!r}: its module {names.module!r} would be a Python keyword; choose another")
    if names.module in sys.stdlib_module_names or util.find_spec(names.module) is not None:
        raise BadName(f"consumer name {name!r}: its module {names.module!r} would hide the module of that name "
                      "already importable here; choose another")
    if directory.exists():
        raise BadName(f"{directory}: already exists; choose another directory (--dir) or name")
    return names


def files(names: Names) -> dict[Path, str]:
    """Each file of the package, relative to its directory, with its text."""
    values = {
        "name": names.name, "module": names.module, "class_name": names.class_name,
        "passpost_version": metadata.version("passpost"), "passpost_dev_version": metadata.version("passpost-dev"),
    }

    def fill(text: str, where: str) -> str:
        def value(match: re.Match[str]) -> str:
            if match.group(1) not in values:
                raise KeyError(f"{where}: no value for {{{{{match.group(1)}}}}}")
            return values[match.group(1)]

        return PLACEHOLDER.sub(value, text)

    out: dict[Path, str] = {}

    def walk(folder: Traversable, relative: Path) -> None:
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
            if entry.name == "__pycache__":
                continue
            target = relative / entry.name.replace("__module__", names.module).removesuffix(".tmpl")
            if entry.is_dir():
                walk(entry, target)
            else:
                out[target] = fill(entry.read_text(), str(target))

    walk(resources.files(__name__).joinpath("template"), Path())
    return out


def new_consumer(name: str, directory: Path | None = None) -> Path:
    """Write the package of consumer ``name`` into ``directory`` (default ``./NAME``); return the directory."""
    directory = Path(name) if directory is None else directory
    names = check(name, directory)
    contents = files(names)  # every file rendered before the first is written: a bad template writes nothing
    for relative, text in contents.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory
