"""The bounded form parser reads forms as urllib does, slice boundaries included."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.ingest.amplitude import RejectedRequest
from forwarder.ingest.forms import MAX_FORM_FIELDS, parse_form

form_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="&="), max_size=30
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(form_text, form_text), min_size=1, max_size=MAX_FORM_FIELDS - 1))
def test_parse_form_agrees_with_urllib(pairs: list[tuple[str, str]]) -> None:
    body = urlencode(pairs).encode()
    assert parse_form(body) == dict(parse_qsl(body.decode(), keep_blank_values=True))


def test_parse_form_decodes_escapes_across_its_slices() -> None:
    # Long enough for several slices, with escapes straddling every slice boundary.
    value = "é{ü}+%" * 40_000
    body = b"api_key=k&identification=" + quote_plus(value).encode()
    assert parse_form(body) == {"api_key": "k", "identification": value}


@pytest.mark.parametrize(
    "body", [b"a=&" * MAX_FORM_FIELDS, b"api_key", b"api_key=%ff%fe", b"x=\xff"]
)
def test_parse_form_refuses_what_is_not_a_small_utf8_form(body: bytes) -> None:
    with pytest.raises(RejectedRequest) as refused:
        parse_form(body)
    assert refused.value.status == 400
