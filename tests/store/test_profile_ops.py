"""User property operations, table-driven and property-based."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.store.profile_ops import apply_user_properties

CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], set[str]]] = [
    # name, profile before, user_properties, profile after, changed keys
    ("plain key is $set", {}, {"plan": "pro"}, {"plan": "pro"}, {"plan"}),
    ("$set overwrites", {"plan": "free"}, {"$set": {"plan": "pro"}}, {"plan": "pro"}, {"plan"}),
    (
        "$set same value is no change",
        {"plan": "pro"},
        {"$set": {"plan": "pro"}},
        {"plan": "pro"},
        set(),
    ),
    ("$set number vs string differ", {"n": 1}, {"$set": {"n": "1"}}, {"n": "1"}, {"n"}),
    ("$set null keeps null", {}, {"$set": {"x": None}}, {"x": None}, {"x"}),
    ("$setOnce on missing", {}, {"$setOnce": {"first": "a"}}, {"first": "a"}, {"first"}),
    ("$setOnce on set key", {"first": "a"}, {"$setOnce": {"first": "b"}}, {"first": "a"}, set()),
    ("$add to missing starts at 0", {}, {"$add": {"n": 2}}, {"n": 2}, {"n"}),
    ("$add ints", {"n": 2}, {"$add": {"n": 3}}, {"n": 5}, {"n"}),
    ("$add float", {"n": 2}, {"$add": {"n": 0.5}}, {"n": 2.5}, {"n"}),
    ("$add negative", {"n": 2}, {"$add": {"n": -2}}, {"n": 0}, {"n"}),
    ("$add numeric string argument", {"n": 1}, {"$add": {"n": "2"}}, {"n": 3}, {"n"}),
    ("$add non-numeric argument ignored", {"n": 1}, {"$add": {"n": "x"}}, {"n": 1}, set()),
    ("$add bool is not a number", {"n": 1}, {"$add": {"n": True}}, {"n": 1}, set()),
    ("$add onto a string value ignored", {"n": "abc"}, {"$add": {"n": 1}}, {"n": "abc"}, set()),
    ("$add onto a bool ignored", {"n": True}, {"$add": {"n": 1}}, {"n": True}, set()),
    ("$append to missing", {}, {"$append": {"l": "a"}}, {"l": ["a"]}, {"l"}),
    ("$append to list", {"l": ["a"]}, {"$append": {"l": "b"}}, {"l": ["a", "b"]}, {"l"}),
    (
        "$append list argument",
        {"l": ["a"]},
        {"$append": {"l": ["b", "c"]}},
        {"l": ["a", "b", "c"]},
        {"l"},
    ),
    ("$append to scalar", {"l": "a"}, {"$append": {"l": "b"}}, {"l": ["a", "b"]}, {"l"}),
    ("$append keeps duplicates", {"l": ["a"]}, {"$append": {"l": "a"}}, {"l": ["a", "a"]}, {"l"}),
    (
        "$append nested list element",
        {"l": [[1]]},
        {"$append": {"l": [[2]]}},
        {"l": [[1], [2]]},
        {"l"},
    ),
    ("$prepend", {"l": ["b"]}, {"$prepend": {"l": "a"}}, {"l": ["a", "b"]}, {"l"}),
    (
        "$prepend list argument",
        {"l": ["c"]},
        {"$prepend": {"l": ["a", "b"]}},
        {"l": ["a", "b", "c"]},
        {"l"},
    ),
    ("$postInsert new", {"l": ["a"]}, {"$postInsert": {"l": "b"}}, {"l": ["a", "b"]}, {"l"}),
    (
        "$postInsert present is no change",
        {"l": ["a"]},
        {"$postInsert": {"l": "a"}},
        {"l": ["a"]},
        set(),
    ),
    ("$postInsert to missing", {}, {"$postInsert": {"l": "a"}}, {"l": ["a"]}, {"l"}),
    ("$preInsert new", {"l": ["b"]}, {"$preInsert": {"l": "a"}}, {"l": ["a", "b"]}, {"l"}),
    (
        "$preInsert present is no change",
        {"l": ["a", "b"]},
        {"$preInsert": {"l": "b"}},
        {"l": ["a", "b"]},
        set(),
    ),
    ("$preInsert mixed", {"l": ["b"]}, {"$preInsert": {"l": ["a", "b"]}}, {"l": ["a", "b"]}, {"l"}),
    (
        "$remove all occurrences",
        {"l": ["a", "b", "a"]},
        {"$remove": {"l": "a"}},
        {"l": ["b"]},
        {"l"},
    ),
    ("$remove list argument", {"l": [1, 2, 3]}, {"$remove": {"l": [1, 3]}}, {"l": [2]}, {"l"}),
    ("$remove missing value", {"l": ["a"]}, {"$remove": {"l": "z"}}, {"l": ["a"]}, set()),
    ("$remove on missing key", {}, {"$remove": {"l": "a"}}, {}, set()),
    ("$remove number vs string", {"l": [1, "1"]}, {"$remove": {"l": 1}}, {"l": ["1"]}, {"l"}),
    ("$unset", {"a": 1, "b": 2}, {"$unset": {"a": "-"}}, {"b": 2}, {"a"}),
    ("$unset missing is no change", {"b": 2}, {"$unset": {"a": "-"}}, {"b": 2}, set()),
    ("$clearAll", {"a": 1, "b": 2}, {"$clearAll": "-"}, {}, {"a", "b"}),
    (
        "$clearAll then $set",
        {"a": 1, "b": 2},
        {"$set": {"a": 1}, "$clearAll": "-"},
        {"a": 1},
        {"b"},
    ),
    ("$unset before $set", {"a": 1}, {"$set": {"a": 2}, "$unset": {"a": "-"}}, {"a": 2}, {"a"}),
    ("$setOnce before $set", {}, {"$set": {"a": 2}, "$setOnce": {"a": 1}}, {"a": 2}, {"a"}),
    ("$set before $add", {}, {"$add": {"n": 1}, "$set": {"n": 10}}, {"n": 11}, {"n"}),
    ("unknown op ignored", {}, {"$bogus": {"a": 1}}, {}, set()),
    ("op with a non-object value ignored", {"a": 1}, {"$set": "a"}, {"a": 1}, set()),
    ("empty update", {"a": 1}, {}, {"a": 1}, set()),
    (
        "nested objects are values",
        {},
        {"$set": {"addr": {"city": "Oslo"}}},
        {"addr": {"city": "Oslo"}},
        {"addr"},
    ),
]


@pytest.mark.parametrize(
    ("before", "update", "after", "changed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_operations(
    before: dict[str, Any], update: dict[str, Any], after: dict[str, Any], changed: set[str]
) -> None:
    profile = {k: (list(v) if isinstance(v, list) else v) for k, v in before.items()}
    assert apply_user_properties(profile, update) == changed
    assert profile == after


def test_operations_apply_in_arrival_order_across_calls() -> None:
    profile: dict[str, Any] = {}
    apply_user_properties(profile, {"$set": {"plan": "free"}})
    apply_user_properties(profile, {"$add": {"logins": 1}})
    apply_user_properties(
        profile, {"plan": "pro", "$add": {"logins": 1}} if False else {"plan": "pro"}
    )
    apply_user_properties(profile, {"$add": {"logins": 1}})
    assert profile == {"plan": "pro", "logins": 2}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    before=st.dictionaries(st.text(max_size=4), json_values, max_size=4),
    update=st.dictionaries(
        st.sampled_from(
            [
                "$set",
                "$setOnce",
                "$add",
                "$append",
                "$prepend",
                "$preInsert",
                "$postInsert",
                "$remove",
                "$unset",
                "$clearAll",
                "$x",
                "plain",
            ]
        ),
        json_values,
        max_size=5,
    ),
)
def test_operations_never_raise_and_report_every_change(
    before: dict[str, Any], update: dict[str, Any]
) -> None:
    profile = dict(before)
    changed = apply_user_properties(profile, update)
    real = {
        k
        for k in before.keys() | profile.keys()
        if before.get(k, KeyError) != profile.get(k, KeyError)
    }
    assert changed == real
