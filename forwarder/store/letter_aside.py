"""Moving dead letters aside for a replay or purge, and putting back what a crash left.

A daemon may append to a sync's dead-letter file at any moment, so the file is never
rewritten in place: it is renamed aside (the daemon's next write starts a fresh file),
the letters not chosen are appended back, and the aside file is cut down to the chosen
ones. A crash at any step leaves an aside file that `restore_asides` appends back at the
next daemon start: a letter may come back twice, none is lost.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forwarder.store.dead_letters import DeadLetter, DeadLetterFile, read_lines

log = logging.getLogger("forwarder.replay")

REPLAYING = ".replaying-"
PURGING = ".purging-"
_TAKING = ".taking"
# Lines appended back per write while splitting a file.
_CHUNK = 1000


@dataclass
class Aside:
    """The chosen letters of one sync, moved out of its dead-letter file."""

    path: Path
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return sum(self.by_kind.values())

    def letters(self) -> Iterator[DeadLetter]:
        for _, letter in read_lines(self.path):
            if isinstance(letter, DeadLetter):
                yield letter


def aside_name(path: Path, mark: str) -> Path:
    # The pid lets a daemon starting meanwhile leave a live CLI's aside file alone.
    return path.with_name(f"{path.name}{mark}{int(time.time() * 1000)}-{os.getpid()}")


def take_aside(
    path: Path, chosen: Callable[[bytes, DeadLetter], bool], mark: str, fsync: bool
) -> Aside | None:
    """Move the letters `chosen` picks out of `path` into an aside file; None when the
    file does not exist. Lines that do not decode stay in `path`."""
    aside = aside_name(path, mark)
    try:
        path.rename(aside)
    except FileNotFoundError:
        return None
    taking = aside.with_name(aside.name + _TAKING)
    back = DeadLetterFile(path, fsync)
    result = Aside(aside)
    rest: list[bytes] = []
    with open(taking, "wb") as out:
        for line, letter in read_lines(aside):
            if isinstance(letter, DeadLetter) and chosen(line, letter):
                out.write(line)
                result.by_kind[letter.label] += 1
                continue
            rest.append(line)
            if len(rest) >= _CHUNK:
                back.append_lines(rest)
                rest = []
        back.append_lines(rest)
        out.flush()
        if fsync:
            os.fsync(out.fileno())
    # Only now that the rest is back may the aside file shrink to the chosen letters.
    taking.replace(aside)
    return result


def restore_asides(directory: Path) -> int:
    """Append every aside file a stopped or crashed replay or purge left behind back to
    its dead-letter file; the number of lines put back."""
    if not directory.is_dir():
        return 0
    restored = 0
    for aside in sorted(directory.iterdir()):
        name = aside.name
        mark = REPLAYING if REPLAYING in name else PURGING if PURGING in name else None
        if mark is None:
            continue
        if name.endswith(_TAKING):
            # A split cut short: the aside file beside it still holds every line.
            aside.unlink()
            continue
        if _owner_alive(name.rsplit(mark, 1)[1]):
            continue
        base = directory / name.rsplit(mark, 1)[0]
        lines = [line for line, _ in read_lines(aside)]
        DeadLetterFile(base, fsync=True).append_lines(lines)
        aside.unlink()
        restored += len(lines)
        log.warning("put back %d dead letter(s) that %s had moved aside", len(lines), aside.name)
    return restored


def _owner_alive(stamp: str) -> bool:
    """True while the process that made the aside file (its name's pid) is another live one."""
    _, _, pid_text = stamp.partition("-")
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
