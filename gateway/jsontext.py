"""JSON text as `json.dumps(value)` writes it, for the paths every request takes.

`json.dumps` builds a new encoder for each call: for the few short texts a request writes
(its answer, the states, the history's detail) that costs more than the encoding itself. The
encoder below is built once; its output is the same text, character for character, for
anything that is not circular (the gateway's values never are: they are built fresh from
documents and events).
"""

from __future__ import annotations

import json
from json import encoder
from typing import Any


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# CPython's C encoder, as json.dumps' defaults make it: no markers (no circular check), ASCII
# only, ", " and ": ", no sorting, no key skipping, NaN allowed. None where there is no C
# accelerator (typeshed does not declare it): then json.dumps itself.
_MAKE = getattr(encoder, "c_make_encoder", None)
_ENCODE = (_MAKE(None, _not_json, encoder.encode_basestring_ascii, None, ": ", ", ", False,
                 False, True) if _MAKE is not None else None)


def json_text(value: Any) -> str:
    """`json.dumps(value)`, for a value that is not circular."""
    if _ENCODE is None:
        return json.dumps(value)
    return "".join(_ENCODE(value, 0))
