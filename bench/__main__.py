"""`python -m bench [hotpath|load|all] [flags]`: the benchmarks; figures, never failures."""

from __future__ import annotations

import sys

USAGE = """usage: python -m bench [COMMAND] [flags]

commands:
  all       hot path, then end-to-end load in both durability modes with the overload
            scenario (the default; about two minutes on 2 cores)
  hotpath   decode -> profile -> route -> batch encode on one core, with the floor and
            naive references measured in the same run (--help for flags)
  load      simulator + daemon as subprocesses, concurrent clients over 127.0.0.1
            (--seconds, --concurrency, --durability, --overload; --help for all)
  cluster   1, 2, 3 nodes in cluster mode on one NATS and one Redis, one client process
            spreading requests over them (--nodes 1,2,3 --seconds 15; --help for all)
"""


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("all", argv)
    if command in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if command == "hotpath":
        from bench import hotpath

        hotpath.main(rest)
    elif command == "load":
        from bench import load

        load.main(rest)
    elif command == "cluster":
        from bench import cluster

        cluster.main(rest)
    elif command == "all":
        from bench import hotpath, load

        hotpath.main([])
        load.main(["--seconds", "15", "--durability", "both", "--overload", "--quiet", *rest])
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
