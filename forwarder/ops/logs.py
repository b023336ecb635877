"""Structured logs: one JSON object a line, with level, logger and sync name."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_encoder = msgspec.json.Encoder()
# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


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


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # On the handler, not a logger: a logger's filters miss records its children propagate.
    handler.addFilter(RequestDataFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: too much at ingest rates.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
