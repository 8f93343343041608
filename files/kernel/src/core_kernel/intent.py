"""The one intent contract: every door builds an ``Intent`` here, and only here.

``parse_intent(mapping)`` takes JSON values or keyword arguments, ``decode_entry_fields(fields)``
takes a stream entry read as bytes. Both either return a frozen, fully validated ``Intent`` or
raise one ``IntentError`` naming every invalid field with its reason. Nothing downstream
re-parses or re-derives a field; ``encode_intent`` writes the text that ``decode_entry_fields``
turns back into an equal ``Intent``.

The rules (documented in docs/ARCHITECTURE.md, "The intent contract"):

* identifiers match explicit ASCII patterns with ``re.fullmatch`` (so no trailing newline slips
  through ``$``) and are never stripped, case-folded or otherwise normalised - ``sell`` with U+017F
  and ``"t-1 "`` are invalid, not "close enough";
* text fields must be ``str``; numbers are JSON numbers (int, Decimal from ``parse_float``, or a
  finite float from a Python caller) or ASCII decimal text; booleans are JSON booleans or the
  text ``true`` / ``false``;
* every number is > 0 and within 1e-30 .. 1e15 (the gates' exact Decimal context is sized for
  that), ``expected_move_usd`` included: a non-positive expected move is malformed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# --- the documented patterns ---------------------------------------------------------------------
#: Binance USD-M symbols: upper-case ASCII letters and digits; delivery contracts add ``_YYMMDD``.
SYMBOL_PATTERN = r"[A-Z0-9]{1,32}(?:_[0-9]{6})?"
#: Model names as the strategy writes them (compared ASCII case-insensitively with ALLOWED_MODELS).
MODEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
#: Regimes: an ASCII word; compared upper-cased (ASCII only: no dotless i U+0131 -> ``I``).
REGIME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,31}"
#: Trace ids: short enough for a Redis key and a log line; ``/`` is left out so an id never looks
#: like a path. An id of at most 36 characters is its own client order id.
TRACE_ID_PATTERN = r"[A-Za-z0-9._:-]{1,64}"
#: ASCII decimal text: no Unicode digits, no whitespace, no "NaN"/"Infinity", no underscores.
NUMBER_PATTERN = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?"
#: Binance's own rule for newClientOrderId.
CLIENT_ORDER_ID_PATTERN = r"[\.A-Z\:/a-z0-9_-]{1,36}"

_SYMBOL = re.compile(SYMBOL_PATTERN)
_MODEL = re.compile(MODEL_PATTERN)
_REGIME = re.compile(REGIME_PATTERN)
_TRACE = re.compile(TRACE_ID_PATTERN)
_NUMBER = re.compile(NUMBER_PATTERN)
CLIENT_ORDER_ID_RE = re.compile(CLIENT_ORDER_ID_PATTERN)
_OWN_ID = re.compile(r"[A-Za-z0-9._:-]{1,36}")

#: The documented side texts and what they mean (upper or lower case as written, nothing else).
SIDES: Mapping[str, str] = {
    "BUY": "BUY",
    "buy": "BUY",
    "LONG": "BUY",
    "long": "BUY",
    "SELL": "SELL",
    "sell": "SELL",
    "SHORT": "SELL",
    "short": "SELL",
}
ORDER_TYPES = frozenset(
    {
        "MARKET",
        "LIMIT",
        "STOP",
        "STOP_MARKET",
        "TAKE_PROFIT",
        "TAKE_PROFIT_MARKET",
        "TRAILING_STOP_MARKET",
    }
)
_BOOL_TEXT: Mapping[str, bool] = {"true": True, "false": False}

MAX_NUMBER_TEXT = 64
MAX_INT_DIGITS = 40
MAX_FIELDS = 32
MAX_KEY_BYTES = 64
# Every value of a valid intent is short; anything longer is refused before it is looked at.
MAX_VALUE_BYTES = 128
# The accepted magnitude: adjusted() (exponent of the leading digit) in -30 .. 14.
_MIN_ADJ, _MAX_ADJ = -30, 14
_MAX_DIGITS = 64
_INT_LIMIT = 10**15

CLIENT_ORDER_ID_PREFIX = "qk-"

_NUMBER_FIELDS = ("qty", "price", "expected_move_usd", "tp", "sl", "leverage", "stop_price")
FIELDS: tuple[str, ...] = (
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
    "order_type",
    "stop_price",
)
_FIELD_SET = frozenset(FIELDS)
#: Needed for every intent; an entry (not reduce-only) also needs ``_ENTRY_REQUIRED``.
_REQUIRED = ("symbol", "side", "qty", "price")
_ENTRY_REQUIRED = ("expected_move_usd", "tp", "sl", "model", "regime")


class IntentError(ValueError):
    """Every invalid field of one input, ``field: reason``; ``trace_id`` when that one is valid."""

    def __init__(self, invalid: Mapping[str, str], trace_id: str | None = None) -> None:
        self.invalid = dict(invalid)
        self.trace_id = trace_id
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.invalid.items()))


@dataclass(frozen=True, slots=True)
class Intent:
    """A validated trade intent. Build it with ``parse_intent`` or ``decode_entry_fields``."""

    symbol: str
    side: str  # BUY or SELL
    qty: Decimal
    price: Decimal
    expected_move_usd: Decimal | None = None
    tp: Decimal | None = None
    sl: Decimal | None = None
    model: str | None = None
    regime: str | None = None  # upper case
    leverage: Decimal | None = None
    trace_id: str | None = None
    reduce_only: bool = False
    order_type: str = "MARKET"
    stop_price: Decimal | None = None
    #: The Binance ``newClientOrderId`` for this intent's trace id (None without one): derived
    #: once, here, like every other field; admit and the order both read it.
    client_order_id: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        cid = None if self.trace_id is None else client_order_id(self.trace_id)
        object.__setattr__(self, "client_order_id", cid)


def client_order_id(trace_id: str) -> str:
    """Deterministic, always valid for Binance (``CLIENT_ORDER_ID_PATTERN``).

    A valid trace id of at most 36 characters that does not start with ``qk-`` is used as is
    (readable on the exchange); any other text becomes ``qk-`` + 32 hex digits of its SHA-256.
    """
    if _OWN_ID.fullmatch(trace_id) and not trace_id.startswith(CLIENT_ORDER_ID_PREFIX):
        return trace_id
    digest = hashlib.sha256(trace_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{CLIENT_ORDER_ID_PREFIX}{digest[:32]}"


# --- field parsers: each returns the value or a reason (str) -----------------------------------
class _Bad(str):
    """A reason, told apart from a valid text value by its type."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is OversizedInt:
        return "integer"
    return type(value).__name__


