"""Log output: JSON lines for machines, readable text for a terminal, and the start line."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import msgspec

from forwarder import __version__

_encoder = msgspec.json.Encoder()
# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

LOG_FORMATS = ("auto", "json", "text")


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _extra(record: logging.LogRecord) -> dict[str, object]:
    """The fields given with `extra=`, in the order they were given."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class TextFormatter(logging.Formatter):
    """`2026-11-25T01:02:03.456Z WARNING forwarder.sender sync=x endpoint=y message`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in _extra(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name} "
        line += f"{fields} {record.getMessage()}" if fields else record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: object) -> str:
    """A field's value as one token: strings bare unless they hold spaces, the rest as JSON."""
    if isinstance(value, str):
        if value and not any(c.isspace() or c in '="' for c in value):
            return value
        return _encoder.encode(value).decode()
    try:
        return _encoder.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


class RequestDataFilter(logging.Filter):
    """Keeps a request's bytes out of aiohttp's records: only the exception's type stays.

    aiohttp logs a malformed request with the parser's error, which quotes the raw bytes
    (a body, and the Amplitude API key in it); any exception it logs may quote a request.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp") and record.exc_info:
            error = record.exc_info[1]
            if error is not None:
                record.error = type(error).__name__
            record.exc_info = None
            record.exc_text = None
        return True


def choose_formatter(log_format: str, stream: TextIO) -> logging.Formatter:
    """`auto`: text for a person at a terminal, JSON for journald and log shippers."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        log_format = "text" if isatty is not None and isatty() else "json"
    return TextFormatter() if log_format == "text" else JsonFormatter()


def setup_logging(level: str = "info", log_format: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(choose_formatter(log_format, sys.stderr))
    # On the handler, not a logger: a logger's filters miss records its children propagate.
    handler.addFilter(RequestDataFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: too much at ingest rates.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_start(config_path: str | None, warnings: list[str]) -> None:
    """The first lines of a run: the version and which config (its sha256), then warnings."""
    log = logging.getLogger("forwarder.daemon")
    extra: dict[str, object] = {"version": __version__}
    if config_path is not None:
        path = Path(config_path).resolve()
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
        extra.update(config=str(path), config_sha256=digest)
    log.info("forwarder starting", extra=extra)
    for warning in warnings:
        log.warning("%s", warning)
