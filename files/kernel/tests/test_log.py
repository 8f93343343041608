"""The key=value line format: bare when a value is plain ASCII, quoted JSON otherwise."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from core_kernel.gates import GateVerdict
from core_kernel.log import kv

# The rule as first written (one character at a time); the regex in log.py must agree with it.
_PLAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-+@,")


def _reference(text: str) -> str:
    if text and all(ch in _PLAIN_CHARS for ch in text):
        return text
    return json.dumps(text, ensure_ascii=True)


@given(st.text(max_size=40) | st.text(alphabet="aZ09._:/-+@,= \n\"'é\u00a0\u0660", max_size=12))
def test_text_values_bare_or_quoted_by_the_same_rule(text: str) -> None:
    assert kv("E", [("k", text)]) == f"E k={_reference(text)}"


def test_other_values() -> None:
    line = kv(
        "GATE_PASS",
        [
            ("none", None),
            ("verdict", GateVerdict.PASS),
            ("yes", True),
            ("n", 12),
            ("d", Decimal("0.10")),
            ("reasons", ["A", "B"]),
            ("odd", "a b"),
            ("empty", ""),
            ("digit", "\u0660"),
            ("newline", "x\n"),
        ],
    )
    assert line == (
        'GATE_PASS none=- verdict=PASS yes=true n=12 d=0.10 reasons=A,B odd="a b" empty="" '
        'digit="\\u0660" newline="x\\n"'
    )