def _number(value: object) -> Decimal | _Bad:
    kind = type(value)
    if kind is bool or isinstance(value, bool):
        return _Bad("not a number (boolean)")
    if kind is OversizedInt:
        return _Bad(f"integer of {value.digits} digits (at most {MAX_INT_DIGITS})")  # type: ignore[attr-defined]
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if not text:
            return _Bad("empty")
        if len(text) > MAX_NUMBER_TEXT:
            return _Bad(f"too long (more than {MAX_NUMBER_TEXT} characters)")
        if _NUMBER.fullmatch(text) is None:
            return _Bad("not ASCII decimal text")
        dec = Decimal(text)
    elif kind is int:
        if not -_INT_LIMIT < value < _INT_LIMIT:  # type: ignore[operator]
            return _Bad("out of range")
        dec = Decimal(value)  # type: ignore[arg-type]
    elif kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return _Bad("not finite")
        dec = Decimal(repr(value))  # the shortest repr: the number as the caller wrote it
    elif kind is Decimal:
        dec = value  # type: ignore[assignment]
        if not dec.is_finite():
            return _Bad("not finite")
        if len(dec.as_tuple().digits) > _MAX_DIGITS:
            return _Bad(f"too many digits (more than {_MAX_DIGITS})")
    else:
        return _Bad(f"not a number ({_kind(value)})")
    if dec <= 0:
        return _Bad("must be > 0")
    if not _MIN_ADJ <= dec.adjusted() <= _MAX_ADJ:
        return _Bad("out of range (1e-30 .. 1e15)")
    return dec


