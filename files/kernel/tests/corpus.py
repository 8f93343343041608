"""The shared corpus of malformed input (issue 11, item 7): importable by every door's tests.

Three kinds of case, each a small frozen record:

* ``IntentCase``: a JSON object (as text, so numbers keep their spelling) that is a valid entry
  except for the named fields; every door must answer HOLD INVALID_INPUT naming exactly those
  fields, in every mode. ``stream_fields()`` gives the same input as stream-entry bytes when every
  value is text (the stream carries only text); ``None`` otherwise.
* ``RawCase``: bytes that are not an intent at all (bad UTF-8, NaN, nesting, huge integers); a
  door answers one error line or HOLD INVALID_INPUT, never PASS and never a traceback.
* ``StateCase``: a Redis key the kernel reads, set to something it did not write; every door that
  reads it answers HOLD STATE_UNAVAILABLE naming the key (DUPLICATE_ORDER for a dedup key).
* ``ConfigCase``: an env file value ``check-config`` must refuse, naming the key.

Use ``intent_cases()``, ``raw_cases()``, ``state_cases()``, ``config_cases()``; K2 runs the same
cases through the worker door (``stream_fields()`` and ``StateCase``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

#: A valid entry with the default config (notional 35, R = 2.5 exactly), numbers as text.
BASE: dict[str, Any] = {
    "symbol": "ETHUSDT",
    "side": "BUY",
    "qty": "0.01",
    "price": "3500",
    "expected_move_usd": "250",
    "tp": "3587.5",
    "sl": "3465",
    "model": "NHiTS",
    "regime": "TREND",
    "leverage": "5",
    "trace_id": "corpus-0",
}
SEED_KWARGS = frozenset(
    {
        "symbol",
        "side",
        "qty",
        "price",
        "expected_move_usd",
        "tp",
        "sl",
        "model",
        "regime",
        "leverage",
        "trace_id",
        "reduce_only",
    }
)


@dataclass(frozen=True)
class IntentCase:
    name: str
    text: str  # one JSON object
    invalid: frozenset[str]  # the fields every door must name

    def data(self) -> dict[str, Any]:
        from core_kernel.intent import loads_json  # noqa: PLC0415 - the doors' own JSON reader

        value = loads_json(self.text)
        assert isinstance(value, dict)
        return value

    def stream_fields(self) -> dict[bytes, bytes] | None:
        """The case as a stream entry's fields, when every value is text (else None)."""
        data = json.loads(self.text)
        if not all(isinstance(v, str) for v in data.values()):
            return None
        return {
            k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
            for k, v in data.items()
        }

    def seed_kwargs(self) -> dict[str, Any] | None:
        """The case as ``profit_gate`` keyword arguments, when its keys are the seed's."""
        data = self.data()
        if not set(data) <= SEED_KWARGS:
            return None
        if data.get("trace_id") == "":
            return None  # the seed's own default: "" means "no trace id" there, by contract
        # The seed's positional parameters have no default: a missing field is passed as None.
        for name in ("symbol", "side", "qty", "price", "expected_move_usd", "tp", "sl"):
            data.setdefault(name, None)
        data.setdefault("model", None)
        data.setdefault("regime", None)
        return data


@dataclass(frozen=True)
class RawCase:
    name: str
    line: bytes


@dataclass(frozen=True)
class StateCase:
    name: str
    key: str  # the key as admit reads it for BASE (prefix quantum:)
    setup: Callable[[redis.Redis, str], Any]
    reason: str  # STATE_UNAVAILABLE or DUPLICATE_ORDER
    detail: str  # the state_error (or "" for DUPLICATE_ORDER)


@dataclass(frozen=True)
class ConfigCase:
    name: str
    key: str
    value: str


def _case(name: str, invalid: set[str] | str, **over: Any) -> IntentCase:
    data = dict(BASE)
    for key, value in over.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    fields = {invalid} if isinstance(invalid, str) else invalid
    return IntentCase(name, json.dumps(data), frozenset(fields))


_DROP = object()

