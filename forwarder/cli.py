"""The `forwarder` command: run, check-config, dead-letters, cluster, simulate-iterable."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from forwarder import __version__
from forwarder.cluster.status_cli import add_arguments as add_cluster_arguments
from forwarder.config import Config, config_warnings, load_config, summarize
from forwarder.errors import ConfigError
from forwarder.ops.dead_letter_cli import add_arguments as add_dead_letter_arguments

EXIT_CONFIG = 2
# `check-config --online`: the config is valid but Iterable refused a key or was unreachable.
EXIT_PROBE = 1


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
    setup_logging(args.log_level, args.log_format)
    return run(config, args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    for warning in config_warnings(config):
        print(f"forwarder: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK")
    print(summarize(config))
    if not args.online:
        return 0
    import asyncio

    from forwarder.ops.probe import probe_syncs

    results = asyncio.run(probe_syncs(config, args.timeout))
    for result in results:
        print(f"sync {result.sync}: GET {result.url}: {result.said}")
    if not results:
        print("no enabled syncs to probe")
    return 0 if all(result.ok for result in results) else EXIT_PROBE


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from forwarder.ops.dead_letter_cli import run as run_dead_letters

    return run_dead_letters(args, _load(args.config))


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


def cmd_cluster(args: argparse.Namespace) -> int:
    from forwarder.cluster.status_cli import run as run_cluster

    return run_cluster(args, _load(args.config))


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from forwarder.sample import write_sample_config

    try:
        write_sample_config(Path(args.config), force=args.force)
    except FileExistsError:
        print(f"forwarder: {args.config} exists (--force overwrites it)", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"forwarder: cannot write {args.config}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: sample config written; edit it, then check-config")
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
    run.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "text"],
        help="auto: text when stderr is a terminal, else one JSON object a line",
    )
    check = _command(
        commands,
        "check-config",
        cmd_check_config,
        "validate a config and print its syncs",
        "Validate the config (exit 2 on an error naming its key path) and print a summary; "
        "--online also asks Iterable whether each enabled sync's API key works (exit 1 if "
        "one does not).",
    )
    check.add_argument(
        "--online", action="store_true", help="probe each enabled sync's key (GET /api/channels)"
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, help="seconds each --online probe may take"
    )
    dead = _command(
        commands,
        "dead-letters",
        cmd_dead_letters,
        "list, show, replay or purge dead letters",
        "list (the default): counts by kind per sync; show: the letters with their ids; "
        "replay: resend them (through the running daemon when one answers); purge: remove them.",
    )
    add_dead_letter_arguments(dead)
    cluster = _command(
        commands,
        "cluster",
        cmd_cluster,
        "cluster mode: status of the nodes and partitions",
        "status: the live nodes, each partition's owner and lag, read from NATS.",
        reads_config=False,  # each action takes its own --config
    )
    add_cluster_arguments(cluster)
    init = _command(
        commands,
        "init",
        cmd_init,
        "write a commented sample config",
        "Write the commented sample config.toml (mode 0640) to --config; exit 2 if it exists.",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
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
