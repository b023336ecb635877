"""GET /status: each sync's state in the spirit of Amplitude's delivery view."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from forwarder.amplitude import mask

if TYPE_CHECKING:
    from forwarder.daemon import Forwarder, SyncRuntime

RECENT_WINDOW_SECONDS = 300.0


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def sync_status(runtime: SyncRuntime) -> dict[str, Any]:
    delivery = runtime.delivery
    stats = delivery.stats
    if delivery.paused is not None:
        state, why = "paused", delivery.paused
    elif delivery.lanes.items or delivery.in_flight:
        state, why = "sending", None
    else:
        state, why = "idle", None
    delivered, dead = stats.recent_counts(RECENT_WINDOW_SECONDS)
    return {
        "name": runtime.config.name,
        "enabled": runtime.config.enabled,
        "api_key": mask(runtime.config.api_key),
        "endpoint": runtime.config.endpoint_base,
        "state": state,
        "paused_reason": why,
        "last_success": _iso(stats.last_success_at),
        "last_error": (
            {"time": _iso(stats.last_error_at), "message": stats.last_error}
            if stats.last_error is not None
            else None
        ),
        "last_5_minutes": {"delivered": delivered, "dead_lettered": dead},
        "totals": {
            "events_routed": runtime.stats.events_routed,
            "users_routed": runtime.stats.users_routed,
            "delivered": dict(stats.delivered),
            "retries": dict(stats.retries),
            "skipped": dict(runtime.stats.skipped),
        },
        "queue": {"items": delivery.lanes.items, "bytes": delivery.lanes.bytes},
        "dead_letters": dict(stats.dead),
    }


def status_snapshot(forwarder: Forwarder) -> dict[str, Any]:
    journal = forwarder.journal
    return {
        "durability": forwarder.config.storage.durability,
        "recovering": forwarder.recovering,
        "journal": (
            {
                "bytes": journal.disk_bytes,
                "last_seq": journal.last_seq,
                "checkpoint": journal.progress.checkpoint,
                "replayed_at_start": forwarder.replayed_records,
                "recovery_problems": journal.recovery_problems,
            }
            if journal is not None
            else None
        ),
        "syncs": [sync_status(runtime) for runtime in forwarder.syncs],
        "disabled_syncs": [s.name for s in forwarder.config.syncs if not s.enabled],
    }


def status_handler(forwarder: Forwarder) -> Handler:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_snapshot(forwarder))

    return status