# Text that is not a valid identifier: look-alikes, whitespace, controls, sizes, types.
_LOOKALIKE_TEXT: list[tuple[str, Any]] = [
    ("empty", ""),
    ("space", " "),
    ("leading-space", " {v}"),
    ("trailing-space", "{v} "),
    ("trailing-newline", "{v}\n"),
    ("trailing-crlf", "{v}\r\n"),
    ("tab", "{v}\t"),
    ("nul", "{v}\x00"),
    ("zero-width-space", "{v}\u200b"),
    ("bom", "\ufeff{v}"),
    ("nbsp", "{v}\u00a0"),
    ("fullwidth-first", "\uff25{v}"),
    ("cyrillic-a", "\u0430{v}"),
    ("long-s", "\u017f{v}"),
    ("dotless-i", "\u0131{v}"),
    ("kelvin-sign", "\u212a{v}"),
    ("combining-acute", "{v}\u0301"),
    ("rtl-override", "\u202e{v}"),
    ("surrogate", "{v}\udcff"),
    ("emoji", "{v}\U0001f680"),
    ("huge", "{v}" + "A" * 5000),
    ("int", 5),
    ("float", 1.5),
    ("bool-true", True),
    ("bool-false", False),
    ("list", ["{v}"]),
    ("object", {"v": "{v}"}),
    ("nested", [[["{v}"]]]),
]


def _fill(value: Any, v: str) -> Any:
    if isinstance(value, str):
        return value.replace("{v}", v)
    if isinstance(value, list):
        return [_fill(x, v) for x in value]
    if isinstance(value, dict):
        return {k: _fill(x, v) for k, x in value.items()}
    return value


# Numbers that are not a positive ASCII decimal in range.
_BAD_NUMBERS: list[tuple[str, str]] = [
    ("zero", "0"),
    ("zero-text", '"0"'),
    ("negative", "-1"),
    ("negative-text", '"-0.5"'),
    ("neg-zero", '"-0"'),
    ("nan-text", '"NaN"'),
    ("inf-text", '"Infinity"'),
    ("snan-text", '"sNaN"'),
    ("tiny", "1e-400"),
    ("tiny-text", '"1e-31"'),
    ("huge", "1e400"),
    ("huge-int", "1" + "0" * 30),
    ("huge-text", '"1e15"'),
    ("too-long-text", '"' + "1" * 65 + '"'),
    ("many-digits", "0." + "1" * 70),
    ("arabic-indic", '"\u0661\u0662"'),
    ("fullwidth", '"\uff11\uff12"'),
    ("devanagari", '"\u0967"'),
    ("underscore", '"1_000"'),
    ("leading-space", '" 1"'),
    ("trailing-newline", '"1\\n"'),
    ("comma", '"1,5"'),
    ("hex", '"0x10"'),
    ("empty", '""'),
    ("bool", "true"),
    ("list", "[1]"),
    ("object", '{"v": 1}'),
    ("exp-5-digits", '"1e00001"'),
]
_NUMBER_FIELDS = ("qty", "price", "expected_move_usd", "tp", "sl", "leverage")


