"""`forwarder dead-letters list|show|replay|purge`: the operator's view of dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from forwarder.config import Config
from forwarder.deliver.letter_query import matching, purge, summarize
from forwarder.deliver.letter_select import LetterFilter, SyncSummary, iso, letter_json, parse_since
from forwarder.errors import ForwarderError

ACTIONS = ("list", "show", "replay", "purge")
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    parser.add_argument("--sync", help="only this sync")
    parser.add_argument(
        "--reason", help="only letters of this kind (user_not_found) or with this in their reason"
    )
    parser.add_argument("--since", help="only letters failed since: an ISO time or 2h, 7d, ...")
    parser.add_argument("--id", help="only the letter with this id (or id prefix)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--dry-run", action="store_true", help="replay/purge: say what would go, change nothing"
    )
    parser.add_argument("--all", action="store_true", help="purge: every letter (no filter)")
    parser.add_argument(
        "--local",
        action="store_true",
        help="replay in this process even if a daemon answers (only with the daemon stopped)",
    )
    parser.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)  # old spelling
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a replay may take")


def run(args: argparse.Namespace, config: Config) -> int:
    action = "replay" if args.replay else args.action
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as error:
        print(f"forwarder: {error}", file=sys.stderr)
        return EXIT_USAGE
    chosen = LetterFilter(reason=args.reason, since=since, id=args.id)
    try:
        if action == "show":
            return _show(config, args, chosen)
        if action == "purge":
            return _purge(config, args, chosen)
        if action == "replay":
            return _replay(config, args, chosen)
        _print_summaries(summarize(config, args.sync, chosen), args.json, "dead letter(s)")
        return 0
    except KeyError:
        print(f"forwarder: no sync named {args.sync!r} in {args.config}", file=sys.stderr)
        return EXIT_USAGE
    except ForwarderError as error:  # cluster mode: Redis did not answer
        print(f"forwarder: {error}", file=sys.stderr)
        return 1


def _print_summaries(summaries: Iterable[SyncSummary], as_json: bool, what: str) -> None:
    """Counts by kind, oldest and newest: never an item (so never an email)."""
    for summary in summaries:
        if as_json:
            print(json.dumps(summary.to_json()))
            continue
        span = (
            f", {iso(summary.oldest)} .. {iso(summary.newest)}"
            if summary.oldest is not None
            else ""
        )
        print(f"{summary.sync}: {summary.total} {what}{span}")
        for kind, count in summary.by_kind.most_common():
            print(f"  {count:8d}  {kind}")
        if summary.unreadable:
            print(f"  {summary.unreadable:8d}  unreadable line(s), left as they are")


def _show(config: Config, args: argparse.Namespace, chosen: LetterFilter) -> int:
    found = 0
    for ident, letter in matching(config, args.sync, chosen):
        found += 1
        body = letter_json(letter, ident)
        if args.json:
            print(json.dumps(body))
            continue
        print(
            f"{ident}  {body['time']}  {letter.sync}  {letter.label}  "
            f"attempts {letter.attempts}  {letter.endpoint}"
        )
        if letter.first_failed_at is not None:
            print(f"    first failed {body['first_failed_at']}")
        print(f"    reason: {letter.reason}")
        print(f"    item: {json.dumps(letter.item)}")
    if args.id is not None and not found:
        print(f"forwarder: no dead letter with id {args.id!r}", file=sys.stderr)
        return 1
    return 0


def _purge(config: Config, args: argparse.Namespace, chosen: LetterFilter) -> int:
    if chosen.everything and not args.all:
        print(
            "forwarder: purge removes letters for good: give --reason, --since or --id, "
            "or --all for every letter",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.dry_run:
        _print_summaries(summarize(config, args.sync, chosen), args.json, "would be purged")
        return 0
    _print_summaries(purge(config, args.sync, chosen), args.json, "purged")
    return 0


def _replay(config: Config, args: argparse.Namespace, chosen: LetterFilter) -> int:
    # Delivery and HTTP client code, loaded only for a replay.
    from forwarder.deliver.replay import run_replay, to_stderr
    from forwarder.deliver.replay_client import DaemonRefused, NoDaemon, replay_via_daemon

    enabled = {s.name for s in config.syncs if s.enabled}
    if args.dry_run:
        summaries = [s for s in summarize(config, args.sync, chosen) if s.sync in enabled]
        _print_summaries(summaries, args.json, "would be resent")
        return 0
    if args.sync is not None and args.sync not in {s.name for s in config.syncs}:
        raise KeyError(args.sync)
    if config.cluster is not None:
        # In this process, under the rate budget the nodes share (no daemon to ask).
        from forwarder.cluster.replay import run_cluster_replay

        results = run_cluster_replay(config, args.sync, args.timeout, chosen, to_stderr)
        _print_replayed([vars(r) for r in results], args.json)
        return 0
    if not args.local:
        try:
            body = asyncio.run(
                replay_via_daemon(config.server, args.sync, chosen, args.timeout, to_stderr)
            )
        except NoDaemon:
            to_stderr("no daemon answers at the admin address: replaying from this process")
        except DaemonRefused as error:
            print(f"forwarder: {error}", file=sys.stderr)
            return 1
        else:
            _print_replayed(body["syncs"], args.json)
            if not body["done"]:
                to_stderr(f"replay {body['id']} goes on in the daemon past --timeout")
            return 0
    results = run_replay(config, args.sync, args.timeout, chosen)
    _print_replayed([vars(r) for r in results], args.json)
    return 0


def _print_replayed(rows: list[dict[str, Any]], as_json: bool) -> None:
    for row in rows:
        if as_json:
            print(json.dumps(row))
            continue
        print(
            f"{row['sync']}: resent {row['resent']}, delivered {row['delivered']}, "
            f"dead again {row['dead_again']}"
            + (f", {row['left']} not answered (kept)" if row.get("left") else "")
            + (f", {row['unsendable']} unsendable (kept)" if row.get("unsendable") else "")
        )
