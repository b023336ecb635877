"""The Identify API's forms (url-encoded and multipart), parsed strictly and in bounded memory."""

from __future__ import annotations

from email.message import Message
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


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """A multipart/form-data body's fields (RFC 7578), strictly: a part without a name, a
    missing close delimiter or bad UTF-8 is a 400. `content_type` is the whole header."""
    boundary = _param(content_type, "content-type", "boundary")
    if not boundary:
        raise bad_request(FailureKind.MALFORMED, "Invalid multipart body: no boundary")
    delimiter = b"\r\n--" + boundary.encode("utf-8", "replace")
    # Counted on the bytes before any part is split out, as for url-encoded forms.
    if body.count(delimiter[2:]) > MAX_FORM_FIELDS:
        raise bad_request(
            FailureKind.MALFORMED, f"Invalid multipart body: more than {MAX_FORM_FIELDS} fields"
        )
    parts = (b"\r\n" + body).split(delimiter)
    # parts[0] is the preamble; the last must begin the close delimiter's "--".
    if len(parts) < 2 or not parts[-1].startswith(b"--"):
        raise bad_request(FailureKind.MALFORMED, "Invalid multipart body: no close delimiter")
    fields: dict[str, str] = {}
    for part in parts[1:-1]:
        head, blank, content = part.partition(b"\r\n\r\n")
        if not blank:
            raise bad_request(
                FailureKind.MALFORMED, "Invalid multipart body: a part has no headers"
            )
        name = None
        # The first line is the rest of the delimiter's line (transport padding).
        for line in head.split(b"\r\n")[1:]:
            key, colon, value = line.partition(b":")
            if colon and key.strip().lower() == b"content-disposition":
                name = _param(value.decode("latin-1"), "content-disposition", "name")
        if not name:
            raise bad_request(FailureKind.MALFORMED, "Invalid multipart body: a part has no name")
        try:
            fields[name] = content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise bad_request(
                FailureKind.MALFORMED, f"Invalid multipart body: invalid UTF-8 ({error.reason})"
            ) from None
    return fields


def _param(value: str, header: str, name: str) -> str | None:
    """A parameter of a header value (quoted or not), as the email package reads it."""
    message = Message()
    message[header] = value
    found = message.get_param(name, header=header)
    return found if isinstance(found, str) else None
