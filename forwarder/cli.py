"""The `forwarder` command: run, check-config, dead-letters, simulate-iterable."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from forwarder import __version__
from forwarder.config import Config, load_config, summarize
from forwarder.errors import ConfigError

EXIT_CONFIG = 2


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"forwarder: config error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    from forwarder.daemon import run
    from forwarder.ops.logs import setup_logging

    config = _load(args.config)
    setup_logging(args.log_level)
    return run(config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{args.config}: OK")
    print(summarize(config))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from forwarder.deliver.replay import count_by_reason, run_replay

    config = _load(args.config)
    try:
        if args.replay:
            for result in run_replay(config, args.sync, args.timeout):
                print(
                    f"{result.sync}: resent {result.resent}, delivered {result.delivered}, "
                    f"dead again {result.dead_again}"
                    + (
                        f", {result.unreadable} unreadable line(s) kept"
                        if result.unreadable
                        else ""
                    )
                )
            return 0
        counts = count_by_reason(config, args.sync)
    except KeyError:
        print(f"forwarder: no sync named {args.sync!r} in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    for sync, counter in counts.items():
        total = sum(counter.values())
        print(f"{sync}: {total} dead letter(s)")
        for reason, count in counter.most_common():
            print(f"  {count:8d}  {reason}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from forwarder.sim import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        api_keys=frozenset(args.api_key) if args.api_key else None,
        track_bulk_per_second=args.track_bulk_per_second,
        bulk_update_per_second=args.bulk_update_per_second,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
        require_user_first=args.require_user_first,
        seed=args.seed,
    )
    try:
        asyncio.run(run_simulator(args.host, args.port, config))
    except KeyboardInterrupt:
        pass
    return 0


Command = Callable[[argparse.Namespace], int]


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Command,
    summary: str,
    description: str,
    reads_config: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand that runs `func`, with the --config option when it reads one."""
    parser = commands.add_parser(name, help=summary, description=description)
    if reads_config:
        parser.add_argument("--config", default="config.toml", help="path to config.toml")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Amplitude-compatible event streaming daemon for Iterable.",
    )
    parser.add_argument("--version", action="version", version=f"forwarder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        commands, "run", cmd_run, "run the daemon", "Run the daemon until SIGTERM/SIGINT."
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _command(
        commands,
        "check-config",
        cmd_check_config,
        "validate a config and print its syncs",
        "Validate the config (exit 2 on an error naming its key path) and print a summary.",
    )
    dead = _command(
        commands,
        "dead-letters",
        cmd_dead_letters,
        "count dead letters by reason, or resend them",
        "List dead-letter counts by reason per sync; --replay resends them to Iterable.",
    )
    dead.add_argument("--sync", help="only this sync")
    dead.add_argument("--replay", action="store_true", help="resend the dead letters")
    dead.add_argument("--timeout", type=float, default=600.0, help="seconds a replay may take")
    # The simulator reads no config.toml: its knobs are its own flags.
    sim = _command(
        commands,
        "simulate-iterable",
        cmd_simulate,
        "serve a fake Iterable (bulk endpoints) for tests and load runs",
        "A local Iterable simulator with rate limits, caps, partial failures and faults.",
        reads_config=False,
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9100)
    sim.add_argument("--api-key", action="append", help="accepted key (repeatable); default: any")
    sim.add_argument("--track-bulk-per-second", type=float, default=10.0)
    sim.add_argument("--bulk-update-per-second", type=float, default=5.0)
    sim.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered 500"
    )
    sim.add_argument("--latency-ms", type=float, default=0.0)
    sim.add_argument(
        "--require-user-first", action="store_true", help="events of unknown users fail"
    )
    sim.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
