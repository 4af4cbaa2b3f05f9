"""json_text writes what json.dumps writes, character for character, and refuses the same."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsontext import json_text

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF)))
VALUES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)


@given(VALUES)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert json_text(value) == json.dumps(value)


@pytest.mark.parametrize("value", [
    {"usn": "N-1", "sid": 173, "statuses": {"provision": "Provisioned"}, "features_added": []},
    [5001, 5003], "Café \U0001F600 \u2028", 1e16, -0.0, math.inf, -math.inf, math.nan,
    {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
    [(1, 2), {"nested": [{"a": None}]}], 2**70,
])
def test_the_gateways_values_and_json_corners(value: Any) -> None:
    assert json_text(value) == json.dumps(value)


@pytest.mark.parametrize("value", [Decimal("1.5"), {"at": object()}, [b"bytes"], {(1, 2): 1}])
def test_what_json_dumps_refuses_is_refused(value: Any) -> None:
    with pytest.raises(TypeError) as expected:
        json.dumps(value)
    with pytest.raises(TypeError) as found:
        json_text(value)
    assert str(found.value) == str(expected.value)
