"""POST /dead-letters/replay and GET /dead-letters/replay/{id}: replay through the daemon.

Replayed items go into the running syncs' lanes, so they share the daemon's one rate
budget (a second process resending beside it could use up to twice Iterable's rate).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from forwarder.deliver.letter_select import LetterFilter, SyncSummary, parse_since
from forwarder.deliver.replay_job import SyncReplay, progress_line
from forwarder.deliver.sync import SyncDelivery
from forwarder.pipeline import Pipeline
from forwarder.store.dead_letters import DeadLetter, letter_file, letter_id, read_lines
from forwarder.store.letter_aside import REPLAYING, take_aside

log = logging.getLogger("forwarder.replay")

# Finished replays kept for GET (their counts), oldest forgotten first.
KEPT_REPLAYS = 100


class ReplayRun:
    """One POST's replay: a SyncReplay per sync, fed by its own task."""

    def __init__(self, replays: list[SyncReplay]) -> None:
        self.id = secrets.token_hex(6)
        self.replays = replays
        self.tasks = [asyncio.create_task(r.run(), name=f"replay-{self.id}") for r in replays]
        for task in self.tasks:
            task.add_done_callback(self._task_done)

    @property
    def done(self) -> bool:
        return all(r.done.is_set() for r in self.replays)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "done": self.done,
            "syncs": [r.progress.to_json() for r in self.replays],
        }

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("replay %s failed", self.id, exc_info=task.exception())

    async def close(self) -> int:
        """Stop feeding; unsettled letters go back to their files (delivery has stopped)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return sum(
            r.put_back(letter_file(r.delivery.settlement.dead_letters)) for r in self.replays
        )


class DaemonReplays:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.runs: OrderedDict[str, ReplayRun] = OrderedDict()

    def deliveries(self, sync: str | None) -> list[SyncDelivery]:
        chosen = [d for d in self.pipeline.deliveries if sync is None or d.name == sync]
        if sync is not None and not chosen:
            raise KeyError(sync)
        return chosen

    def dry_run(self, sync: str | None, chosen: LetterFilter) -> list[SyncSummary]:
        summaries = []
        for delivery in self.deliveries(sync):
            summary = SyncSummary(delivery.name)
            for line, letter in read_lines(letter_file(delivery.settlement.dead_letters).path):
                if isinstance(letter, DeadLetter) and chosen.matches(letter, letter_id(line)):
                    summary.add(letter)
            summaries.append(summary)
        return summaries

    def start(self, sync: str | None, chosen: LetterFilter) -> ReplayRun:
        fsync = self.pipeline.config.storage.durability == "journal"

        def pick(line: bytes, letter: DeadLetter) -> bool:
            return chosen.matches(letter, letter_id(line))

        replays = []
        for delivery in self.deliveries(sync):
            path = letter_file(delivery.settlement.dead_letters).path
            aside = take_aside(path, pick, REPLAYING, fsync)
            if aside is not None:
                replays.append(SyncReplay(delivery, aside))
        run = ReplayRun(replays)
        self.runs[run.id] = run
        while len(self.runs) > KEPT_REPLAYS:
            oldest = next(iter(self.runs.values()))
            if not oldest.done:
                break
            self.runs.popitem(last=False)
        log.info(
            "replay %s started: %d letter(s)",
            run.id,
            sum(r.progress.total for r in replays),
            extra={"filter": chosen.to_json()},
        )
        return run

    async def close(self, app: web.Application) -> None:
        put_back = 0
        for run in self.runs.values():
            if not run.done:
                log.warning(
                    "replay %s stopped: %s",
                    run.id,
                    progress_line([r.progress for r in run.replays]),
                )
            put_back += await run.close()
        if put_back:
            log.warning("%d dead letter(s) not replayed yet went back to their files", put_back)


def _filter_of(body: dict[str, Any]) -> LetterFilter:
    since = body.get("since")
    if isinstance(since, str):
        since = parse_since(since, time.time())
    elif since is not None and not isinstance(since, int | float):
        raise ValueError("since: a unix time, an ISO time or a duration like 2h")
    reason, ident = body.get("reason"), body.get("id")
    if not isinstance(reason, str | None) or not isinstance(ident, str | None):
        raise ValueError("reason and id are strings")
    return LetterFilter(reason=reason, since=since, id=ident)


def add_dead_letter_routes(app: web.Application, pipeline: Pipeline) -> None:
    """The replay routes on `app` (the admin listener), and putting back at its cleanup."""
    replays = DaemonReplays(pipeline)

    async def start(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            chosen = _filter_of(body)
            sync = body.get("sync")
            if not isinstance(sync, str | None):
                raise ValueError("sync: a sync's name")
            if body.get("dry_run"):
                summaries = replays.dry_run(sync, chosen)
                return web.json_response(
                    {"dry_run": True, "syncs": [s.to_json() for s in summaries]}
                )
            run = replays.start(sync, chosen)
        except KeyError:
            return web.json_response({"error": f"no enabled sync named {sync!r}"}, status=404)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(run.to_json(), status=202)

    async def progress(request: web.Request) -> web.Response:
        run = replays.runs.get(request.match_info["id"])
        if run is None:
            return web.json_response({"error": "no such replay"}, status=404)
        return web.json_response(run.to_json())

    app.router.add_post("/dead-letters/replay", start)
    app.router.add_get("/dead-letters/replay/{id}", progress)
    app.on_cleanup.append(replays.close)