def _text(value: object, pattern: re.Pattern[str], rule: str) -> str | _Bad:
    if type(value) is not str:
        return _Bad(f"not text ({_kind(value)})")
    text: str = value
    if not text:
        return _Bad("empty")
    if pattern.fullmatch(text) is None:
        return _Bad(f"does not match {rule}")
    return text


def _bool(value: object) -> bool | _Bad:
    if type(value) is bool:
        return value
    if type(value) is str and value in _BOOL_TEXT:
        return _BOOL_TEXT[value]
    return _Bad(f"not a boolean ({_kind(value)}; use true or false)")


def parse_intent(  # noqa: PLR0915 - one pass, field by field
    data: Mapping[Any, Any], *, require_trace_id: bool = False
) -> Intent:
    """The one parse. Raises ``IntentError`` naming every invalid field.

    ``require_trace_id``: the doors that deduplicate (publish, admit, the stream) need one;
    the what-if doors (``evaluate``, ``profit_gate``) do not.
    """
    invalid: dict[str, str] = {}
    if len(data) > MAX_FIELDS:
        raise IntentError({"intent": f"too many fields ({len(data)} > {MAX_FIELDS})"})
    for key in data:
        if type(key) is not str or key not in _FIELD_SET:
            invalid[_shown(key)] = "unknown field"
    out: dict[str, Any] = {}

    trace = data.get("trace_id")
    trace_id: str | None = None
    if trace is not None:
        got = _text(trace, _TRACE, TRACE_ID_PATTERN)
        if isinstance(got, _Bad):
            invalid["trace_id"] = got
        else:
            trace_id = got
            out["trace_id"] = got

    for name in ("symbol", "model", "regime"):
        raw = data.get(name)
        if raw is None:
            continue
        pattern = {"symbol": _SYMBOL, "model": _MODEL, "regime": _REGIME}[name]
        rule = {"symbol": SYMBOL_PATTERN, "model": MODEL_PATTERN, "regime": REGIME_PATTERN}[name]
        got = _text(raw, pattern, rule)
        if isinstance(got, _Bad):
            invalid[name] = got
        else:
            # ASCII upper: the pattern admitted ASCII only, so no Unicode case mapping happens.
            out[name] = got.upper() if name == "regime" else got

    raw = data.get("side")
    if raw is not None:
        if type(raw) is not str:
            invalid["side"] = f"not text ({_kind(raw)})"
        elif raw not in SIDES:
            invalid["side"] = "not one of BUY, SELL, LONG, SHORT (upper or lower case)"
        else:
            out["side"] = SIDES[raw]

    raw = data.get("order_type")
    if raw is not None:
        if type(raw) is not str:
            invalid["order_type"] = f"not text ({_kind(raw)})"
        elif raw not in ORDER_TYPES:
            invalid["order_type"] = "not one of " + ", ".join(sorted(ORDER_TYPES))
        else:
            out["order_type"] = raw

    for name in _NUMBER_FIELDS:
        raw = data.get(name)
        if raw is None:
            continue
        num = _number(raw)
        if isinstance(num, _Bad):
            invalid[name] = num
        else:
            out[name] = num

    raw = data.get("reduce_only")
    if raw is not None:
        flag = _bool(raw)
        if isinstance(flag, _Bad):
            invalid["reduce_only"] = flag
        else:
            out["reduce_only"] = flag

    reduce_only = out.get("reduce_only", False)
    required = _REQUIRED if reduce_only or "reduce_only" in invalid else _REQUIRED + _ENTRY_REQUIRED
    if require_trace_id:
        required = (*required, "trace_id")
    for name in required:
        if data.get(name) is None and name not in invalid:
            invalid[name] = "missing"

    if not reduce_only and "side" in out and "price" in out:
        price, buy = out["price"], out["side"] == "BUY"
        # An entry's take-profit lies beyond the price in the trade's direction, its stop behind.
        if "tp" in out and (out["tp"] <= price if buy else out["tp"] >= price):
            invalid["tp"] = "on the wrong side of price for " + out["side"]
        if "sl" in out and (out["sl"] >= price if buy else out["sl"] <= price):
            invalid["sl"] = "on the wrong side of price for " + out["side"]
    otype = out.get("order_type", "MARKET")
    if otype in ORDER_TYPES - {"MARKET", "LIMIT"} and "stop_price" not in out:
        invalid.setdefault("stop_price", f"missing (required for {otype})")

    if invalid:
        raise IntentError(_ordered(invalid), trace_id)
    return Intent(**out)