def intent_cases() -> list[IntentCase]:
    cases: list[IntentCase] = []
    for field, good in (
        ("symbol", "ETHUSDT"),
        ("side", "BUY"),
        ("model", "NHiTS"),
        ("regime", "TREND"),
        ("trace_id", "corpus-1"),
    ):
        for label, template in _LOOKALIKE_TEXT:
            value = _fill(template, good)
            if field == "trace_id" and isinstance(value, str) and label == "huge":
                value = "t" * 65
            cases.append(_case(f"{field}:{label}", field, **{field: value}))
    for name, value in (
        ("symbol:lower", "ethusdt"),
        ("symbol:dash", "ETH-USDT"),
        ("symbol:slash", "ETH/USDT"),
        ("symbol:33-chars", "E" * 33),
        ("side:mixed-case", "Buy"),
        ("side:hold", "HOLD"),
        ("side:long-s-sell", "\u017fell"),
        ("side:upper-long-s", "\u017fELL"),
        ("model:long-s-inside", "PatchT\u017fT"),
        ("model:space-inside", "Patch TST"),
        ("regime:dotless-i-inside", "h\u0131gh_vol"),
        ("regime:digit-first", "1TREND"),
        ("trace_id:slash", "a/b"),
        ("trace_id:65", "x" * 65),
        ("trace_id:space-inside", "a b"),
    ):
        field = name.split(":", 1)[0]
        cases.append(_case(name, field, **{field: value}))
    for field in _NUMBER_FIELDS:
        for label, raw in _BAD_NUMBERS:
            data = dict(BASE)
            text = json.dumps(data)
            # splice the raw JSON number/text in, so its spelling reaches the parser
            text = text.replace(
                json.dumps(field) + ": " + json.dumps(BASE[field]), f'"{field}": {raw}'
            )
            invalid = {field}
            cases.append(IntentCase(f"{field}:{label}", text, frozenset(invalid)))
    for label, value in (
        ("text-False", "False"),
        ("text-0", "0"),
        ("text-no", "no"),
        ("text-off", "off"),
        ("text-yes", "yes"),
        ("text-1", "1"),
        ("text-maybe", "maybe"),
        ("text-empty", ""),
        ("int-1", 1),
        ("int-0", 0),
        ("list", ["x"]),
        ("object", {}),
    ):
        cases.append(_case(f"reduce_only:{label}", "reduce_only", reduce_only=value))
    for label, value in (
        ("lower", "market"),
        ("unknown", "ICEBERG"),
        ("int", 1),
        ("space", "LIMIT "),
    ):
        cases.append(_case(f"order_type:{label}", "order_type", order_type=value))
    cases.append(_case("stop_price:missing-for-stop", "stop_price", order_type="STOP_MARKET"))
    # semantics: geometry and the expected move
    cases.append(_case("tp:wrong-side-buy", "tp", tp="3400"))
    cases.append(_case("sl:wrong-side-buy", "sl", sl="3600"))
    cases.append(_case("sl:equal-price", "sl", sl="3500"))
    cases.append(_case("tp-sl:sell-with-buy-geometry", {"tp", "sl"}, side="SELL"))
    # missing fields
    for field in (
        "symbol",
        "side",
        "qty",
        "price",
        "expected_move_usd",
        "tp",
        "sl",
        "model",
        "regime",
    ):
        cases.append(_case(f"{field}:missing", field, **{field: _DROP}))
        cases.append(_case(f"{field}:null", field, **{field: None}))
    # keys
    for label, key in (
        ("unknown", "qtyy"),
        ("extra-confidence", "confidence"),
        ("fullwidth-key", "\uff51ty"),
        ("padded-key", " qty"),
        ("upper-key", "QTY"),
    ):
        data = dict(BASE)
        data[key] = "1"
        shown = key if key.isascii() and key.isprintable() else repr(key)
        cases.append(IntentCase(f"key:{label}", json.dumps(data), frozenset({shown})))
    many = dict(BASE)
    many.update({f"x{i}": "1" for i in range(40)})
    cases.append(IntentCase("key:too-many", json.dumps(many), frozenset({"intent"})))
    return cases


