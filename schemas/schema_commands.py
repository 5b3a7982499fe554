"""``passpost schema check`` and ``passpost schema register``."""

from __future__ import annotations

from collections.abc import Callable

from . import evolution
from .registry import COMPATIBILITY, RegistryClient, RegistryConfig, schema_text, subject_for
from .registry import register as register_schema
from .registry_errors import RegistryRefused


async def check(settings: object, say: Callable[[str], None]) -> bool:
    """Print what was checked; False when any check found an incompatibility. A registry that does not
    answer raises RegistryUnavailable (one line, exit 1): a check that could not run has not passed."""
    versions = evolution.history()
    found = evolution.problems(versions=versions)
    for line in found:
        say(f"schemas/history: {line}")
    if not found:
        say(f"schemas/history: compatible both ways with {', '.join(v.name for v in versions)} "
            "(fastavro schema resolution)")
    if not evolution.kept(versions=versions):
        say(f"schemas/history: the current schema is not kept yet; copy it to "
            f"schemas/history/pass_postback.v{versions[-1].number + 1 if versions else 1}.avsc when it is released")
    config = RegistryConfig.from_settings(settings)
    if config is None:
        say("registry: not asked (PASSPOST_SCHEMA_REGISTRY_URL is not set)")
        return not found
    subject = subject_for(settings.events_topic)  # type: ignore[attr-defined]
    async with RegistryClient(config) as client:
        if not await client.versions(subject):
            say(f"registry: subject {subject} has no version yet at {config.shown_url}: nothing to be "
                "incompatible with")
            return not found
        compatible, reasons = await client.is_compatible(subject, schema_text())
        level = await client.compatibility(subject)
    say(f"registry: {'compatible' if compatible else 'NOT compatible'} with subject {subject} "
        f"(level {level or 'the registry default'}) at {config.shown_url}" + (": " + "; ".join(reasons)
                                                                             if reasons else ""))
    if level != COMPATIBILITY:
        say(f"registry: warning: subject {subject} is at {level or 'the registry default'}, passpost expects "
            f"{COMPATIBILITY} (`passpost schema register` sets it)")
    return compatible and not found


async def register(settings: object) -> str:
    """Register the schema, setting the subject's level; the line to print."""
    config = RegistryConfig.from_settings(settings)
    if config is None:
        raise RegistryRefused("PASSPOST_SCHEMA_REGISTRY_URL is not set: no registry to register with")
    subject = subject_for(settings.events_topic)  # type: ignore[attr-defined]
    async with RegistryClient(config) as client:
        schema_id = await register_schema(client, subject, schema_text())
    return f"registered under {subject} at {config.shown_url}: schema id {schema_id}, compatibility {COMPATIBILITY}"
