"""The one parse: its rules, and two properties - the stream round trip is exact, and any JSON
value in any field gives a decision or a one-line error, never an exception."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest
import redis
from corpus import BASE
from helpers import config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core_kernel import cli, gates, profit_gate_kernel, streams
from core_kernel.intent import (
    CLIENT_ORDER_ID_RE,
    MODEL_PATTERN,
    REGIME_PATTERN,
    SYMBOL_PATTERN,
    TRACE_ID_PATTERN,
    Intent,
    IntentError,
    client_order_id,
    decode_entry_fields,
    encode_intent,
    entry_time_ms,
    loads_json,
    parse_intent,
)
from core_kernel.mode import TradingMode, report_for
from core_kernel.store import KernelStore


def test_every_invalid_field_is_named_once_with_its_reason_and_the_trace_id_kept() -> None:
    with pytest.raises(IntentError) as info:
        parse_intent({**BASE, "qty": "1e400", "side": "\u017fell", "model": 5, "extra": 1})
    err = info.value
    assert err.invalid == {
        "side": "not one of BUY, SELL, LONG, SHORT (upper or lower case)",
        "qty": "out of range (1e-30 .. 1e15)",
        "model": "not text (int)",
        "extra": "unknown field",
    }
    assert err.trace_id == "corpus-0"
    assert str(err).count(";") == 3 and "\n" not in str(err)
    with pytest.raises(IntentError) as info:
        parse_intent({**BASE, "trace_id": "bad id"})
    assert info.value.trace_id is None


def test_identifiers_are_exact() -> None:
    intent = parse_intent({**BASE, "side": "short", "regime": "trend", "tp": "3400", "sl": "3600"})
    assert (intent.side, intent.regime) == ("SELL", "TREND")
    assert intent.client_order_id == "corpus-0"
    for text in ("BUY\n", " BUY", "B\u0055Y\u200b", "Buy"):
        with pytest.raises(IntentError, match="side"):
            parse_intent({**BASE, "side": text})


def test_client_order_id_always_valid_even_for_hostile_text() -> None:
    for trace in ("t-1\n", "x" * 37, "qk-1", "a/b", "\udcff", "\u017f"):
        cid = client_order_id(trace)
        assert CLIENT_ORDER_ID_RE.fullmatch(cid) and cid != trace
    assert client_order_id("x" * 36) == "x" * 36


def test_json_reader_limits() -> None:
    assert loads_json('{"qty": 0.1}') == {"qty": Decimal("0.1")}
    for text, reason in (
        ('{"qty": NaN}', "NaN is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b'{"a": "\xff"}', "not UTF-8"),
        ("{", "bad JSON"),
    ):
        with pytest.raises(ValueError, match=reason):
            loads_json(text)


def test_a_huge_json_integer_is_named_by_its_field() -> None:
    data = loads_json('{"qty": ' + "9" * 5000 + ', "model": -' + "1" * 41 + "}")
    with pytest.raises(IntentError) as info:
        parse_intent({**BASE, **data})
    assert info.value.invalid == {
        "qty": "integer of 5000 digits (at most 40)",
        "model": "not text (integer)",
    }


def test_entry_time_ms() -> None:
    assert entry_time_ms("1700000000000-3") == 1_700_000_000_000
    for bad in ("", "1", "1-", "-1", "a-1", "1-b", "\u0661-0", "1-0\n", "1" * 20 + "-0"):
        assert entry_time_ms(bad) is None


def test_bytes_fields_decode_strictly_per_field() -> None:
    fields = {k.encode(): v.encode() for k, v in BASE.items()}
    assert decode_entry_fields(fields) == parse_intent(BASE)
    with pytest.raises(IntentError) as info:
        decode_entry_fields({**fields, b"symbol": b"ETH\xffUSDT", b"model": b"\xc0\xaf"})
    assert info.value.invalid == {"symbol": "not UTF-8 (byte 3)", "model": "not UTF-8 (byte 0)"}
    assert info.value.trace_id == "corpus-0"
    with pytest.raises(IntentError, match="field name not UTF-8"):
        decode_entry_fields({**fields, b"\xff": b"1"})
    with pytest.raises(IntentError, match="too long"):
        decode_entry_fields({**fields, b"symbol": b"A" * 1_000_000})
    with pytest.raises(IntentError, match="trace_id: missing"):
        decode_entry_fields({k: v for k, v in fields.items() if k != b"trace_id"})


# --- property: encode -> real stream -> decode is exact ------------------------------------------
def _decimal(lo: int, hi: int) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda m, e: Decimal(m).scaleb(e),
        st.integers(min_value=1, max_value=10**12),
        st.integers(min_value=lo, max_value=hi),
    )


@st.composite
def intents(draw: st.DrawFn) -> Intent:
    price = draw(_decimal(-8, 2))
    side = draw(st.sampled_from(["BUY", "SELL", "long", "short"]))
    up, down = draw(_decimal(-10, 0)), draw(_decimal(-10, 0))
    assume(down < price)
    buy = side in ("BUY", "long")
    data: dict[str, Any] = {
        "symbol": draw(st.from_regex(SYMBOL_PATTERN, fullmatch=True)),
        "side": side,
        "qty": draw(_decimal(-8, 2)),
        "price": price,
        "expected_move_usd": draw(_decimal(-4, 2)),
        "tp": price + up if buy else price - down,
        "sl": price - down if buy else price + up,
        "model": draw(st.from_regex(MODEL_PATTERN, fullmatch=True)),
        "regime": draw(st.from_regex(REGIME_PATTERN, fullmatch=True)),
        "trace_id": draw(st.from_regex(TRACE_ID_PATTERN, fullmatch=True)),
    }
    if draw(st.booleans()):
        data["leverage"] = draw(st.integers(min_value=1, max_value=125))
    if draw(st.booleans()):
        data["reduce_only"] = draw(st.booleans())
    if draw(st.booleans()):
        data["order_type"] = "STOP_MARKET"
        data["stop_price"] = draw(_decimal(-6, 2))
    try:
        return parse_intent(data)
    except IntentError:
        assume(False)
        raise


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(intent=intents())
def test_encode_stream_decode_round_trip_is_exact(redis_url: str, intent: Intent) -> None:
    client = redis.Redis.from_url(redis_url)  # bytes, as the worker reads
    client.delete(streams.STREAM)
    streams.ensure_group(client, start_id="0")
    entry_id = streams.publish_intent_once(client, intent, ttl_seconds=5)
    if entry_id is None:  # the same trace id drawn twice within the TTL
        client.delete(streams.intent_dedup_key(intent.trace_id or ""))
        entry_id = streams.publish_intent_once(client, intent, ttl_seconds=5)
    reply = client.xreadgroup(streams.GROUP, "w", {streams.STREAM: ">"}, count=1)
    [[_, [(_, fields)]]] = reply if isinstance(reply, list) else [list(x) for x in reply.items()]
    back = decode_entry_fields(fields)
    assert back == intent
    # exact text too: the same digits and exponent, not only an equal value
    assert encode_intent(back) == encode_intent(intent)
    assert all(isinstance(v, bytes) for v in fields.values())
    client.close()


# --- property: any JSON value in any field -------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(
        st.sampled_from([*BASE, "reduce_only", "order_type", "stop_price", "junk"]),
        json_values,
        min_size=1,
        max_size=4,
    ),
    mode=st.sampled_from([TradingMode.TESTNET, TradingMode.LIVE]),
)
def test_any_json_value_in_any_field_is_a_decision_or_one_line_error(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    mode: TradingMode,
) -> None:
    data = {**BASE, **changes}
    text = json.dumps(data)
    try:
        parsed: Intent | None = parse_intent(loads_json(text))
    except IntentError:
        parsed = None
    code = cli.main(["evaluate", "--mode", mode.value], stdin=_Stdin(text.encode() + b"\n"))
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    [row] = [json.loads(line) for line in out.splitlines()]
    if parsed is None:
        assert (row["verdict"], row["reasons"]) == ("HOLD", ["INVALID_INPUT"])
    store = KernelStore(redis_client, config(), mode)
    decision = store.admit_mapping(loads_json(text))
    assert decision.verdict.value == row["verdict"] or parsed is not None
    if parsed is None:
        assert decision.codes == ["INVALID_INPUT"]
        with pytest.raises(IntentError):
            streams.publish_intent_once(redis_client, loads_json(text))
    kwargs = loads_json(text)
    if set(kwargs) <= set(BASE) | {"reduce_only"} and kwargs.get("trace_id") != "":
        profit_gate_kernel.configure(config(), redis_client, report_for(mode))
        verdict, _, _ = profit_gate_kernel.profit_gate(**kwargs)
        if parsed is None:
            assert verdict is gates.GateVerdict.HOLD
    redis_client.flushall()