def _shown(key: object) -> str:
    """A field name fit for a one-line message (anything unusual as a short repr)."""
    if type(key) is str and key.isascii() and key.isprintable() and len(key) <= MAX_KEY_BYTES:
        return key
    return repr(key)[:MAX_KEY_BYTES]


def _ordered(invalid: dict[str, str]) -> dict[str, str]:
    """Fields in the contract's order, unknown ones after: the same input, the same message."""
    known = {k: invalid[k] for k in FIELDS if k in invalid}
    known.update({k: v for k, v in sorted(invalid.items()) if k not in known})
    return known


def decode_entry_fields(fields: Mapping[Any, Any]) -> Intent:
    """An Intent from stream fields read with ``decode_responses=False`` (trace id required).

    Each key and value is decoded strictly as UTF-8; a bad byte makes that field invalid (named
    in the ``IntentError``), never an exception of another kind. ``str`` values are accepted too
    (a client decoding with ``surrogateescape`` leaves lone surrogates, which fail the patterns).
    """
    if len(fields) > MAX_FIELDS:
        raise IntentError({"intent": f"too many fields ({len(fields)} > {MAX_FIELDS})"})
    data: dict[str, Any] = {}
    invalid: dict[str, str] = {}
    for raw_key, raw_value in fields.items():
        key = _decode(raw_key, MAX_KEY_BYTES)
        if isinstance(key, _Bad):
            invalid[_shown(raw_key)] = f"field name {key}"
            continue
        value = _decode(raw_value, MAX_VALUE_BYTES)
        if isinstance(value, _Bad):
            invalid[key] = value
            continue
        data[key] = value
    try:
        intent = parse_intent(data, require_trace_id=True)
    except IntentError as exc:
        invalid = {**exc.invalid, **invalid}
        raise IntentError(_ordered(invalid), exc.trace_id) from None
    if invalid:
        raise IntentError(_ordered(invalid), intent.trace_id)
    return intent


def _decode(raw: object, limit: int) -> str | _Bad:
    if isinstance(raw, str):
        if len(raw) > limit:
            return _Bad(f"too long (more than {limit} bytes)")
        return raw
    if not isinstance(raw, bytes):
        return _Bad(f"not bytes ({_kind(raw)})")
    if len(raw) > limit:
        return _Bad(f"too long (more than {limit} bytes)")
    try:
        return raw.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        return _Bad(f"not UTF-8 (byte {exc.start})")


def encode_intent(intent: Intent) -> dict[str, str]:
    """Stream fields: exact text of every set field (Decimals as ``str``), absent ones left out."""
    out: dict[str, str] = {}
    for name in FIELDS:
        value = getattr(intent, name)
        if value is None:
            continue
        if name == "reduce_only":
            if value:
                out[name] = "true"
            continue
        if name == "order_type" and value == "MARKET":
            continue
        out[name] = str(value)
    return out


def entry_time_ms(entry_id: str) -> int | None:
    """The millisecond part of a stream entry id (``<ms>-<seq>``): XADD time on Redis's clock."""
    ms, sep, seq = entry_id.partition("-")
    if not sep or not ms.isascii() or not seq.isascii() or not ms.isdigit() or not seq.isdigit():
        return None
    if len(ms) > 19:
        return None
    return int(ms)


# --- JSON text ---------------------------------------------------------------------------------
class OversizedInt:
    """A JSON integer too long to be any field's value, kept so the parse can name its field."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def _json_int(text: str) -> int | OversizedInt:
    # Python refuses > 4300 digits with a message naming no field; far fewer are already absurd.
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return OversizedInt(digits)
    return int(text)


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def loads_json(line: bytes | str) -> Any:
    """One JSON value: numbers as Decimal/int, NaN/Infinity refused; ValueError with the reason."""
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8", "strict")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = line
    try:
        return json.loads(
            text, parse_float=Decimal, parse_int=_json_int, parse_constant=_json_constant
        )
    except RecursionError:
        raise ValueError("bad JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc}") from None
