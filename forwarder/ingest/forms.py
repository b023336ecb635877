"""The Identify API's url-encoded form, parsed strictly and in bounded memory."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from forwarder.errors import FailureKind
from forwarder.ingest.amplitude import bad_request

# The Identify form has two fields; a few more are tolerated, thousands are an attack.
MAX_FORM_FIELDS = 16
# Percent-decoding goes a slice at a time: urllib splits its whole input at every `%`,
# an object per escape (1.5 GB for a 20 MB field of escapes).
_UNQUOTE_SLICE = 1 << 16


def parse_form(body: bytes) -> dict[str, str]:
    """A url-encoded form's fields, strictly: bad bytes and empty pairs are a 400."""
    # Counted on the bytes, before any field is built: `a=&` repeated is 3 bytes a field.
    if body.count(b"&") >= MAX_FORM_FIELDS:
        raise bad_request(
            FailureKind.MALFORMED,
            f"Invalid form body: more than {MAX_FORM_FIELDS} fields "
            "(the Identify API takes api_key and identification)",
        )
    fields: dict[str, str] = {}
    for pair in body.split(b"&") if body else []:
        name, equals, value = pair.partition(b"=")
        if not equals:
            raise bad_request(FailureKind.MALFORMED, "Invalid form body: a field without '='")
        try:
            fields[_unquote(name)] = _unquote(value)
        except UnicodeDecodeError as error:
            raise bad_request(
                FailureKind.MALFORMED, f"Invalid form body: invalid UTF-8 ({error.reason})"
            ) from None
    return fields


def _unquote(raw: bytes) -> str:
    """Percent- and plus-decoding in bounded memory, then strict UTF-8."""
    raw = raw.replace(b"+", b" ")
    decoded = bytearray()
    start = 0
    while start < len(raw):
        end = min(start + _UNQUOTE_SLICE, len(raw))
        # Never cut an escape in two: end the slice before a `%` in its last two bytes.
        cut = raw.rfind(b"%", max(start, end - 2), end)
        if cut > start and end < len(raw):
            end = cut
        decoded += unquote_to_bytes(raw[start:end])
        start = end
    return decoded.decode("utf-8")
