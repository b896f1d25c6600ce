"""Publishing = store write, then an adapter event on the ``adapters`` topic (keyed by scope).

The event says "serve this version of this scope": a new version, a rollback or a pin all
announce the same way, so the compacted topic's last event per scope is what a starting
replica serves. The event is flushed (durable) before these functions return.
"""

from __future__ import annotations

from pathlib import Path

from serving.adapters.store import AdapterStore, Manifest
from streams.codec import ADAPTERS
from streams.events import AdapterPublishedEvent
from streams.log import EventLog


def announce(event_log: EventLog, store: AdapterStore, manifest: Manifest) -> AdapterPublishedEvent:
    """Tell every replica to serve ``manifest``'s version for its scope."""
    event = AdapterPublishedEvent(
        scope=manifest.scope,
        version=manifest.version,
        path=str(store.path(manifest.scope, manifest.version)),
        sha256=store.manifest_sha256(manifest.scope, manifest.version),
        parent_version=manifest.parent_version,
        base_model=manifest.base_model,
        metrics=manifest.metrics,
    )
    event_log.publish(ADAPTERS, manifest.scope, event)
    event_log.flush()
    return event


def publish_adapter(
    store: AdapterStore,
    event_log: EventLog,
    source_dir: Path,
    scope: str,
    *,
    base_model: Path,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    trained_on: dict[str, int] | None = None,
) -> Manifest:
    """Store ``source_dir`` as the scope's next version and announce it."""
    manifest = store.publish(source_dir, scope, base_model=base_model, parent=parent, metrics=metrics,
                             trained_on=trained_on)
    announce(event_log, store, manifest)
    return manifest
