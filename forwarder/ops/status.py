"""GET /status: each sync's state in the spirit of Amplitude's delivery view."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from forwarder.errors import mask
from forwarder.ops.snapshot import Snapshot, SyncSnapshot

RECENT_WINDOW_SECONDS = 300.0


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def sync_status(sync: SyncSnapshot) -> dict[str, Any]:
    stats = sync.delivery
    delivered, dead = stats.recent_counts(RECENT_WINDOW_SECONDS)
    return {
        "name": sync.name,
        "enabled": sync.enabled,
        "api_key": mask(sync.api_key),
        "endpoint": sync.endpoint_base,
        "state": sync.state,
        # Removed or disabled by a reload: no new items, gone once its queue is empty.
        "draining": sync.draining,
        "paused_reason": sync.paused,
        "last_success": _iso(stats.last_success_at),
        "last_error": (
            {"time": _iso(stats.last_error_at), "message": stats.last_error}
            if stats.last_error is not None
            else None
        ),
        "last_5_minutes": {"delivered": delivered, "dead_lettered": dead},
        "totals": {
            "events_routed": sync.route.events_routed,
            "users_routed": sync.route.users_routed,
            "email_changes_routed": sync.route.email_changes_routed,
            "mapped_values_dropped": dict(sync.route.dropped),
            "delivered": dict(stats.delivered),
            "retries": dict(stats.retries),
            "skipped": dict(sync.route.skipped),
        },
        "queue": {"items": sync.queued_items, "bytes": sync.queued_bytes},
        "dead_letters": {kind.value: count for kind, count in stats.dead.items()},
        "dead_letters_unwritten": stats.dead_letters_unwritten,
        # At the cap, new dead items wait unacknowledged until a replay or purge.
        "dead_letter_file": {
            "bytes": sync.dead_letter_bytes,
            "max_bytes": sync.dead_letter_max_bytes,
            "at_cap": sync.dead_letter_at_cap,
        },
    }


def status_body(snapshot: Snapshot) -> dict[str, Any]:
    log = snapshot.log
    return {
        "durability": snapshot.durability,
        "recovering": snapshot.recovering,
        "journal": (
            {
                "bytes": log.disk_bytes,
                "last_seq": log.last_seq,
                "checkpoint": log.checkpoint,
                "replayed_at_start": snapshot.replayed_records,
                "recovery_problems": log.recovery_problems,
                "recovery_skipped_bytes": log.recovery_skipped_bytes,
                "saved_checkpoint": log.saved_checkpoint,
                "write_failures": log.write_failures,
            }
            if log is not None
            else None
        ),
        # Why ingest answers 503 and /readyz is off, or None while storage takes writes.
        "storage_fault": snapshot.storage_fault,
        "syncs": [sync_status(sync) for sync in snapshot.syncs],
        "disabled_syncs": snapshot.disabled_syncs,
        "profile_changes_refused": snapshot.profile_changes_refused,
        "config": _config_status(snapshot),
        # Journal items of syncs no longer configured, dead-lettered at the last start.
        "unconfigured_sync_dead_letters": snapshot.unconfigured_dead_letters,
        # Cluster mode only: nodes, partition owners and lag.
        **({"cluster": snapshot.cluster} if snapshot.cluster is not None else {}),
    }


def _config_status(snapshot: Snapshot) -> dict[str, Any] | None:
    config = snapshot.config
    if config is None:
        return None
    return {
        "path": config.path,
        "sha256": config.sha256,
        "loaded_at": _iso(config.loaded_at),
        "reloads": config.reloads,
        "reloads_refused": config.refused,
        "last_reload_error": config.last_reload_error,
    }


def status_handler(snapshot: Callable[[], Snapshot]) -> Handler:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_body(snapshot()))

    return status