def raw_cases() -> list[RawCase]:
    good = json.dumps(BASE)
    return [
        RawCase("not-utf8", good.replace("ETHUSDT", "ETH\xffUSDT").encode("latin-1")),
        RawCase("lone-continuation", b'{"symbol": "\x80"}'),
        RawCase("overlong-utf8", b'{"symbol": "\xc0\xaf"}'),
        RawCase("nested-1000", b"[" * 1000 + b"]" * 1000),
        RawCase("nested-100000", b"[" * 100_000 + b"]" * 100_000),
        RawCase("nested-object", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        RawCase("nan", good.replace('"0.01"', "NaN").encode()),
        RawCase("infinity", good.replace('"0.01"', "Infinity").encode()),
        RawCase("neg-infinity", good.replace('"0.01"', "-Infinity").encode()),
        RawCase("int-5000-digits", good.replace('"0.01"', "1" * 5000).encode()),
        RawCase("int-41-digits", good.replace('"0.01"', "1" * 41).encode()),
        RawCase("array", b"[1, 2, 3]"),
        RawCase("string", b'"BUY"'),
        RawCase("number", b"42"),
        RawCase("null", b"null"),
        RawCase("truncated", good[:-5].encode()),
        RawCase("trailing-garbage", (good + " x").encode()),
        RawCase("single-quotes", good.replace('"', "'").encode()),
        RawCase("utf16", good.encode("utf-16")),
        RawCase("nul-bytes", b"\x00" * 64),
        RawCase("huge-line", b'{"symbol": "' + b"A" * 70_000 + b'"}'),
    ]


def _set(value: bytes | str) -> Callable[[redis.Redis, str], Any]:
    return lambda client, key: client.set(key, value)


LAST_TRADE = "quantum:kernel:last_trade:ETHUSDT"
TRADES = "quantum:kernel:trades"
ORDER = "quantum:dedup:order:corpus-0"


def state_cases() -> list[StateCase]:
    cases: list[StateCase] = []
    for label, value in (
        ("abc", "abc"),
        ("float", "1.5"),
        ("negative", "-5"),
        ("space", " 17"),
        ("newline", "17\n"),
        ("empty", ""),
        ("16-digits", "1" * 16),
        ("exp", "1e12"),
        ("arabic-indic", "\u0661\u0662"),
        ("bytes", b"\xff\xfe"),
    ):
        cases.append(
            StateCase(
                f"last_trade:{label}",
                LAST_TRADE,
                _set(value),
                "STATE_UNAVAILABLE",
                "not integer milliseconds",
            )
        )
    for label, setup in (
        ("hash", lambda c, k: c.hset(k, "a", "1")),
        ("list", lambda c, k: c.rpush(k, "1")),
        ("set", lambda c, k: c.sadd(k, "1")),
        ("zset", lambda c, k: c.zadd(k, {"a": 1})),
        ("stream", lambda c, k: c.xadd(k, {"a": "1"})),
    ):
        cases.append(
            StateCase(f"last_trade:{label}", LAST_TRADE, setup, "STATE_UNAVAILABLE", "wrong type")
        )
    for label, setup in (
        ("string", lambda c, k: c.set(k, "3")),
        ("hash", lambda c, k: c.hset(k, "a", "1")),
        ("list", lambda c, k: c.rpush(k, "1")),
        ("set", lambda c, k: c.sadd(k, "1")),
        ("stream", lambda c, k: c.xadd(k, {"a": "1"})),
    ):
        cases.append(StateCase(f"trades:{label}", TRADES, setup, "STATE_UNAVAILABLE", "wrong type"))
    for label, setup in (
        ("legacy-1", _set("1")),
        ("first-wave-format", _set("P|1800000000000||0")),
        ("truncated", _set("k1|P|1|")),
        ("bad-cid", _set("k1|P|1||0|||bad id")),
        ("not-utf8", _set(b"k1|P|\xff")),
        ("huge", _set("k1|P|" + "1" * 300)),
        ("hash", lambda c, k: c.hset(k, "verdict", "PASS")),
        ("list", lambda c, k: c.rpush(k, "P")),
        ("set", lambda c, k: c.sadd(k, "P")),
        ("zset", lambda c, k: c.zadd(k, {"P": 1})),
    ):
        cases.append(StateCase(f"order:{label}", ORDER, setup, "DUPLICATE_ORDER", ""))
    return cases


def config_cases() -> list[ConfigCase]:
    cases: list[ConfigCase] = []
    for key, values in (
        ("EDGE_MULTIPLIER", ["1e1000003", "NaN", "Infinity", "\u0663", "0.5", "1e16", "3,0"]),
        ("MIN_NOTIONAL_USD", ["1e309", "-1", "\uff12\uff15", "abc", "1" * 40]),
        ("MIN_R_TREND", ["sNaN", "\u0662.5", "-0.1"]),
        (
            "STALE_IDLE_MS",
            ["9223372036854775808", "0", "1e3", "\u0666\u0660\u0660\u0660\u0660", "60000.5"],
        ),
        ("ZOMBIE_IDLE_MS", ["9223372036854775807", "-1"]),
        ("MAX_INTENT_AGE_MS", ["60000", "0", "1" * 20]),
        ("MIN_HOLD_SECONDS", ["10000000000", "\uff13\uff10\uff10"]),
        ("MAX_TRADES_10MIN", ["0", "1e9"]),
        (
            "CORE_KERNEL_REDIS_URL",
            [
                "redis://127.0.0.1:notaport/0",
                "redis://127.0.0.1:99999/0",
                "not-a-url",
                "redis://",
                "redis://h:6379/x",
                "redis://h o:1/0",
            ],
        ),
        # The application's key, read when the kernel's is unset: refused just the same.
        ("REDIS_URL", ["redis://127.0.0.1:notaport/0", "not-a-url", "redis://h:6379/x"]),
        ("ALLOWED_MODELS", ["TREND:PatchT\u017fT", "h\u0131gh:XGBoost", "TREND"]),
        ("RECOVERY_BATCH", ["0", "100000"]),
        ("TRADING_MODE", ["PAPER", "live\u0131", "l\u0131ve", "TESTNE\u0422"]),
        ("BINANCE_TESTNET", ["tru\u0435", "\u0131"]),
    ):
        for value in values:
            cases.append(ConfigCase(f"{key}={value!r}", key, value))
    return cases


def all_counts() -> dict[str, int]:
    return {
        "intent": len(intent_cases()),
        "raw": len(raw_cases()),
        "state": len(state_cases()),
        "config": len(config_cases()),
    }


def iter_all() -> Iterator[object]:
    yield from intent_cases()
    yield from raw_cases()
    yield from state_cases()
    yield from config_cases()
